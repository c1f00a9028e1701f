"""LARC against a literal NumPy transcription of apex `LARC.step()` + `torch.optim.SGD.step()`.

The exactness tests run the optimizer on float64 variables: LARC's steps are ~1e-3 of the
weights, so comparing weights in float32 could not see a wrong weight-decay term. In float64
the accumulated update (w_T - w_0) is compared to the reference at 1e-6 relative.
"""

import contextlib
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from seer_tf.optim.lars import LARC
from seer_tf.optim.schedules import WarmupCosine

STEPS = 6


def reference_larc_sgd(params, grads, lrs, wd, adapt, *, momentum=0.9, nesterov=False,
                       trust=0.001, eps=1e-8, clip=False, wd_in_zero_branch=False):
    """apex.parallel.LARC wrapping torch.optim.SGD(momentum, weight_decay=wd), step by step.

    params: list of arrays; grads: per step, a list with an array or None per param;
    wd / adapt: per-param weight decay (a param group's value) and whether LARC adapts it
    (False: our extension, plain SGD weight decay). `wd_in_zero_branch` is the WRONG variant
    (decay added when a norm is zero), only used to show the test can tell them apart.
    """
    params = [np.array(p, np.float64) for p in params]
    bufs = [None] * len(params)
    for step, step_grads in enumerate(grads):
        lr = lrs[step]
        for i, (p, g) in enumerate(zip(params, step_grads)):
            if g is None:  # LARC: `continue`; SGD: skips params without grad
                continue
            g = np.array(g, np.float64)
            # LARC.step(): the group's weight_decay is absorbed (set to 0 for the inner SGD).
            if adapt[i]:
                param_norm = np.linalg.norm(p)
                grad_norm = np.linalg.norm(g)
                if param_norm != 0 and grad_norm != 0:
                    adaptive_lr = trust * param_norm / (grad_norm + param_norm * wd[i] + eps)
                    if clip:
                        adaptive_lr = min(adaptive_lr / lr, 1)
                    g += wd[i] * p
                    g *= adaptive_lr
                elif wd_in_zero_branch:
                    g += wd[i] * p
            else:
                g += wd[i] * p
            # torch SGD with weight_decay=0, dampening=0.
            if momentum != 0:
                if bufs[i] is None:
                    bufs[i] = g.copy()
                else:
                    bufs[i] = momentum * bufs[i] + g
                g = g + momentum * bufs[i] if nesterov else bufs[i]
            p -= lr * g
    return params, bufs


PATHS = ["block/conv/kernel", "block/bn/gamma", "block/bias", "head/kernel", "proto/kernel"]


def _problem(seed=0):
    """Initial values and per-step gradients for a mix of tensors and edge cases."""
    rng = np.random.default_rng(seed)
    init = [
        rng.normal(0, 0.5, (3, 3, 4, 6)),          # conv kernel
        1.0 + rng.normal(0, 0.1, (6,)),            # BN scale (vector)
        np.zeros((6,)),                            # zero-initialized bias: ||w|| == 0 at step 0
        rng.normal(0, 0.3, (6, 5)),                # gets an all-zero gradient on steps 2 and 3
        rng.normal(0, 0.3, (5, 7)),                # prototypes: gradient None on steps 0 and 1
    ]
    grads = []
    for step in range(STEPS):
        g = [rng.normal(0, s, x.shape) for x, s in zip(init, [0.05, 0.02, 0.03, 0.04, 0.5])]
        if step in (2, 3):
            g[3] = np.zeros_like(init[3])
        if step < 2:
            g[4] = None
        grads.append(g)
    return init, grads


def _variables(init, dtype):
    out = []
    for path, value in zip(PATHS, init):
        *scopes, name = path.split("/")
        with contextlib.ExitStack() as stack:
            for scope in scopes:
                stack.enter_context(keras.name_scope(scope))
            out.append(keras.Variable(value.astype(dtype), name=name, dtype=dtype))
    assert [v.path for v in out] == PATHS
    return out


def _run(opt, variables, grads, apply_fn=None):
    apply_fn = apply_fn or (lambda g: opt.apply(g, variables))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns about the None gradients
        for step_grads in grads:
            apply_fn([None if g is None else tf.constant(g, variables[0].dtype)
                      for g in step_grads])
    return [v.numpy() for v in variables]


def _assert_close_updates(got, init, expected, rtol):
    for path, g, w0, e in zip(PATHS, got, init, expected):
        delta, ref = g - w0, e - w0
        err = np.linalg.norm(delta - ref) / np.linalg.norm(ref)
        assert err < rtol, f"{path}: relative error of the update {err:.2e}"


SCHEDULE = WarmupCosine(peak_lr=2.0, total_steps=8, warmup_steps=3, start_lr=0.5, final_lr=0.1)
LRS = [float(SCHEDULE(s)) for s in range(STEPS)]

CASES = {
    # name: (constructor kwargs, per-path weight decay factor (1 = wd), per-path adapted)
    "seer_all_tensors": ({}, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
    "vectors_excluded": (dict(exclude_vectors_from_weight_decay=True,
                              exclude_vectors_from_adaptation=True),
                         [1, 0, 0, 1, 1], [1, 0, 0, 1, 1]),
    "regexes": (dict(exclude_from_weight_decay=[r"bias$", r"^proto/"],
                     exclude_from_adaptation=r"/bn/"),
                [1, 1, 0, 1, 0], [1, 0, 1, 1, 1]),
    "callable_nesterov_clip": (dict(exclude_from_adaptation=lambda v: v.path.startswith("head"),
                                    nesterov=True, clip=True),
                               [1, 1, 1, 1, 1], [1, 1, 1, 0, 1]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_apex_reference_float64(case):
    kwargs, wd_mask, adapt = CASES[case]
    wd, trust = 0.01, 0.02  # large enough that every term moves the result well above 1e-6
    init, grads = _problem()
    variables = _variables(init, "float64")
    opt = LARC(learning_rate=SCHEDULE, weight_decay=wd, trust_coefficient=trust, **kwargs)
    got = _run(opt, variables, grads)
    assert opt.rules_by_path() == {p: (wd * m, bool(a)) for p, m, a in zip(PATHS, wd_mask, adapt)}
    expected, bufs = reference_larc_sgd(
        init, grads, LRS, [wd * m for m in wd_mask], adapt, trust=trust,
        nesterov=kwargs.get("nesterov", False), clip=kwargs.get("clip", False))
    _assert_close_updates(got, init, expected, rtol=1e-6)
    for path, m, b in zip(PATHS, opt.momentums, bufs):
        np.testing.assert_allclose(m.numpy(), b, rtol=1e-6, atol=1e-12, err_msg=path)


def test_zero_norm_branch_takes_raw_gradient_without_weight_decay():
    """apex adds `wd * w` only inside `if param_norm != 0 and grad_norm != 0`."""
    init, grads = _problem()
    opt = LARC(learning_rate=SCHEDULE, weight_decay=0.05, trust_coefficient=0.02)
    got = _run(opt, _variables(init, "float64"), grads)
    right, _ = reference_larc_sgd(init, grads, LRS, [0.05] * 5, [1] * 5, trust=0.02)
    wrong, _ = reference_larc_sgd(init, grads, LRS, [0.05] * 5, [1] * 5, trust=0.02,
                                  wd_in_zero_branch=True)
    # The zero-gradient head is where the two differ; the test resolves the difference.
    gap = np.linalg.norm(wrong[3] - right[3]) / np.linalg.norm(right[3] - init[3])
    assert gap > 1e-3
    _assert_close_updates(got, init, right, rtol=1e-6)
    # Step 0 of the zero-initialized bias is the raw gradient times lr (no trust ratio).
    opt0 = LARC(learning_rate=0.5, weight_decay=0.05)
    bias = keras.Variable(np.zeros(6), dtype="float64")
    opt0.apply([tf.constant(grads[0][2])], [bias])
    np.testing.assert_allclose(bias.numpy(), -0.5 * grads[0][2], rtol=1e-12)


def test_seer_defaults_float64():
    """trust 0.001, eps 1e-8, wd 1e-5, momentum 0.9, LR 9.6: still exact in the update."""
    init, grads = _problem(seed=1)
    opt = LARC(learning_rate=9.6)
    got = _run(opt, _variables(init, "float64"), grads)
    lr = float(np.float32(9.6))  # the optimizer keeps a float LR in a float32 variable
    expected, _ = reference_larc_sgd(init, grads, [lr] * STEPS, [1e-5] * 5, [1] * 5)
    _assert_close_updates(got, init, expected, rtol=1e-6)


def test_float32_weights_and_jit_compile():
    init, grads = _problem(seed=2)
    expected, _ = reference_larc_sgd(init, grads, LRS, [0.01] * 5, [1] * 5, trust=0.02)
    results = []
    for jit in (False, True):
        variables = _variables(init, "float32")
        opt = LARC(learning_rate=SCHEDULE, weight_decay=0.01, trust_coefficient=0.02)
        opt.build(variables)
        if jit:  # one traced signature: the frozen steps get zeros instead of None
            step = tf.function(lambda g: opt.apply(g, variables), jit_compile=True)
            got = _run(opt, variables, [[g if g is not None else np.zeros_like(w)
                                         for g, w in zip(s, init)] for s in grads], step)
        else:
            got = _run(opt, variables, grads)
        results.append(got)
    for path, g, e in zip(PATHS, results[0], expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7, err_msg=path)
    # A zero gradient on a still-zero momentum buffer moves nothing, like the None it replaced.
    for path, a, b in zip(PATHS, results[0], results[1]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=path)


def test_half_precision_gradients_on_float32_variables():
    """Mixed precision keeps variables float32; a bfloat16/float16 gradient is upcast first."""
    init, grads = _problem(seed=3)
    for dtype in (tf.bfloat16, tf.float16):
        variables = _variables(init, "float32")
        opt = LARC(learning_rate=1.0, weight_decay=0.01, trust_coefficient=0.02)
        low = [[None if g is None else tf.cast(g, dtype) for g in s] for s in grads]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s in low:
                opt.apply(s, variables)
        rounded = [[None if g is None else g.numpy().astype(np.float64) for g in s] for s in low]
        expected, _ = reference_larc_sgd(init, rounded, [1.0] * STEPS, [0.01] * 5, [1] * 5,
                                         trust=0.02)
        for v, e in zip(variables, expected):
            assert v.dtype == "float32"
            np.testing.assert_allclose(v.numpy(), e, rtol=1e-6, atol=1e-7)


def _regression_problem():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    init = [rng.normal(0, 0.5, (6, 5)), np.zeros(5), rng.normal(0, 0.5, (5, 1)),
            rng.normal(0, 0.5, (3,))]
    return x, y, [i.astype(np.float32) for i in init]


def _loss_sum(variables, x, y):
    w1, b1, w2, unused = variables
    pred = tf.matmul(tf.tanh(tf.matmul(x, w1) + b1), w2)
    # `unused` gets an all-zero gradient every step (apex's grad_norm == 0 branch).
    return tf.reduce_sum(tf.square(pred - y)) + 0.0 * tf.reduce_sum(unused)


def test_two_replicas_half_batch_equal_one_device(mirrored_strategy):
    x, y, init = _regression_problem()
    kwargs = dict(learning_rate=0.5, weight_decay=0.01, trust_coefficient=0.02)

    single_vars = [keras.Variable(v) for v in init]
    single_opt = LARC(**kwargs)

    @tf.function
    def single_step():
        with tf.GradientTape() as tape:
            loss = _loss_sum(single_vars, x, y) / 8.0
        single_opt.apply(tape.gradient(loss, single_vars), single_vars)

    with mirrored_strategy.scope():
        dist_vars = [keras.Variable(v) for v in init]
        dist_opt = LARC(**kwargs)
        dist_opt.build(dist_vars)
    xs = mirrored_strategy.experimental_distribute_values_from_function(
        lambda ctx: x[4 * ctx.replica_id_in_sync_group: 4 * ctx.replica_id_in_sync_group + 4])
    ys = mirrored_strategy.experimental_distribute_values_from_function(
        lambda ctx: y[4 * ctx.replica_id_in_sync_group: 4 * ctx.replica_id_in_sync_group + 4])

    def replica_step(xr, yr):
        with tf.GradientTape() as tape:
            loss = _loss_sum(dist_vars, xr, yr) / 8.0  # per-replica sum / GLOBAL batch
        dist_opt.apply(tape.gradient(loss, dist_vars), dist_vars)  # apply sums across replicas

    dist_step = tf.function(lambda a, b: mirrored_strategy.run(replica_step, args=(a, b)))
    for _ in range(5):
        single_step()
        dist_step(xs, ys)
    for s, d, w0 in zip(single_vars, dist_vars, init):
        locals_ = mirrored_strategy.experimental_local_results(d.value)
        assert len(locals_) == 2
        for local in locals_:
            np.testing.assert_allclose(local.numpy(), s.numpy(), rtol=1e-6, atol=1e-7)
    for moved in (0, 2):
        assert np.abs(single_vars[moved].numpy() - init[moved]).max() > 1e-3
    np.testing.assert_array_equal(dist_vars[3].numpy(), init[3])  # zero gradient: no decay


def test_loss_scale_optimizer_under_mirrored_strategy(mirrored_strategy):
    """Finite steps match one device. Overflow on ONE replica needs a guard in the train step.

    Keras 3.15 LossScaleOptimizer under MirroredStrategy (merge_call path) tests finiteness on
    the first replica's LOCAL gradients, before the all-reduce inside the inner `apply`: an
    inf on replica 1 only is summed into the update (weights become NaN). The guard below
    (all-reduce a non-finite flag, poison every replica's gradients with NaN) makes every
    replica skip the step and halves the scale; the train step must do the same.
    """
    rng = np.random.default_rng(6)
    w0 = rng.normal(0, 0.5, (4, 3)).astype(np.float32)
    per_replica = [rng.normal(0, 0.1, (4, 3)).astype(np.float32) for _ in range(2)]
    kwargs = dict(learning_rate=0.5, weight_decay=0.01, trust_coefficient=0.02)
    with mirrored_strategy.scope():
        w = keras.Variable(w0)
        lso = keras.optimizers.LossScaleOptimizer(LARC(**kwargs))
        lso.build([w])
    stacked = tf.constant(np.stack(per_replica))

    def replica_step(overflow):
        ctx = tf.distribute.get_replica_context()
        rid = ctx.replica_id_in_sync_group
        g = tf.gather(stacked, rid) * lso.dynamic_scale  # as if from lso.scale_loss(loss)
        g = tf.where(tf.logical_and(overflow, tf.equal(rid, 1)), g * np.inf, g)
        local_bad = tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(g))), tf.float32)
        any_bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_bad) > 0
        g = tf.where(any_bad, tf.fill(tf.shape(g), np.nan), g)
        lso.apply([g], [w])

    step = tf.function(lambda o: mirrored_strategy.run(replica_step, args=(o,)))
    step(tf.constant(False))
    single = keras.Variable(w0)
    plain = LARC(**kwargs)
    plain.apply([tf.constant(per_replica[0] + per_replica[1])], [single])
    locals_ = mirrored_strategy.experimental_local_results(w.value)
    for local in locals_:
        np.testing.assert_allclose(local.numpy(), single.numpy(), rtol=1e-6, atol=1e-7)

    scale = float(lso.dynamic_scale.numpy())
    step(tf.constant(True))
    for local in mirrored_strategy.experimental_local_results(w.value):
        np.testing.assert_array_equal(local.numpy(), single.numpy())
    np.testing.assert_array_equal(lso.inner_optimizer.momentums[0].numpy(),
                                  plain.momentums[0].numpy())
    assert float(lso.dynamic_scale.numpy()) == scale / 2
    assert int(lso.inner_optimizer.iterations.numpy()) == 1


def test_checkpoint_restores_momentum_and_training_continues_identically(tmp_path):
    init, grads = _problem(seed=5)
    grads = [[np.zeros_like(w) if g is None else g for g, w in zip(s, init)] for s in grads]
    schedule = WarmupCosine(peak_lr=1.0, total_steps=10, warmup_steps=2, start_lr=0.1)

    def fresh(values):
        variables = _variables(values, "float32")
        opt = LARC(learning_rate=schedule, weight_decay=0.01, trust_coefficient=0.02)
        opt.build(variables)
        return variables, opt, tf.train.Checkpoint(variables=variables, optimizer=opt)

    variables, opt, ckpt = fresh(init)
    _run(opt, variables, grads[:3])
    path = ckpt.save(str(tmp_path / "ckpt"))
    saved_momentum = [m.numpy() for m in opt.momentums]
    continued = _run(opt, variables, grads[3:])

    other = [np.full_like(w, 7.0) for w in init]
    variables2, opt2, ckpt2 = fresh(other)
    ckpt2.restore(path).assert_consumed()
    assert int(opt2.iterations.numpy()) == 3
    for a, b in zip(saved_momentum, opt2.momentums):
        np.testing.assert_array_equal(b.numpy(), a)
    resumed = _run(opt2, variables2, grads[3:])
    for a, b in zip(continued, resumed):
        np.testing.assert_array_equal(b, a)


def test_loss_scale_optimizer_mixed_float16():
    # Seeded weights and a moderate scale: with the default 2**15 an unlucky init overflows
    # float16 on the first step (then LSO rightly skips it, but the comparison below would not).
    init = lambda seed: keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.layers.Dense(5, activation="tanh", dtype="mixed_float16",
                                 kernel_initializer=init(1)),
              keras.layers.Dense(1, dtype="mixed_float16", kernel_initializer=init(2))]
    model = keras.Sequential([keras.Input((6,))] + layers)
    x, y, _ = _regression_problem()
    variables = model.trainable_variables
    assert all(v.dtype == "float32" for v in variables)
    lso = keras.optimizers.LossScaleOptimizer(
        LARC(learning_rate=0.5, weight_decay=0.01, trust_coefficient=0.02), initial_scale=2.0**10)
    plain = LARC(learning_rate=0.5, weight_decay=0.01, trust_coefficient=0.02)
    shadow = [keras.Variable(v.numpy()) for v in variables]
    lso.build(variables)

    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(model(x), tf.float32) - y))
            scaled = lso.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        scale = float(lso.dynamic_scale.numpy())
        assert scale > 1.0
        plain.apply([g / scale for g in grads], shadow)
        lso.apply(grads, variables)
        for v, s in zip(variables, shadow):
            np.testing.assert_allclose(v.numpy(), s.numpy(), rtol=1e-6, atol=1e-7)
    assert int(lso.inner_optimizer.iterations.numpy()) == 3

    # A non-finite gradient skips the step (weights and momentum untouched) and halves the scale.
    before = [v.numpy() for v in variables] + [m.numpy() for m in lso.inner_optimizer.momentums]
    scale = float(lso.dynamic_scale.numpy())
    lso.apply([tf.fill(v.shape, np.inf) for v in variables], variables)
    after = [v.numpy() for v in variables] + [m.numpy() for m in lso.inner_optimizer.momentums]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert float(lso.dynamic_scale.numpy()) == scale / 2


def test_config_round_trip():
    opt = LARC(learning_rate=WarmupCosine(9.6, 100, 10, 0.3, 0.0096), nesterov=True,
               exclude_from_weight_decay=["bias$"], exclude_vectors_from_adaptation=True)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, LARC)
    assert restored.get_config() == opt.get_config()
    assert restored.get_config()["weight_decay"] == 1e-5
    assert restored.weight_decay is None  # Keras' decoupled decay stays off
    assert float(restored.learning_rate) == pytest.approx(0.3)
