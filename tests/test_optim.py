"""Optimizers beyond the torch comparisons (those live in test_oracle_torch.py): state
round trips (in memory and on disk), in-place updates, SGD (Nesterov included) against
torch.optim.SGD's documented formula computed by hand (no torch needed), schedules, bad
hyper-parameters."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import jimunet as jn
from jimunet.serialization import CheckpointError, load_npz, pack, save_npz, unpack

SHAPES = [(3, 4), (5,), (2, 2, 3)]


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return [jn.Parameter(rng.standard_normal(s), name=f"p{i}") for i, s in enumerate(SHAPES)]


def _grads(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]


def _step(opt, params, grads):
    opt.zero_grad()
    for p, g in zip(params, grads):
        p.grad += g
    opt.step()


OPTIMIZERS = {
    "sgd_momentum": lambda ps: jn.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd_nesterov_wd": lambda ps: jn.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_dampening": lambda ps: jn.optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.3),
    "sgd_plain": lambda ps: jn.optim.SGD(ps, lr=0.1),
    "adam": lambda ps: jn.optim.Adam(ps, lr=0.01),
    "adam_wd_betas": lambda ps: jn.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "sgd_groups": lambda ps: jn.optim.SGD([{"params": ps[:2], "lr": 0.1, "weight_decay": 0.01},
                                           {"params": ps[2:], "momentum": 0.5}], lr=0.02, momentum=0.9),
    "adam_groups": lambda ps: jn.optim.Adam([{"params": ps[:1], "lr": 0.05},
                                             {"params": ps[1:], "betas": (0.5, 0.9), "weight_decay": 0.1}], lr=0.01),
}


def _through_disk(sd, tmp_path):
    arrays = {}
    tree = pack(sd, arrays)
    path = tmp_path / "opt.npz"
    save_npz(path, arrays, {"format": "jimunet-optimizer", "state": tree})
    arrays2, meta = load_npz(path, kind="jimunet-optimizer")
    return unpack(meta["state"], arrays2)


@pytest.mark.parametrize("via_disk", [False, True], ids=["memory", "disk"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_continues_identically(name, via_disk, tmp_path):
    make = OPTIMIZERS[name]
    grads = _grads(10)
    a = _params()
    opt_a = make(a)
    for gs in grads[:5]:
        _step(opt_a, a, gs)
    sd = opt_a.state_dict()
    if via_disk:
        sd = _through_disk(sd, tmp_path)
    # a fresh optimizer on fresh parameters holding the same values (as after a restart)
    b = [jn.Parameter(p.data.copy(), name=p.name) for p in a]
    opt_b = make(b)
    opt_b.load_state_dict(sd)
    for gs in grads[5:]:
        _step(opt_a, a, gs)
        _step(opt_b, b, gs)
        for pa, pb in zip(a, b):
            np.testing.assert_array_equal(pa.data, pb.data)
    # and a fresh optimizer WITHOUT the state diverges (the state mattered), except plain SGD
    c = [jn.Parameter(p.data.copy()) for p in b]
    opt_c = make(c)
    _step(opt_c, c, grads[0])
    _step(opt_b, b, grads[0])
    differs = any(not np.array_equal(pb.data, pc.data) for pb, pc in zip(b, c))
    assert differs == (name != "sgd_plain")


def test_state_dict_restores_hyper_parameters_and_lr():
    ps = _params()
    opt = jn.optim.SGD(ps, lr=0.1, momentum=0.9)
    opt.set_lr(0.0125)
    sd = opt.state_dict()
    other = jn.optim.SGD(_params(), lr=0.5, momentum=0.9)
    other.load_state_dict(sd)
    assert other.lr == 0.0125
    assert other.param_groups[0]["momentum"] == 0.9


def test_adam_state_survives_json_types(tmp_path):
    ps = _params()
    opt = jn.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95))
    _step(opt, ps, _grads(1)[0])
    sd = _through_disk(opt.state_dict(), tmp_path)
    fresh = jn.optim.Adam([jn.Parameter(p.data.copy()) for p in ps], lr=0.01)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["betas"] == (0.8, 0.95)
    steps = [st["step"] for st in fresh.state.values()]
    assert steps == [1, 1, 1] and all(type(s) is int for s in steps)


def test_state_dict_is_a_snapshot():
    ps = _params()
    opt = jn.optim.SGD(ps, lr=0.1, momentum=0.9)
    _step(opt, ps, _grads(1)[0])
    sd = opt.state_dict()
    saved = {i: s["momentum_buffer"].copy() for i, s in sd["state"].items()}
    _step(opt, ps, _grads(1, seed=5)[0])
    for i, s in sd["state"].items():
        np.testing.assert_array_equal(s["momentum_buffer"], saved[i])


def test_loaded_state_is_not_shared_with_the_dict():
    ps = _params()
    opt = jn.optim.SGD(ps, lr=0.1, momentum=0.9)
    _step(opt, ps, _grads(1)[0])
    sd = opt.state_dict()
    snapshot = {i: s["momentum_buffer"].copy() for i, s in sd["state"].items()}
    other_ps = [jn.Parameter(p.data.copy()) for p in ps]
    other = jn.optim.SGD(other_ps, lr=0.1, momentum=0.9)
    other.load_state_dict(sd)
    _step(other, other_ps, _grads(1, seed=6)[0])
    for i, s in sd["state"].items():
        np.testing.assert_array_equal(s["momentum_buffer"], snapshot[i])


def test_load_state_dict_mismatch_raises():
    ps = _params()
    opt = jn.optim.SGD(ps, lr=0.1, momentum=0.9)
    _step(opt, ps, _grads(1)[0])
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="param groups do not match"):
        jn.optim.SGD(ps[:2], lr=0.1, momentum=0.9).load_state_dict(sd)
    with pytest.raises(ValueError, match="param groups do not match"):
        jn.optim.SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1, momentum=0.9).load_state_dict(sd)
    swapped = [jn.Parameter(np.zeros(s)) for s in [(5,), (3, 4), (2, 2, 3)]]
    with pytest.raises(ValueError, match="has shape"):
        jn.optim.SGD(swapped, lr=0.1, momentum=0.9).load_state_dict(sd)
    with pytest.raises(ValueError):
        opt.load_state_dict({"nonsense": 1})


def test_corrupt_optimizer_file_is_a_checkpoint_error(tmp_path):
    ps = _params()
    opt = jn.optim.Adam(ps)
    _step(opt, ps, _grads(1)[0])
    arrays = {}
    tree = pack(opt.state_dict(), arrays)
    path = tmp_path / "opt.npz"
    save_npz(path, arrays, {"format": "jimunet-optimizer", "state": tree})
    arrays2, meta = load_npz(path)
    del arrays2[next(iter(arrays2))]
    with pytest.raises(CheckpointError, match="does not contain"):
        unpack(meta["state"], arrays2)
    with pytest.raises(CheckpointError, match="expected a 'jimunet-model' file"):
        load_npz(path, kind="jimunet-model")


def _adam_state(tmp_path):
    ps = _params()
    opt = jn.optim.Adam(ps, lr=0.01)
    _step(opt, ps, _grads(1)[0])
    return ps, _through_disk(opt.state_dict(), tmp_path)


@pytest.mark.parametrize("edit,expect", [
    (lambda st: st[0].update(step="3"), "'step' must be an integer >= 1, got '3'"),
    (lambda st: st[0].update(step=True), "'step' must be an integer >= 1, got True"),
    (lambda st: st[0].update(step=0), "'step' must be an integer >= 1, got 0"),
    (lambda st: st[0].pop("exp_avg_sq"), "state of parameter 0 must hold exactly ['exp_avg', 'exp_avg_sq', 'step']; "
                                         "missing ['exp_avg_sq']"),
    (lambda st: st[1].update(extra=1), "unexpected ['extra']"),
    (lambda st: st[1].update(exp_avg=[0.0] * 5), "'exp_avg' must be a floating-point array of the parameter's "
                                                 "shape (5,), got a value of type list"),
    (lambda st: st[1].update(exp_avg=np.zeros(5, bool)), "got an array of dtype bool"),
    (lambda st: st[1].update(exp_avg=np.array(["a"] * 5)), "got an array of dtype <U1"),
    (lambda st: st[2].update(exp_avg_sq=np.full((2, 2, 3), np.inf)), "'exp_avg_sq' contains NaN or infinite"),
    (lambda st: st.update({-1: st.pop(2)}), "state key -1 is not the index of one of the 3 parameters"),
    (lambda st: st.update({"x": st.pop(2)}), "state key 'x' is not the index"),
    (lambda st: st.update({0: "nonsense"}), "state of parameter 0 must be a dict, got str"),
])
def test_optimizer_state_of_the_wrong_kind_is_refused_on_load(tmp_path, edit, expect):
    ps, sd = _adam_state(tmp_path)
    sd["state"] = {int(k): v for k, v in sd["state"].items()}
    edit(sd["state"])
    fresh = jn.optim.Adam([jn.Parameter(p.data.copy()) for p in ps], lr=0.5)
    with pytest.raises(ValueError) as info:
        fresh.load_state_dict(sd)
    assert expect in str(info.value)
    assert fresh.state == {} and fresh.lr == 0.5  # nothing was half-loaded
    with pytest.raises(ValueError, match="'state' must be a dict"):
        fresh.load_state_dict({"param_groups": sd["param_groups"]})


def test_sgd_momentum_buffer_must_be_an_array():
    ps = _params()
    opt = jn.optim.SGD(ps, lr=0.1, momentum=0.9)
    _step(opt, ps, _grads(1)[0])
    sd = opt.state_dict()
    sd["state"][1]["momentum_buffer"] = None  # would silently restart the momentum
    with pytest.raises(ValueError, match="'momentum_buffer' must be a floating-point array of the parameter's "
                                         r"shape \(5,\), got a value of type NoneType"):
        jn.optim.SGD(_params(), lr=0.1, momentum=0.9).load_state_dict(sd)


# --------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_updates_are_in_place(name):
    """A model's Parameter objects and their arrays stay the ones the optimizer updates."""
    ps = _params()
    arrays = [p.data for p in ps]
    before = [a.copy() for a in arrays]
    opt = OPTIMIZERS[name](ps)
    for gs in _grads(3):
        _step(opt, ps, gs)
    for p, a, b in zip(ps, arrays, before):
        assert p.data is a
        assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_does_not_touch_gradients(name):
    ps = _params()
    opt = OPTIMIZERS[name](ps)
    gs = _grads(1)[0]
    for p, g in zip(ps, gs):
        p.grad += g
    opt.step()
    for p, g in zip(ps, gs):
        np.testing.assert_array_equal(p.grad, g)
    opt.zero_grad()
    assert all(not p.grad.any() for p in ps)


def test_first_steps_by_hand():
    p = jn.Parameter(np.array([1.0, -2.0]))
    opt = jn.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    p.grad[:] = [1.0, 1.0]
    opt.step()  # d = g + 0.5 p = [1.5, 0]; buf = d; p -= 0.1 d
    np.testing.assert_allclose(p.data, [0.85, -2.0])
    opt.step()  # d = [1 + .425, 0]; buf = .9*[1.5, 0] + d
    np.testing.assert_allclose(p.data, [0.85 - 0.1 * (0.9 * 1.5 + 1.425), -2.0])

    q = jn.Parameter(np.array([0.0, 1.0]))
    adam = jn.optim.Adam([q], lr=0.1)
    q.grad[:] = [3.0, -0.5]
    adam.step()  # first Adam step moves each coordinate by ~lr against the gradient sign
    np.testing.assert_allclose(q.data, [-0.1, 1.1], rtol=1e-6)


def _torch_sgd_by_hand(p0, grads, lrs, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """The parameters after each step of ``torch.optim.SGD``'s documented algorithm, in float64:
    g ← g + wd·p;  b ← g (first step) | μ·b + (1-τ)·g;  g ← g + μ·b (Nesterov) | b;  p ← p - lr·g."""
    p, b, out = np.array(p0, np.float64), None, []
    for grad, lr in zip(grads, lrs):
        g = np.asarray(grad, np.float64) + weight_decay * p
        if momentum:
            b = g.copy() if b is None else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p - lr * g
        out.append(p.copy())
    return out


def test_nesterov_first_steps_by_hand():
    p = jn.Parameter(np.array([1.0, -2.0]))
    opt = jn.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5, nesterov=True)
    p.grad[:] = [1.0, 1.0]
    opt.step()  # d = g + .5p = [1.5, 0]; b = d; d + .9b = [2.85, 0]; p -= .1·that
    np.testing.assert_allclose(p.data, [0.715, -2.0], rtol=1e-15)
    opt.step()  # d = [1 + .3575, 0]; b = .9·1.5 + 1.3575 = 2.7075; d + .9b = 3.79425
    np.testing.assert_allclose(p.data, [0.335575, -2.0], rtol=1e-14)
    assert opt.state_dict()["state"][0]["momentum_buffer"].tolist() == pytest.approx([2.7075, 0.0], rel=1e-15)


@pytest.mark.parametrize("hyper", [
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(momentum=0.5, nesterov=True, weight_decay=0.2),
    dict(momentum=0.9, weight_decay=0.01),
    dict(momentum=0.5, dampening=0.3, weight_decay=0.05),
    dict(weight_decay=0.1),
], ids=lambda h: "-".join(f"{k}{v}" for k, v in h.items()))
def test_sgd_follows_torchs_formula_over_several_steps(hyper):
    # Without torch: torch.optim.SGD's documented update, step by step, with gradients that
    # change every step and a learning rate that changes mid-run (as a schedule does).
    params, steps = _params(3), 8
    start = [p.data.copy() for p in params]
    grads = _grads(steps, seed=4)
    lrs = [0.05] * 3 + [0.02] * 3 + [0.1] * 2
    opt = jn.optim.SGD(params, lr=lrs[0], **hyper)
    got = [[] for _ in params]
    for grad, lr in zip(grads, lrs):
        opt.set_lr(lr)
        _step(opt, params, grad)
        for i, p in enumerate(params):
            got[i].append(p.data.copy())
    for i in range(len(params)):
        want = _torch_sgd_by_hand(start[i], [g[i] for g in grads], lrs, **hyper)
        for step, (a, b) in enumerate(zip(got[i], want)):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, err_msg=f"parameter {i}, step {step + 1}")
        if hyper.get("nesterov"):  # these steps tell Nesterov from plain momentum
            plain = _torch_sgd_by_hand(start[i], [g[i] for g in grads], lrs, **{**hyper, "nesterov": False})
            assert not np.allclose(plain[-1], want[-1], rtol=1e-6)


def test_float32_parameters_stay_float32():
    for make in (lambda ps: jn.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
                 lambda ps: jn.optim.Adam(ps, weight_decay=0.1)):
        p = jn.Parameter(np.ones((3, 3), np.float32))
        opt = make([p])
        p.grad[...] = 0.5
        opt.step()
        opt.step()
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
        for st in opt.state.values():
            for v in st.values():
                if hasattr(v, "dtype"):
                    assert v.dtype == np.float32


def test_set_lr_and_lr_property():
    ps = _params()
    opt = jn.optim.SGD([{"params": ps[:1], "lr": 0.5}, {"params": ps[1:]}], lr=0.1)
    assert opt.lr == 0.5
    opt.set_lr(0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]


def test_lr_zero_changes_nothing():
    ps = _params()
    before = [p.data.copy() for p in ps]
    opt = jn.optim.Adam(ps, lr=0.0)
    _step(opt, ps, _grads(1)[0])
    for p, b in zip(ps, before):
        np.testing.assert_array_equal(p.data, b)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("step,expected", [(0, 0.01), (1, 0.01), (937, 0.01), (938, 0.0095), (1875, 0.0095),
                                           (1876, 0.01 * 0.95 ** 2), (9380, 0.01 * 0.95 ** 10)])
def test_exponential_decay_staircase(step, expected):
    # The TF MNIST sample: base 0.01, decay once per epoch (60000/64 = 937.5 -> 938 steps), rate 0.95.
    sched = jn.optim.exponential_decay(0.01, 938, 0.95, staircase=True)
    assert sched(step) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("step", [0, 1, 10, 469, 938, 1000, 5000])
def test_exponential_decay_smooth(step):
    sched = jn.optim.exponential_decay(0.01, 938, 0.95, staircase=False)
    assert sched(step) == pytest.approx(0.01 * 0.95 ** (step / 938), rel=1e-12)


def test_exponential_decay_smooth_is_strictly_decreasing_and_staircase_is_flat():
    smooth = jn.optim.exponential_decay(1.0, 10, 0.5, staircase=False)
    stair = jn.optim.exponential_decay(1.0, 10, 0.5, staircase=True)
    values = [smooth(s) for s in range(40)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert {stair(s) for s in range(10)} == {1.0}
    assert stair(10) == 0.5 and stair(25) == 0.25
    assert smooth(10) == pytest.approx(0.5) and smooth(5) == pytest.approx(2 ** -0.5)


def test_step_decay_and_constant():
    sd = jn.optim.step_decay(0.1, 3, gamma=0.1)
    assert [sd(s) for s in (0, 2, 3, 6)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    c = jn.optim.constant_lr(0.3)
    assert c(0) == c(10 ** 6) == 0.3


def test_cosine_decay():
    sched = jn.optim.cosine_decay(0.1, 100)
    assert sched(0) == pytest.approx(0.1)
    assert sched(50) == pytest.approx(0.05)
    assert sched(25) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert sched(100) == pytest.approx(0.0, abs=1e-15)
    assert sched(1000) == pytest.approx(0.0, abs=1e-15)
    with_final = jn.optim.cosine_decay(0.1, 10, final=0.01)
    assert with_final(0) == pytest.approx(0.1) and with_final(10) == pytest.approx(0.01)
    assert with_final(5) == pytest.approx(0.055) and with_final(50) == pytest.approx(0.01)
    values = [sched(s) for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_schedules_describe_themselves():
    s = jn.optim.exponential_decay(0.01, 938, 0.95)
    assert s.config == {"name": "exponential_decay", "base": 0.01, "decay_steps": 938, "rate": 0.95,
                        "staircase": True}
    assert jn.optim.cosine_decay(0.1, 5).config["name"] == "cosine_decay"


# --------------------------------------------------------------------------- bad hyper-parameters


def _p():
    return [jn.Parameter(np.zeros(3))]


@pytest.mark.parametrize("fn,match", [
    (lambda: jn.optim.SGD(_p(), lr=-0.1), "learning rate"),
    (lambda: jn.optim.SGD(_p(), lr=float("nan")), "learning rate"),
    (lambda: jn.optim.SGD(_p(), lr=0.1, momentum=-0.5), "momentum"),
    (lambda: jn.optim.SGD(_p(), lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (lambda: jn.optim.SGD(_p(), lr=0.1, nesterov=True), "nesterov"),
    (lambda: jn.optim.SGD(_p(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (lambda: jn.optim.SGD([], lr=0.1), "empty"),
    (lambda: jn.optim.SGD([np.zeros(3)], lr=0.1), "Parameter"),
    (lambda: jn.optim.SGD([{"params": _p(), "mometum": 0.9}], lr=0.1), "unknown hyper-parameters"),
    (lambda: jn.optim.SGD([{"lr": 0.1}], lr=0.1), "'params'"),
    (lambda: jn.optim.SGD([{"params": _p(), "lr": -1.0}], lr=0.1), "learning rate"),
    (lambda: jn.optim.Adam(_p(), lr=-1e-3), "learning rate"),
    (lambda: jn.optim.Adam(_p(), betas=(1.0, 0.999)), "betas"),
    (lambda: jn.optim.Adam(_p(), betas=(0.9, -0.1)), "betas"),
    (lambda: jn.optim.Adam(_p(), eps=-1e-8), "eps"),
    (lambda: jn.optim.Adam(_p(), weight_decay=-0.1), "weight_decay"),
    (lambda: jn.optim.Adam([{"params": _p(), "weight_decay": -1.0}]), "weight_decay"),
    (lambda: jn.optim.exponential_decay(0.1, 0, 0.9), "decay_steps"),
    (lambda: jn.optim.cosine_decay(0.1, 0), "total_steps"),
])
def test_bad_hyper_parameters_raise(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_parameter_in_two_groups_raises():
    p = _p()
    with pytest.raises(ValueError, match="more than one group"):
        jn.optim.SGD([{"params": p}, {"params": p}], lr=0.1)


# --------------------------------------------------------------------------- hyper-parameters
# NaN and infinity are refused everywhere (one step would spread them into every weight);
# ranges follow torch.optim where it is sane (lr = 0 allowed, negative values refused).

_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize("make,names", [
    (lambda p: jn.optim.SGD(p, lr=0.1, momentum=_NAN), ["momentum", "[0, inf)", "nan"]),
    (lambda p: jn.optim.SGD(p, lr=_INF), ["lr (the learning rate)", "[0, inf)", "inf"]),
    (lambda p: jn.optim.SGD(p, lr=_NAN), ["lr (the learning rate)", "nan"]),
    (lambda p: jn.optim.SGD(p, lr=0.1, weight_decay=_NAN), ["weight_decay", "nan"]),
    (lambda p: jn.optim.SGD(p, lr=0.1, momentum=-0.5), ["momentum", "-0.5"]),
    (lambda p: jn.optim.SGD(p, lr=0.1, momentum=0.9, dampening=1.5), ["dampening", "[0, 1]", "1.5"]),
    (lambda p: jn.optim.SGD(p, lr=0.1, momentum=0.9, dampening=-0.1), ["dampening", "[0, 1]"]),
    (lambda p: jn.optim.SGD(p, lr=0.1, nesterov="yes"), ["nesterov", "True or False"]),
    (lambda p: jn.optim.SGD(p, lr="0.1"), ["lr (the learning rate)", "'0.1'"]),
    (lambda p: jn.optim.SGD(p, lr=True), ["lr (the learning rate)", "True"]),
    (lambda p: jn.optim.Adam(p, eps=0), ["eps", "(0, inf)", "got 0"]),
    (lambda p: jn.optim.Adam(p, eps=_NAN), ["eps", "nan"]),
    (lambda p: jn.optim.Adam(p, lr=_INF), ["lr (the learning rate)", "inf"]),
    (lambda p: jn.optim.Adam(p, weight_decay=_NAN), ["weight_decay", "nan"]),
    (lambda p: jn.optim.Adam(p, betas=(_NAN, 0.999)), ["betas[0]", "[0, 1)"]),
    (lambda p: jn.optim.Adam(p, betas=(0.9, 1.0)), ["betas[1]", "[0, 1)", "1.0"]),
    (lambda p: jn.optim.Adam(p, betas=0.9), ["betas must be a pair"]),
    (lambda p: jn.optim.SGD([{"params": p, "lr": _NAN}], lr=0.1), ["lr (the learning rate)", "nan"]),
    (lambda p: jn.optim.SGD([{"params": p[:1]}, {"params": p[1:], "momentum": _INF}], lr=0.1),
     ["param group 1", "momentum", "inf"]),
    (lambda p: jn.optim.Adam([{"params": p, "eps": -1.0}]), ["eps", "-1.0"]),
])
def test_bad_hyper_parameters_name_the_parameter_and_its_range(make, names):
    params = [jn.Parameter(np.ones(3)), jn.Parameter(np.ones(2))]
    with pytest.raises(ValueError) as info:
        make(params)
    for name in names:
        assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("make", [
    lambda p: jn.optim.SGD(p, lr=0.0),  # torch allows lr = 0 (a frozen phase of a schedule)
    lambda p: jn.optim.SGD(p, lr=0.1, momentum=0.9, dampening=1.0, weight_decay=0.0),
    lambda p: jn.optim.SGD(p, lr=np.float32(0.1), momentum=np.float64(0.9), nesterov=True),
    lambda p: jn.optim.Adam(p, lr=0, betas=[0.0, 0.0], eps=1e-12),
])
def test_edge_values_torch_accepts_are_accepted(make):
    p = jn.Parameter(np.ones(3))
    p.grad[:] = 1.0
    make([p]).step()
    assert np.isfinite(p.data).all()


@pytest.mark.parametrize("bad", [_NAN, _INF, -0.1, "0.1", None])
def test_set_lr_refuses_bad_rates_and_keeps_the_old_one(bad):
    opt = jn.optim.SGD([jn.Parameter(np.ones(2))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"set_lr: lr \(the learning rate\) must be a finite number in \[0, inf\)"):
        opt.set_lr(bad)
    assert opt.lr == 0.1
    opt.set_lr(0)
    assert opt.lr == 0.0


@pytest.mark.parametrize("key,value", [("lr", _NAN), ("momentum", -1.0), ("weight_decay", _INF),
                                       ("dampening", 2.0)])
def test_load_state_dict_checks_saved_hyper_parameters_before_changing_anything(key, value):
    p = jn.Parameter(np.ones(2))
    opt = jn.optim.SGD([p], lr=0.1, momentum=0.9)
    sd = opt.state_dict()
    sd["param_groups"][0][key] = value
    with pytest.raises(ValueError, match=f"load_state_dict \\(param group 0\\): {key}"):
        opt.load_state_dict(sd)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]) == (0.1, 0.9)


def test_adam_load_state_dict_checks_betas_and_eps():
    opt = jn.optim.Adam([jn.Parameter(np.ones(2))])
    for key, value, name in [("betas", [0.9, 1.5], "betas[1]"), ("eps", 0.0, "eps"), ("betas", "x", "betas")]:
        sd = opt.state_dict()
        sd["param_groups"][0][key] = value
        with pytest.raises(ValueError, match=r"Adam\.load_state_dict .*" + re.escape(name)):
            opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["param_groups"][0]["betas"] = [0.5, 0.75]  # what JSON makes of the tuple
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["betas"] == (0.5, 0.75)


def test_sgd_updates_a_weight_stored_in_fortran_order_as_one_in_c_order():
    """reshape(-1) of a Fortran-order array is a copy: an update of it would be lost silently."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3))
    c, f = jn.Parameter(w.copy()), jn.Parameter(np.asfortranarray(w))
    for p in (c, f):
        p.grad[...] = np.arange(12.0).reshape(4, 3)
        opt = jn.optim.SGD([p], lr=0.1, momentum=0.9)
        opt.step()
        opt.step()
    assert f.data.flags.f_contiguous
    np.testing.assert_array_equal(f.data, c.data)
    assert not np.array_equal(c.data, w)


def test_sgd_refuses_a_weight_whose_gradient_is_laid_out_otherwise():
    p = jn.Parameter(np.zeros((4, 3)))
    p.data = np.asfortranarray(p.data)  # grad stays in C order: the flat views would not line up
    p.grad[...] = 1.0
    with pytest.raises(ValueError, match="not stored contiguously"):
        jn.optim.SGD([p], lr=0.1).step()


def test_a_loaded_weight_is_in_c_order(tmp_path):
    model = jn.Sequential([jn.layers.Dense(4, 3, rng=0)])
    model.layers[0].weight.data = np.asfortranarray(model.layers[0].weight.data)
    model.save(tmp_path / "m.npz")
    assert jn.load(tmp_path / "m.npz").layers[0].weight.data.flags.c_contiguous


def test_piecewise_linear():
    s = jn.optim.piecewise_linear([0, 10, 40], [0.0, 0.4, 0.0])
    assert [s(t) for t in (0, 5, 10, 40, 1000)] == [0.0, 0.2, 0.4, 0.0, 0.0]
    assert s(25) == pytest.approx(0.2, abs=1e-15)
    assert s.config == {"name": "piecewise_linear", "steps": [0, 10, 40], "values": [0.0, 0.4, 0.0]}
    assert jn.optim.piecewise_linear([5], [0.1])(0) == 0.1


@pytest.mark.parametrize("steps,values,match", [([0, 0], [1, 1], "steps must increase"),
                                                ([0, 1], [1], "equal length"), ([], [], "non-empty"),
                                                ([0, 1], [0.1, float("nan")], "finite and >= 0")])
def test_piecewise_linear_rejects(steps, values, match):
    with pytest.raises(ValueError, match=match):
        jn.optim.piecewise_linear(steps, values)
