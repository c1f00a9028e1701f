"""Generate the small PyTorch parity fixtures in tests/testdata/ (needs torch, torchvision, timm
and classy_vision; CI does not: the .npz files are committed).

    python3 -m venv .torchenv        # git-ignored; any folder outside the repository works too
    .torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm classy_vision numpy
    .torchenv/bin/python tools/make_parity_fixtures.py

Each fixture holds a state dict (keys `state/<pytorch name>`), two inputs (32x32: even sizes,
where TF "same" padding would differ from PyTorch's; 37x37: odd sizes) and the reference outputs
in eval mode. The tiny architecture (d=7, w_0=24, w_a=4, w_m=1.3, g=16, SE 0.25) has 4 stages,
stride 2 and a projection shortcut at every stage start, identity shortcuts inside stages, two
groups per 3x3 conv, and stage widths that differ between the two rounding rules:
pycls [32, 32, 32, 64] vs torchvision [32, 32, 48, 64].

BatchNorm statistics and affine parameters are randomized so that eval-mode BN is not identity.
"""

import os

import numpy as np
import torch

TINY = dict(depth=7, w_0=24, w_a=4.0, w_m=1.3, group_width=16, se_ratio=0.25)
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "testdata")


def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) * 0.8 + 0.6
            m.bias.data = torch.randn(n, generator=gen) * 0.1
            m.running_mean = torch.randn(n, generator=gen) * 0.1
            m.running_var = torch.rand(n, generator=gen) + 0.5


def inputs(gen):
    return {"x_even": torch.randn(2, 3, 32, 32, generator=gen),
            "x_odd": torch.randn(2, 3, 37, 37, generator=gen)}


def save(name, state, arrays, meta):
    out = {f"state/{k}": v.detach().cpu().numpy() for k, v in state.items()}
    out.update({k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
                for k, v in arrays.items()})
    out.update({f"meta/{k}": np.asarray(v) for k, v in meta.items()})
    path = os.path.join(OUT, name)
    np.savez_compressed(path, **out)
    print(f"{path}: {len(state)} tensors, {os.path.getsize(path)} bytes")


def nhwc(t):
    return t.permute(0, 2, 3, 1)


@torch.no_grad()
def torchvision_fixture(gen):
    from torchvision.models.regnet import BlockParams, RegNet

    model = RegNet(BlockParams.from_init_params(**TINY), num_classes=10).eval()
    randomize_bn(model, gen)
    arrays = {}
    for key, x in inputs(gen).items():
        feats = model.trunk_output(model.stem(x))
        arrays[key] = nhwc(x)
        arrays[f"{key}/pooled"] = feats.mean(dim=(2, 3))
        arrays[f"{key}/logits"] = model(x)
        arrays[f"{key}/stage4"] = nhwc(feats)
    widths = [s[0].f.c[0].out_channels for s in model.trunk_output]
    save("torchvision_tiny.npz", model.state_dict(), arrays, {"widths": widths})


@torch.no_grad()
def vissl_fixture(gen):
    """ClassyVision RegNet (pycls rounding), named as VISSL's trunk, plus a SwAV head laid out as
    VISSL's SwAVPrototypesHead (Linear, BN, ReLU, Linear; prototypes0/1 without bias)."""
    from classy_vision.models.regnet import RegNet, RegNetParams

    trunk = RegNet(RegNetParams(**{k: v for k, v in TINY.items()})).eval()
    randomize_bn(trunk, gen)
    w = [stage[0].f.c.out_channels for stage in trunk.trunk_output]
    head = torch.nn.Sequential(torch.nn.Linear(w[-1], 32), torch.nn.BatchNorm1d(32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 16)).eval()
    randomize_bn(head, gen)
    protos = [torch.nn.Linear(16, 20, bias=False), torch.nn.Linear(16, 12, bias=False)]
    state = {}
    for k, v in trunk.state_dict().items():
        if k.startswith("stem."):
            k = "_feature_blocks.conv1." + k[len("stem."):]
        else:  # trunk_output.blockS.X -> _feature_blocks.res{S+1}.X
            s = int(k.split(".")[1][len("block"):])
            k = f"_feature_blocks.res{s + 1}." + k.split(".", 2)[2]
        state["classy_state_dict.base_model.model.trunk." + k] = v
    for k, v in head.state_dict().items():
        state["classy_state_dict.base_model.model.heads.0.projection_head." + k] = v
    for j, p in enumerate(protos):
        state[f"classy_state_dict.base_model.model.heads.0.prototypes{j}.weight"] = p.weight
    arrays = {}
    for key, x in inputs(gen).items():
        pooled = trunk(x).mean(dim=(2, 3))
        emb = torch.nn.functional.normalize(head(pooled), dim=1, p=2)
        arrays[key] = nhwc(x)
        arrays[f"{key}/pooled"] = pooled
        arrays[f"{key}/embeddings"] = emb
        for j, p in enumerate(protos):
            arrays[f"{key}/scores{j}"] = p(emb)
    save("vissl_tiny.npz", state, arrays, {"widths": w})


@torch.no_grad()
def timm_fixture(gen):
    from timm.models.regnet import RegNet, RegNetCfg

    cfg = RegNetCfg(depth=TINY["depth"], w0=TINY["w_0"], wa=TINY["w_a"], wm=TINY["w_m"],
                    group_size=TINY["group_width"], se_ratio=TINY["se_ratio"])
    model = RegNet(cfg, num_classes=10).eval()
    randomize_bn(model, gen)
    arrays = {}
    for key, x in inputs(gen).items():
        feats = model.forward_features(x)
        arrays[key] = nhwc(x)
        arrays[f"{key}/pooled"] = feats.mean(dim=(2, 3))
        arrays[f"{key}/logits"] = model(x)
    save("timm_tiny.npz", model.state_dict(), arrays, {})


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    torchvision_fixture(gen)
    vissl_fixture(gen)
    timm_fixture(gen)
