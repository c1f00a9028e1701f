"""PyTorch RegNetY weights (torchvision, VISSL/SEER, ClassyVision, timm) -> seer_tf models.

Every source naming is first rewritten to one canonical naming (torchvision's for the trunk,
VISSL's `SwAVPrototypesHead` for the head), the architecture is read off the tensor shapes, and
then each canonical name is assigned to exactly one Keras variable. Anything that does not match
(unknown keys, missing keys, wrong shapes) is listed in one `UsageError` (a user's file, not a bug); nothing is skipped
silently. Only BatchNorm's `num_batches_tracked` counters are dropped, because they carry no
information a Keras BatchNormalization uses.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from seer_tf.models import family as regnet_lib
from seer_tf.models.family import se_width_for
from seer_tf.usage import UsageError

FORMATS = ("torchvision", "vissl", "classy", "timm")
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_fpw_module.")
_VISSL_ROOT = "classy_state_dict.base_model.model."
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
       "running_var": "moving_variance"}


def _listing(title: str, names, limit: int = 20) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{title} ({len(names)}): {', '.join(names[:limit])}{more}"


# ------------------------------------------------------------------ names -> canonical names

def strip_wrappers(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Drop checkpoint nesting (VISSL classy_state_dict, DDP `module.`, FSDP/checkpoint wrappers)."""
    if any(k.startswith(_VISSL_ROOT) for k in state):
        state = {k[len(_VISSL_ROOT):]: v for k, v in state.items() if k.startswith(_VISSL_ROOT)}
        state = {(k[len("trunk."):] if k.startswith("trunk.") else k): v for k, v in state.items()}
    for prefix in ("model_state_dict.", "state_dict.", "model.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    out = {}
    for k, v in state.items():
        for w in _WRAPPERS:
            k = k.replace(w, "")
        out[k] = v
    return out


def detect_format(keys) -> str:
    keys = list(keys)
    if any(k.startswith(("_feature_blocks.", "heads.")) for k in keys):
        return "vissl"
    if any(k.startswith("stem.stem.") for k in keys):
        return "classy"
    if any(re.match(r"s\d+\.b\d+\.", k) for k in keys):
        return "timm"
    if any(k.startswith("trunk_output.") for k in keys):
        return "torchvision"
    raise UsageError("cannot tell the checkpoint format from its keys; first keys: "
                          + ", ".join(sorted(keys)[:8]))


_CLASSY_BLOCK_RULES = [
    (r"\.proj\.weight$", ".proj.0.weight"),
    (r"\.bn\.(\w+)$", r".proj.1.\1"),
    (r"\.f\.c\.weight$", ".f.c.0.weight"),
    (r"\.f\.final_bn\.", ".f.c.1."),
    (r"\.f\.se\.excitation\.0\.", ".f.se.fc1."),
    (r"\.f\.se\.excitation\.2\.", ".f.se.fc2."),
]
_TIMM_BLOCK_RULES = [
    (r"\.conv1\.conv\.", ".f.a.0."), (r"\.conv1\.bn\.", ".f.a.1."),
    (r"\.conv2\.conv\.", ".f.b.0."), (r"\.conv2\.bn\.", ".f.b.1."),
    (r"\.conv3\.conv\.", ".f.c.0."), (r"\.conv3\.bn\.", ".f.c.1."),
    (r"\.(?:se|attn)\.fc1\.", ".f.se.fc1."), (r"\.(?:se|attn)\.fc2\.", ".f.se.fc2."),
    (r"\.downsample\.conv\.", ".proj.0."), (r"\.downsample\.bn\.", ".proj.1."),
]


def _apply(rules, key):
    for pat, rep in rules:
        key = re.sub(pat, rep, key)
    return key


def canonicalize(state: Dict[str, np.ndarray], fmt: str = "auto"):
    """-> (format, trunk in torchvision names, head in VISSL head names, ignored names)."""
    state = strip_wrappers(state)
    fmt = detect_format(state) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    trunk, head, ignored = {}, {}, []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            ignored.append(key)
            continue
        if fmt == "vissl" and key.startswith("heads."):
            head[re.sub(r"^heads\.0\.", "", key)] = value
            continue
        k = key
        if fmt == "vissl":
            k = re.sub(r"^_feature_blocks\.conv1\.stem\.", "stem.", k)
            k = re.sub(r"^_feature_blocks\.res\d+\.(?:block\d+-part\d+\.)?(block(\d+)-\d+)\.",
                       r"trunk_output.block\2.\1.", k)
            k = _apply(_CLASSY_BLOCK_RULES, k) if k.startswith("trunk_output.") else k
        elif fmt == "classy":
            k = re.sub(r"^stem\.stem\.", "stem.", k)
            k = _apply(_CLASSY_BLOCK_RULES, k) if k.startswith("trunk_output.") else k
        elif fmt == "timm":
            k = re.sub(r"^stem\.conv\.", "stem.0.", k)
            k = re.sub(r"^stem\.bn\.", "stem.1.", k)
            m = re.match(r"^s(\d+)\.b(\d+)\.", k)
            if m:
                s, b = int(m.group(1)), int(m.group(2)) - 1
                k = _apply(_TIMM_BLOCK_RULES, f"trunk_output.block{s}.block{s}-{b}." + k[m.end():])
            k = re.sub(r"^head\.fc\.", "fc.", k)
        trunk[k] = value
    return fmt, trunk, head, ignored


# ------------------------------------------------------------------ shapes -> architecture

def infer_spec(trunk: Dict[str, np.ndarray]) -> Tuple[regnet_lib.RegNetSpec, int]:
    """Read the RegNet lists off torchvision-named shapes -> (spec, num_classes)."""
    if "stem.0.weight" not in trunk:
        raise UsageError("no stem convolution (stem.0.weight) in the checkpoint trunk")
    stem_width = trunk["stem.0.weight"].shape[0]
    depths, widths, groups, bms, se_pairs = [], [], [], [], []
    s, w_in = 1, stem_width
    while f"trunk_output.block{s}.block{s}-0.f.a.0.weight" in trunk:
        d = 0
        while f"trunk_output.block{s}.block{s}-{d}.f.a.0.weight" in trunk:
            p = f"trunk_output.block{s}.block{s}-{d}."
            w_out = trunk[p + "f.c.0.weight"].shape[0]
            w_b = trunk[p + "f.b.0.weight"].shape[0]
            if d == 0:
                widths.append(w_out)
                groups.append(trunk[p + "f.b.0.weight"].shape[1])
                bms.append(w_b / w_out)
            if p + "f.se.fc1.weight" in trunk:
                se_pairs.append((w_in, trunk[p + "f.se.fc1.weight"].shape[0]))
            w_in, d = w_out, d + 1
        depths.append(d)
        s += 1
    if not depths:
        raise UsageError("no RegNet stages (trunk_output.block1...) in the checkpoint")
    se_ratio = None
    if se_pairs:
        w0, se0 = se_pairs[0]
        for ratio in (0.25, se0 / w0):
            if all(se_width_for(wi, ratio) == ws for wi, ws in se_pairs):
                se_ratio = ratio
                break
        else:
            raise UsageError("SE widths do not follow round(ratio * block input width): "
                                  + str(se_pairs[:6]))
    spec = regnet_lib.RegNetSpec(depths=depths, widths=widths, group_widths=groups,
                                 bottleneck_multipliers=bms, strides=[2] * len(depths),
                                 se_ratio=se_ratio, stem_width=stem_width)
    num_classes = trunk["fc.weight"].shape[0] if "fc.weight" in trunk else 0
    return spec, num_classes


def infer_head(head: Dict[str, np.ndarray]) -> Optional[Dict]:
    """VISSL SwAV head keys -> ProjectionHead/Prototypes arguments (None when there is no head)."""
    if not head:
        return None
    idx = sorted({int(m.group(1)) for k in head for m in [re.match(r"projection_head\.(\d+)\.", k)] if m})
    linears = [i for i in idx if head[f"projection_head.{i}.weight"].ndim == 2]
    if not linears:
        raise UsageError("head has no projection_head linear layers: " + ", ".join(sorted(head)[:8]))
    dims = [head[f"projection_head.{linears[0]}.weight"].shape[1]]
    dims += [head[f"projection_head.{i}.weight"].shape[0] for i in linears]
    use_bn = any(f"projection_head.{i}.running_mean" in head for i in idx)
    use_bias = f"projection_head.{linears[0]}.bias" in head
    protos = sorted(int(m.group(1)) for k in head for m in [re.match(r"prototypes(\d+)\.weight$", k)] if m)
    return {"dims": dims, "use_bn": use_bn, "use_bias": use_bias,
            "num_prototypes": [head[f"prototypes{j}.weight"].shape[0] for j in protos]}


# ------------------------------------------------------------------ canonical names -> variables

def _conv(a):
    return np.transpose(a, (2, 3, 1, 0))  # (out, in/g, kh, kw) -> (kh, kw, in/g, out)


def _matrix(a):
    return a.reshape(a.shape[0], -1).T  # (out, in[,1,1]) -> (in, out)


def _same(a):
    return a


def trunk_targets(model) -> Dict[str, Tuple[object, Callable]]:
    """torchvision name -> (Keras variable, transform from the PyTorch array)."""
    t = {}

    def conv_bn(prefix, layer):
        t[prefix + "0.weight"] = (layer.conv.kernel, _conv)
        for src, dst in _BN.items():
            t[prefix + "1." + src] = (getattr(layer.bn, dst), _same)

    conv_bn("stem.", model.stem)
    for s, stage in enumerate(model.stages, start=1):
        for i, block in enumerate(stage):
            p = f"trunk_output.block{s}.block{s}-{i}."
            conv_bn(p + "f.a.", block.a)
            conv_bn(p + "f.b.", block.b)
            conv_bn(p + "f.c.", block.c)
            if block.proj is not None:
                conv_bn(p + "proj.", block.proj)
            if block.se is not None:
                t[p + "f.se.fc1.weight"] = (block.se.reduce_kernel, _matrix)
                t[p + "f.se.fc1.bias"] = (block.se.reduce_bias, _same)
                t[p + "f.se.fc2.weight"] = (block.se.expand_kernel, _matrix)
                t[p + "f.se.fc2.bias"] = (block.se.expand_bias, _same)
    if model.fc is not None:
        t["fc.weight"] = (model.fc.kernel, _matrix)
        t["fc.bias"] = (model.fc.bias, _same)
    return t


def head_targets(head, prototypes) -> Dict[str, Tuple[object, Callable]]:
    """VISSL SwAVPrototypesHead name -> (Keras variable, transform)."""
    t, i = {}, 0
    for n, linear in enumerate(head.linears):
        t[f"projection_head.{i}.weight"] = (linear.kernel, _matrix)
        if linear.use_bias:
            t[f"projection_head.{i}.bias"] = (linear.bias, _same)
        i += 1
        if n < len(head.linears) - 1:
            if head.bns:
                for src, dst in _BN.items():
                    t[f"projection_head.{i}.{src}"] = (getattr(head.bns[n], dst), _same)
                i += 1
            i += 1  # ReLU
    if prototypes is not None:
        for j, kernel in enumerate(prototypes.kernels):
            t[f"prototypes{j}.weight"] = (kernel, _matrix)
    return t


def assign(targets: Dict[str, Tuple[object, Callable]], source: Dict[str, np.ndarray], what: str):
    """Assign every target from `source`; raise listing unknown, missing and mis-shaped keys."""
    unknown = set(source) - set(targets)
    missing = set(targets) - set(source)
    bad, ready = [], []
    for name in sorted(set(targets) & set(source)):
        var, transform = targets[name]
        value = transform(np.asarray(source[name]))
        if tuple(value.shape) != tuple(var.shape):
            bad.append(f"{name} {tuple(source[name].shape)}->{tuple(value.shape)} "
                       f"vs model {tuple(var.shape)}")
        else:
            ready.append((var, value))
    if unknown or missing or bad:
        parts = [f"{what} does not match the model"]
        if unknown:
            parts.append(_listing("unknown keys", unknown))
        if missing:
            parts.append(_listing("missing keys", missing))
        if bad:
            parts.append(_listing("mis-shaped keys", bad))
        raise UsageError("; ".join(parts))
    for var, value in ready:
        var.assign(value.astype(var.dtype))
    return len(ready)


def build_model(trunk_spec: regnet_lib.RegNetSpec, num_classes: int, head_args: Optional[Dict]):
    """A RegNet (or SwAV model when a head is given) with the checkpoint's architecture, built."""
    from seer_tf.models.regnet import RegNet

    backbone = RegNet(**trunk_spec.as_kwargs(), num_classes=num_classes, name="regnet")
    backbone.build((None, None, None, 3))
    if head_args is None:
        return backbone
    from seer_tf.models.swav import SwAVModel

    model = SwAVModel(backbone, head_args["dims"], head_args["num_prototypes"],
                      use_bn=head_args["use_bn"], use_bias=head_args["use_bias"])
    model.build_all()
    return model


def check_preset(spec: regnet_lib.RegNetSpec, preset: str):
    want = regnet_lib.spec_for(preset)
    for field in ("depths", "widths", "group_widths", "stem_width"):
        if getattr(want, field) != getattr(spec, field):
            raise UsageError(f"checkpoint is not {preset}: {field} {getattr(spec, field)} "
                                  f"in the file, {getattr(want, field)} in the preset")


def convert_state(state: Dict[str, np.ndarray], fmt: str = "auto", preset: Optional[str] = None,
                  include_head: bool = True):
    """A flat PyTorch state dict -> (built Keras model with the weights, report dict)."""
    fmt, trunk, head, ignored = canonicalize(state, fmt)
    spec, num_classes = infer_spec(trunk)
    if preset:
        check_preset(spec, preset)
    head_args = infer_head(head) if include_head else None
    if head and not include_head:
        ignored += [f"heads.0.{k}" for k in head]  # the user asked for the trunk only
    model = build_model(spec, num_classes, head_args)
    backbone = model.backbone if head_args else model
    n = assign(trunk_targets(backbone), trunk, "trunk")
    if head_args:
        n += assign(head_targets(model.head, model.prototypes), head, "SwAV head")
    report = {"format": fmt, "spec": spec.as_kwargs(), "num_classes": num_classes,
              "head": head_args, "tensors_assigned": n,
              "ignored": {"count": len(ignored), "first": sorted(ignored)[:5]}}
    return model, report
