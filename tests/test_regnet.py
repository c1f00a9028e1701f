"""RegNetY family: generator numbers, published parameter counts, Keras model behaviour."""

import numpy as np
import keras
import pytest

import tensorflow as tf

from seer_tf import ops
from seer_tf.models import complexity, family
from seer_tf.ops import native
from seer_tf.models.regnet import RegNet

# torchvision `num_params` (trunk + 1000-way fc), from torchvision/models/regnet.py weight metas.
TORCHVISION_NUM_PARAMS = {
    "regnet_y_400mf": 4_344_144,
    "regnet_y_800mf": 6_432_512,
    "regnet_y_1_6gf": 11_202_430,
    "regnet_y_3_2gf": 19_436_338,
    "regnet_y_8gf": 39_381_472,
    "regnet_y_16gf": 83_590_140,
    "regnet_y_32gf": 145_046_770,
    "regnet_y_128gf": 644_812_894,
}


@pytest.mark.parametrize("name,expected", sorted(TORCHVISION_NUM_PARAMS.items()))
def test_analytic_param_count_matches_torchvision(name, expected):
    assert complexity.describe(family.spec_for(name))["params_with_fc"] == expected


@pytest.mark.parametrize("name", ["regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnetY_tiny"])
def test_built_model_param_count_matches_analytic(name):
    name = name.lower()
    model = RegNet.from_preset(name, num_classes=1000)
    model.build((None, None, None, 3))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == complexity.describe(family.spec_for(name))["params_with_fc"]
    if name in TORCHVISION_NUM_PARAMS:
        assert trainable == TORCHVISION_NUM_PARAMS[name]


def test_seer_256gf_trunk():
    d = complexity.describe(family.spec_for("seer_regnety_256gf"))
    assert d["params_trunk"] == 1_272_156_138
    assert [s["width"] for s in d["stages"]] == [746, 1492, 4103, 10444]
    assert [s["depth"] for s in d["stages"]] == [2, 7, 17, 1]
    # w_se = round(0.25 * block input width): first blocks of stages 2..4 see 746/1492/4103.
    assert [s["se_widths"][0] for s in d["stages"][1:]] == [186, 373, 1026]
    assert family.se_width_for(746, 0.25) == 186  # 186.5 rounds half to even


@pytest.mark.parametrize("name,depths,widths", [
    ("regnety_400mf", [1, 3, 6, 6], [48, 104, 208, 440]),
    ("regnet_y_800mf", [1, 3, 8, 2], [64, 144, 320, 784]),
    ("regnety_800mf", [1, 3, 8, 2], [64, 128, 320, 768]),
    ("regnety_8gf", [2, 4, 10, 1], [168, 448, 896, 2016]),
    ("regnet_y_8gf", [2, 4, 10, 1], [224, 448, 896, 2016]),
    ("regnety_16gf", [2, 4, 11, 1], [224, 448, 1232, 3024]),
    ("regnety_32gf", [2, 5, 12, 1], [232, 696, 1392, 3712]),
    ("seer_regnety_64gf", [2, 5, 12, 1], [328, 984, 1968, 4920]),
    ("seer_regnety_128gf", [2, 7, 17, 1], [528, 1056, 2904, 7392]),
    ("seer_regnety_10b", [2, 7, 17, 1], [2020, 4040, 11110, 28280]),
])
def test_generator_stage_lists(name, depths, widths):
    spec = family.spec_for(name)
    assert spec.depths == depths and spec.widths == widths
    assert all(w % g == 0 for w, g in zip(spec.widths, spec.group_widths))


def test_large_trunk_counts():
    assert round(complexity.describe(family.spec_for("seer_regnety_64gf"))["params_trunk"] / 1e6, 2) == 276.46
    assert round(complexity.describe(family.spec_for("seer_regnety_10b"))["params_trunk"] / 1e6, 1) == 9323.9
    # RegNet names are their multiply-adds at 224: 400MF ~ 0.4 GF, 16GF ~ 16 GF.
    assert abs(complexity.describe(family.spec_for("regnet_y_400mf"))["gflops"] - 0.4) < 0.02
    assert abs(complexity.describe(family.spec_for("regnety_16gf"))["gflops"] - 16.0) < 0.3


def test_rounding_rules():
    assert family.adjust_widths_groups([192], [1.0], [56], "pycls")[0] == [168]
    assert family.adjust_widths_groups([192], [1.0], [56], "torchvision")[0] == [224]
    assert family.adjust_widths_groups([20], [1.0], [56], "pycls") == ([20], [20])  # g' = min(g, w)
    with pytest.raises(ValueError, match="width_rounding"):
        family.adjust_widths_groups([192], [1.0], [56], "nearest")
    with pytest.raises(ValueError, match="w_0"):
        family.block_widths(10, 30, 10.0, 2.0)


def test_unknown_preset_names_closest():
    with pytest.raises(ValueError, match="did you mean seer_regnety_256gf"):
        family.get_preset("seer_256gf")


def _tiny(**kw):
    m = RegNet.from_preset("regnety_tiny", **kw)
    m.build((None, None, None, 3))
    return m


def test_endpoints_shapes_and_pytorch_padding():
    m = _tiny(num_classes=7)
    out = m(np.zeros((2, 37, 37, 3), "float32"), training=False)
    spec = family.spec_for("regnety_tiny")
    # PyTorch padding: out = floor((n + 2 - 3) / 2) + 1 -> 37, 19, 10, 5, 3, 2
    assert out["stem"].shape == (2, 19, 19, spec.stem_width)
    sizes = [10, 5, 3, 2]
    for i, (w, n) in enumerate(zip(spec.widths, sizes), start=1):
        assert out[f"stage{i}"].shape == (2, n, n, w)
    assert out["pooled"].shape == (2, spec.widths[-1])
    assert out["logits"].shape == (2, 7)
    np.testing.assert_allclose(out["pooled"], np.mean(out["stage4"], axis=(1, 2)), atol=1e-6)


def test_reference_init_statistics():
    m = RegNet.from_preset("regnet_y_400mf")
    m.build((None, None, None, 3))
    k = m.stages[3][0].a.conv.kernel.numpy()  # 1x1, 440 outputs: std sqrt(2/440)
    assert abs(k.std() - np.sqrt(2 / 440)) < 0.05 * np.sqrt(2 / 440)
    assert m.stages[0][0].b.conv.kernel.shape == (3, 3, 8, 48)  # grouped: in/groups = g


def test_keras_save_load_round_trip(tmp_path):
    m = _tiny(num_classes=5)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    y = m(x, training=False)
    path = str(tmp_path / "tiny.keras")
    m.save(path)
    m2 = keras.models.load_model(path)
    y2 = m2(x, training=False)
    for key in y:
        np.testing.assert_allclose(y[key], y2[key], atol=1e-6)
    m3 = RegNet.from_config(m.get_config())
    assert m3.get_config() == m.get_config()


def test_bad_lists_are_rejected():
    with pytest.raises(ValueError, match="widths has 2 entries"):
        RegNet(depths=[1, 1, 1], widths=[8, 16], group_widths=[8, 8, 8])
    with pytest.raises(ValueError, match="multiple of group width"):
        RegNet(depths=[1], widths=[24], group_widths=[16]).build((None, 8, 8, 3))


def test_mixed_bfloat16_training_gradients():
    """Grouped convolutions have no bf16 gradient on CPUs without native bf16 kernels; the
    Conv layer must still train (it falls back to float32 for those convolutions)."""
    import tensorflow as tf

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        m = RegNet.from_preset("regnety_tiny")
        m.build((None, None, None, 3))
        x = tf.constant(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), tf.float32)

        @tf.function
        def grads():
            with tf.GradientTape() as tape:
                out = m(x, training=True)["pooled"]
                loss = tf.reduce_sum(tf.cast(out, tf.float32) ** 2)
            return out, tape.gradient(loss, m.trainable_variables)

        out, g = grads()
        assert out.dtype == tf.bfloat16
        assert all(np.isfinite(v.numpy()).all() for v in g)
        assert any(np.abs(v.numpy()).max() > 0 for v in g)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_yblock_se_inside_conv_c_matches_separate_se(monkeypatch):
    """The SE scale applied inside conv c (folded into its kernel) gives the Y block's output
    and gradients of the separate y * gate(y) -> conv path."""
    import tensorflow as tf

    from seer_tf.models import blocks
    from seer_tf.ops import select

    keras.utils.set_random_seed(4)
    block = blocks.YBlock(16, 24, stride=1, group_width=8)
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 8, 8, 16)), tf.float32)
    block.build(x.shape)
    results = []
    for fold in (True, False):
        monkeypatch.setattr(select, "scale_in_kernel", lambda m, shape, f=fold: f)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = block(x, training=True)
            loss = tf.reduce_sum(y ** 2)
        results.append([y] + tape.gradient(loss, [x] + block.trainable_variables))
    for ours, ref in zip(*results):
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    # and the separate path is the SE layer itself
    h = block.b(block.a(x, training=False), training=False)
    np.testing.assert_allclose(block.c(block.se(h), training=False).numpy(),
                               block.c(h, training=False, channel_scale=block.se.gate(h)).numpy(),
                               rtol=1e-5, atol=1e-5)


def _step_ops(fn):
    """Op types of a traced tf.function and of the functions it calls (gradients, custom
    gradients, nested XLA kernels)."""
    graph = fn.get_concrete_function().graph
    types, seen, stack = set(), set(), [graph.as_graph_def()]
    while stack:
        gdef = stack.pop()
        types.update(n.op for n in gdef.node)
        for f in gdef.library.function:
            if f.signature.name not in seen:
                seen.add(f.signature.name)
                types.update(n.op for n in f.node_def)
    return types


def _traced_step(m, x):
    def step():
        with tf.GradientTape() as tape:
            out = tf.cast(m(x, training=True)["pooled"], tf.float32)
            loss = tf.reduce_sum(out * tf.range(out.shape[-1], dtype=tf.float32))
        return [out] + tape.gradient(loss, m.trainable_variables)
    return step


def _relative_error(got, want):
    return [np.linalg.norm(g.numpy().astype("float64") - w.numpy().astype("float64"))
            / np.linalg.norm(w.numpy().astype("float64")) for g, w in zip(got, want)]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_xla_compiled_step_matches_the_native_step(policy):
    """Forward + backward of a tiny RegNetY XLA-compiled (`ops.inside_xla()` entered in the
    traced function, as the training loop does) equals the step on seer_tf's native CPU ops:
    inside XLA the kernel table picks only what XLA compiles. bfloat16: both steps are as close
    to the float32 step with the same weights (their roundings differ, kernel by kernel)."""
    keras.utils.set_random_seed(5)
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), tf.float32)
    reference = _tiny()
    keras.mixed_precision.set_global_policy(policy)
    try:
        m = _tiny()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    m.set_weights(reference.get_weights())
    step = _traced_step(m, x)

    def xla_step():
        assert not ops.is_inside_xla()
        with ops.inside_xla():
            assert ops.is_inside_xla()
            return step()

    plain, compiled = tf.function(step), tf.function(xla_step, jit_compile=True)
    want, got = plain(), compiled()
    assert not ops.is_inside_xla()
    if native.available():  # the plain step runs the native ops, the XLA step none
        assert any(t.startswith("Seer") for t in _step_ops(plain))
    assert not any(t.startswith("Seer") for t in _step_ops(compiled))
    if policy == "float32":
        for ours, ref in zip(got, want):
            ours, ref = ours.numpy(), ref.numpy()
            np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        return
    # A tiny trunk's bf16 gradients are noisy (BatchNorm's backward cancels most of each
    # gradient, and stage 4 normalizes 8 values): ~0.5 relative error against float32 on either
    # path. The XLA step's errors must be those of the native one, tensor by tensor on average.
    exact = tf.function(_traced_step(reference, x))()
    xla_error, native_error = _relative_error(got, exact), _relative_error(want, exact)
    assert xla_error[0] <= 2 * native_error[0] + 0.01, (xla_error[0], native_error[0])
    assert np.mean(xla_error[1:]) <= 1.25 * np.mean(native_error[1:]), (xla_error, native_error)
    assert max(xla_error) < 2 * max(native_error), (xla_error, native_error)


def test_inside_xla_is_per_thread_and_per_traced_graph(mirrored_strategy):
    """`ops.inside_xla()` holds in the thread that entered it, and in the replica threads of a
    MirroredStrategy.run called inside it while tracing; not elsewhere."""
    import threading

    seen = []

    def probe(tag):
        seen.append((tag, ops.is_inside_xla()))

    with ops.inside_xla():  # eager: this thread only
        probe("eager")
        other = threading.Thread(target=probe, args=("other thread",))
        other.start()
        other.join()

    def replica(tag):
        probe(tag)
        return tf.constant(0.0)

    def entered_in_replica():
        with ops.inside_xla():
            return replica("entered")

    @tf.function
    def step():
        with ops.inside_xla():  # on the tracing thread, around the replicas
            mirrored_strategy.run(replica, args=("outer",))
        mirrored_strategy.run(entered_in_replica)
        mirrored_strategy.run(replica, args=("after",))
        return tf.constant(0.0)

    step.get_concrete_function()
    assert not ops.is_inside_xla()
    assert sorted(seen) == sorted([("eager", True), ("other thread", False)]
                                  + [(t, t != "after") for t in ("outer", "entered", "after")
                                     for _ in range(2)])
