"""PyTorch as the oracle: forward values and every gradient of every layer, the loss and the
optimizers, on many seeded random configurations.

Everything is compared in float64 with ``max|a - b| / max(max|b|, tiny) <= TOL64 = 1e-12``
(plus a float32 family for conv and pooling at ``TOL32 = 1e-4``, and ``TOL32_WINOGRAD = 5e-5``,
the documented bound, for Winograd convolutions in float32), so a float64 result that went
through float32 anywhere (error ~1e-7) fails. The worst error seen per family is kept in
``WORST`` and printed at the end of the module (``pytest -s`` shows it).
"""
from __future__ import annotations

import numpy as np
import pytest

import torch  # the "test" extra pins it; a missing oracle must fail loudly, not skip
import torch.nn.functional as F

import jimunet as jn

# Why 1e-12 in float64: every compared value is a sum of at most K = 3,136 rounded products
# (Dense 3136 -> 8 here; conv sums at most 5*5*4 = 100 products forward and 2*28*28 = 1,568
# rows for dW; the optimizers add 10 steps of elementwise updates). The classic bound on the
# rounding error of a K-term sum is K*u*sum|terms| with u = 2^-53 = 1.1e-16, i.e. 3.5e-13 of
# the terms' magnitude at K = 3,136; random-sign terms round like a random walk, ~sqrt(K)*u =
# 6e-15 (measured worst over this module: 6e-15). 1e-12 sits above the worst-case bound and
# 5 orders of magnitude below float32's unit roundoff (6e-8): one float32 step anywhere in a
# float64 computation gives errors ~1e-7 and fails.
TOL64 = 1e-12
# float32: the same sums with u = 2^-24 = 6e-8 (measured worst: 8e-7 on conv dW).
TOL32 = 1e-4
# float32 Winograd: the bound the README and Conv2D's docstring state (the transforms amplify
# rounding; measured worst: 8e-6).
TOL32_WINOGRAD = 5e-5
TINY = 1e-30

#: worst relative error seen per test family (quoted in the closing note)
WORST: dict[str, float] = {}


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != oracle shape {b.shape}"
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), TINY))


def check(family: str, ours, oracle, what: str, tol: float = TOL64) -> float:
    """Assert ``ours`` matches the torch ``oracle`` within ``tol`` relative; track the worst error."""
    if isinstance(oracle, torch.Tensor):
        oracle = oracle.detach().cpu().numpy()
    ours = jn.backend.to_numpy(ours)
    assert np.all(np.isfinite(ours)), f"{family} {what}: non-finite values"
    e = rel_err(ours, oracle)
    WORST[family] = max(WORST.get(family, 0.0), e)
    assert e <= tol, f"{family} {what}: relative error {e:.3g} > {tol:g}"
    return e


@pytest.fixture(scope="module", autouse=True)
def _report_worst_errors():
    yield
    print("\nworst oracle relative error per family (vs torch):")
    for fam in sorted(WORST):
        print(f"  {fam:<12s} {WORST[fam]:.3e}")


def t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def tf_same_pads(n: int, k: int, s: int):
    """TensorFlow's SAME rule, written out independently of the library."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def resolve_pads(h, w, k, s, padding):
    """``((top, bottom), (left, right))`` for the torch side."""
    if padding == "same":
        return tf_same_pads(h, k[0], s[0]), tf_same_pads(w, k[1], s[1])
    if padding == "valid":
        return (0, 0), (0, 0)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, ph), (pw, pw)


def nhwc_to_nchw(x):
    return x.permute(0, 3, 1, 2)


def nchw_to_nhwc(x):
    return x.permute(0, 2, 3, 1)


def test_same_padding_rule_examples():
    # Hand-computed TensorFlow values: (n, k, s) -> (before, after), out = ceil(n/s).
    cases = {(28, 5, 1): (2, 2), (28, 2, 2): (0, 0), (5, 2, 2): (0, 1), (4, 2, 1): (0, 1),
             (7, 3, 2): (1, 1), (6, 3, 2): (0, 1), (3, 5, 1): (2, 2), (5, 1, 3): (0, 0), (14, 4, 3): (1, 1), (10, 4, 3): (1, 2)}
    for (n, k, s), pads in cases.items():
        assert jn.functional.pad_amounts((n, n), (k, k), (s, s), "same")[0] == pads, (n, k, s)
        assert tf_same_pads(n, k, s) == pads
        assert jn.functional.conv_output_size((n, n), (k, k), (s, s), "same")[0] == -(-n // s)


# --------------------------------------------------------------------------- conv


def _conv_configs(count=44, seed=20240601):
    rng = np.random.default_rng(seed)
    cfgs = []
    kinds = ["same", "valid", "int", "pair"]
    for i in range(count):
        kh = int(rng.integers(1, 6))
        kw = kh if rng.random() < 0.6 else int(rng.integers(1, 6))
        sh = int(rng.integers(1, 4))
        sw = sh if rng.random() < 0.6 else int(rng.integers(1, 4))
        kind = kinds[i % 4]
        if kind in ("same", "valid"):
            padding = kind
            ph = pw = 0
        elif kind == "int":
            padding = ph = pw = int(rng.integers(0, 3))
        else:
            ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 3))
            padding = (ph, pw)
        lo_h = 1 if kind == "same" else max(1, kh - 2 * ph)
        lo_w = 1 if kind == "same" else max(1, kw - 2 * pw)
        h, w = int(rng.integers(lo_h, 10)), int(rng.integers(lo_w, 10))
        cfgs.append(dict(n=int(rng.integers(1, 4)), h=h, w=w, cin=int(rng.integers(1, 5)),
                         cout=int(rng.integers(1, 5)), k=(kh, kw), s=(sh, sw), padding=padding,
                         bias=bool(rng.random() < 0.85), seed=1000 + i))
    # Hand-picked edges: MNIST-like, even kernels under SAME (asymmetric pads), kernel larger
    # than the input under SAME, stride larger than the kernel, 1x1.
    extra = [dict(n=2, h=28, w=28, cin=1, cout=3, k=(5, 5), s=(1, 1), padding="same"),
             dict(n=2, h=8, w=7, cin=2, cout=3, k=(2, 2), s=(1, 1), padding="same"),
             dict(n=1, h=9, w=6, cin=3, cout=2, k=(4, 2), s=(2, 3), padding="same"),
             dict(n=2, h=3, w=2, cin=2, cout=2, k=(5, 5), s=(1, 1), padding="same"),
             dict(n=2, h=10, w=11, cin=2, cout=2, k=(2, 2), s=(3, 3), padding="valid"),
             dict(n=3, h=5, w=4, cin=4, cout=5, k=(1, 1), s=(1, 1), padding="valid"),
             dict(n=2, h=7, w=7, cin=2, cout=3, k=(3, 3), s=(2, 2), padding=1),
             dict(n=1, h=6, w=5, cin=1, cout=2, k=(1, 3), s=(1, 2), padding=(2, 0))]
    for j, c in enumerate(extra):
        cfgs.append({**c, "bias": True, "seed": 5000 + j})
    return cfgs


CONV_CFGS = _conv_configs()


def _cfg_id(c):
    return (f"n{c['n']}-{c['h']}x{c['w']}x{c['cin']}-o{c.get('cout', '')}-k{c['k'][0]}x{c['k'][1]}-"
            f"s{c['s'][0]}x{c['s'][1]}-p{c['padding']}".replace(" ", ""))


def torch_conv(x, w, b, stride, padding, g, dtype):
    """Torch forward + backward of a NHWC/HWIO conv. SAME is emulated by F.pad then padding=0;
    explicit padding goes through conv2d's own ``padding`` (a second path)."""
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if b is not None else None
    xn = nhwc_to_nchw(xt)
    if padding == "same":
        (pt, pb), (pl, pr) = resolve_pads(x.shape[1], x.shape[2], w.shape[:2], stride, padding)
        xn = F.pad(xn, (pl, pr, pt, pb))
        pad = 0
    elif padding == "valid":
        pad = 0
    else:
        pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
    y = nchw_to_nhwc(F.conv2d(xn, wt.permute(3, 2, 0, 1).contiguous(), bt, stride=stride, padding=pad))
    y.backward(torch.tensor(g, dtype=dtype))
    return y, xt.grad, wt.grad, (bt.grad if bt is not None else None)


def _run_conv(c, dtype, family, tol, algorithm="auto"):
    rng = np.random.default_rng(c["seed"])
    layer = jn.layers.Conv2D(c["cin"], c["cout"], c["k"], stride=c["s"], padding=c["padding"],
                             use_bias=c["bias"], rng=rng, dtype=dtype, algorithm=algorithm)
    if c["bias"]:
        layer.bias.data[...] = rng.standard_normal(c["cout"]).astype(dtype)  # non-zero bias
    x = rng.standard_normal((c["n"], c["h"], c["w"], c["cin"])).astype(dtype)
    y = layer.forward(x, training=True)
    if c["padding"] == "same":
        assert y.shape[1:3] == (-(-c["h"] // c["s"][0]), -(-c["w"] // c["s"][1]))
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    assert y.dtype == dtype and dx.dtype == dtype
    assert all(p.grad.dtype == dtype and p.data.dtype == dtype for p in layer.parameters())
    b = layer.bias.data if c["bias"] else None
    yt, dxt, dwt, dbt = torch_conv(x, layer.weight.data, b, c["s"], c["padding"], g,
                                   torch.float64 if dtype == np.float64 else torch.float32)
    check(family, y, yt, "forward", tol)
    check(family, dx, dxt, "dx", tol)
    check(family, layer.weight.grad, dwt, "dW", tol)
    if c["bias"]:
        check(family, layer.bias.grad, dbt, "db", tol)
    return layer


@pytest.mark.parametrize("c", CONV_CFGS, ids=_cfg_id)
def test_conv2d_matches_torch_float64(c):
    _run_conv(c, np.float64, "conv", TOL64)


@pytest.mark.parametrize("c", CONV_CFGS[::4] + CONV_CFGS[-8:], ids=_cfg_id)
def test_conv2d_matches_torch_float32(c):
    _run_conv(c, np.float32, "conv_f32", TOL32)


# Winograd: forced on every stride-1 config with a kernel of 2 or more taps per axis, and
# configs with enough input channels that ``auto`` picks it by itself.
WINOGRAD_CFGS = [c for c in CONV_CFGS if c["s"] == (1, 1) and min(c["k"]) >= 2] + [
    dict(n=2, h=7, w=6, cin=3, cout=2, k=(3, 3), s=(1, 1), padding="same", bias=True, seed=6000),
    dict(n=1, h=5, w=9, cin=2, cout=4, k=(3, 2), s=(1, 1), padding=1, bias=True, seed=6001),
    dict(n=3, h=4, w=4, cin=1, cout=3, k=(3, 3), s=(1, 1), padding="valid", bias=False, seed=6002)]
AUTO_WINOGRAD_CFGS = [
    dict(n=2, h=9, w=7, cin=8, cout=8, k=(3, 3), s=(1, 1), padding="same", bias=True, seed=7000),
    dict(n=1, h=14, w=14, cin=32, cout=16, k=(5, 5), s=(1, 1), padding="same", bias=True, seed=7001),
    dict(n=3, h=6, w=8, cin=12, cout=9, k=(3, 5), s=(1, 1), padding=(1, 2), bias=False, seed=7002),
    dict(n=2, h=8, w=9, cin=9, cout=10, k=(4, 4), s=(1, 1), padding="same", bias=True, seed=7003),
    dict(n=2, h=10, w=10, cin=16, cout=8, k=(3, 3), s=(1, 1), padding="valid", bias=True, seed=7004),
]


@pytest.mark.parametrize("c", WINOGRAD_CFGS, ids=_cfg_id)
def test_conv2d_winograd_matches_torch_float64(c):
    layer = _run_conv(c, np.float64, "conv_winograd", TOL64, algorithm="winograd")
    assert layer.last_algorithm[0] == "winograd"


@pytest.mark.parametrize("c", WINOGRAD_CFGS[::3], ids=_cfg_id)
def test_conv2d_winograd_matches_torch_float32(c):
    _run_conv(c, np.float32, "conv_winograd_f32", TOL32_WINOGRAD, algorithm="winograd")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c", AUTO_WINOGRAD_CFGS, ids=_cfg_id)
def test_conv2d_auto_matches_torch_where_it_picks_winograd(c, dtype):
    layer = _run_conv(c, dtype, "conv_auto" + ("_f32" if dtype == np.float32 else ""),
                      TOL64 if dtype == np.float64 else TOL32_WINOGRAD)
    assert layer.algorithm == "auto" and layer.last_algorithm[0] == "winograd"


# Batches of several blocks (``parallel.batch_blocks`` cuts a batch into 8) and, for
# Winograd, blocks of several chunks: dW and db are summed per block (per chunk within a
# block), then across blocks, so a sum over the wrong samples, or a dropped chunk, shows only
# here (the configs above have batches of 1 to 3).
BLOCK_CFGS = [
    dict(n=64, h=9, w=7, cin=8, cout=8, k=(3, 3), s=(1, 1), padding="same", bias=True, seed=8000),  # 1 chunk
    dict(n=64, h=6, w=5, cin=3, cout=4, k=(3, 3), s=(2, 2), padding=1, bias=True, seed=8001),
    # MNIST's conv2 at the recipe's batch: float64 Winograd has 8 one-image chunks per block
    dict(n=64, h=14, w=14, cin=32, cout=64, k=(5, 5), s=(1, 1), padding="same", bias=True, seed=8002),
    dict(n=24, h=14, w=14, cin=80, cout=80, k=(3, 3), s=(1, 1), padding="same", bias=True, seed=8003),
]
BLOCK_RUNS = [(c, a) for c in BLOCK_CFGS for a in ("im2col", "winograd") if a == "im2col" or c["s"] == (1, 1)]


@pytest.mark.parametrize("c,algorithm", BLOCK_RUNS, ids=[f"{_cfg_id(c)}-{a}" for c, a in BLOCK_RUNS])
def test_conv2d_matches_torch_on_batches_of_several_blocks(c, algorithm):
    layer = _run_conv(c, np.float64, "conv_blocks", TOL64, algorithm=algorithm)  # db included
    assert layer.last_algorithm[0] == algorithm
    if algorithm == "winograd":
        plan = layer.cache.plan
        chunks_per_block = [len(plan["chunks"][b]) for b in plan["blocks"]]
        assert len(chunks_per_block) == 8
        assert min(chunks_per_block) == 1 if c["cin"] == 8 else min(chunks_per_block) > 1, chunks_per_block


def test_conv2d_winograd_float32_matches_torch_on_mnist_conv2_at_batch_64():
    layer = _run_conv(BLOCK_CFGS[2], np.float32, "conv_winograd_f32", TOL32_WINOGRAD)  # auto picks it
    assert layer.last_algorithm == ("winograd", (4, 4))


def test_conv_config_coverage():
    """The generated configs really cover what the issue asks for."""
    ks = {k for c in CONV_CFGS for k in c["k"]}
    ss = {s for c in CONV_CFGS for s in c["s"]}
    assert ks == {1, 2, 3, 4, 5} and ss == {1, 2, 3}
    assert {k for c in WINOGRAD_CFGS for k in c["k"]} == {2, 3, 4, 5} and len(WINOGRAD_CFGS) >= 10
    assert any(c["k"][0] != c["k"][1] for c in CONV_CFGS)
    assert any(c["s"][0] != c["s"][1] for c in CONV_CFGS)
    assert {c["h"] % 2 for c in CONV_CFGS} == {0, 1}
    kinds = {c["padding"] if isinstance(c["padding"], str) else type(c["padding"]).__name__ for c in CONV_CFGS}
    assert kinds == {"same", "valid", "int", "tuple"}
    assert len(CONV_CFGS) >= 40


# --------------------------------------------------------------------------- pooling


def _pool_configs(count=32, seed=777):
    rng = np.random.default_rng(seed)
    cfgs = []
    kinds = ["same", "valid", "int", "pair"]
    for i in range(count):
        kh = int(rng.integers(1, 5))
        kw = kh if rng.random() < 0.6 else int(rng.integers(1, 5))
        r = rng.random()
        if r < 0.25:
            stride = None  # defaults to the window
            s = (kh, kw)
        else:
            sh = int(rng.integers(1, 4))
            sw = sh if rng.random() < 0.6 else int(rng.integers(1, 4))
            s = stride = (sh, sw)
        kind = kinds[i % 4]
        if kind in ("same", "valid"):
            padding, ph, pw = kind, 0, 0
        elif kind == "int":
            padding = ph = pw = int(rng.integers(0, min(kh, kw) // 2 + 1))
        else:
            ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
            padding = (ph, pw)
        lo_h = 1 if kind == "same" else max(1, kh - 2 * ph)
        lo_w = 1 if kind == "same" else max(1, kw - 2 * pw)
        cfgs.append(dict(n=int(rng.integers(1, 4)), h=int(rng.integers(lo_h, 10)), w=int(rng.integers(lo_w, 10)),
                         cin=int(rng.integers(1, 4)), k=(kh, kw), stride=stride, s=s, padding=padding,
                         cip=bool(rng.random() < 0.5), seed=2000 + i))
    extra = [dict(n=2, h=28, w=28, cin=2, k=(2, 2), stride=(2, 2), s=(2, 2), padding="same"),
             dict(n=2, h=7, w=7, cin=2, k=(2, 2), stride=(2, 2), s=(2, 2), padding="same"),
             dict(n=1, h=8, w=9, cin=3, k=(3, 3), stride=(1, 1), s=(1, 1), padding="same"),
             dict(n=2, h=9, w=9, cin=1, k=(3, 3), stride=(2, 2), s=(2, 2), padding="valid"),
             dict(n=1, h=6, w=7, cin=2, k=(4, 4), stride=(3, 3), s=(3, 3), padding=2)]
    for j, c in enumerate(extra):
        cfgs.append({**c, "cip": j % 2 == 0, "seed": 6000 + j})
    return cfgs


POOL_CFGS = _pool_configs()


def make_pool(kind, c):
    if kind == "max":
        return jn.layers.MaxPool2D(c["k"], stride=c["stride"], padding=c["padding"])
    return jn.layers.AvgPool2D(c["k"], stride=c["stride"], padding=c["padding"], count_include_pad=c["cip"])


def torch_pool(kind, x, c, g, dtype):
    xt = t(x, True)
    xn = nhwc_to_nchw(xt)
    k, s, padding = c["k"], c["s"], c["padding"]
    if padding == "same":
        (pt, pb), (pl, pr) = resolve_pads(x.shape[1], x.shape[2], k, s, padding)
        if kind == "max":
            y = F.max_pool2d(F.pad(xn, (pl, pr, pt, pb), value=-np.inf), k, s)
        else:  # TF excludes the padding from the count: sum-pool(x) / sum-pool(ones)
            ones = torch.ones_like(xn[:1, :1])
            num = F.avg_pool2d(F.pad(xn, (pl, pr, pt, pb)), k, s, divisor_override=1)
            den = F.avg_pool2d(F.pad(ones, (pl, pr, pt, pb)), k, s, divisor_override=1)
            y = num / den
    else:
        pad = 0 if padding == "valid" else ((padding, padding) if isinstance(padding, int) else tuple(padding))
        if kind == "max":
            y = F.max_pool2d(xn, k, s, padding=pad)
        else:
            y = F.avg_pool2d(xn, k, s, padding=pad, count_include_pad=c.get("cip", True))
    y = nchw_to_nhwc(y)
    y.backward(torch.tensor(g, dtype=dtype))
    return y, xt.grad


def _run_pool(kind, c, dtype, family, tol):
    rng = np.random.default_rng(c["seed"])
    layer = make_pool(kind, c)
    x = rng.standard_normal((c["n"], c["h"], c["w"], c["cin"])).astype(dtype)
    y = layer.forward(x, training=True)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    assert y.dtype == dtype and dx.dtype == dtype
    yt, dxt = torch_pool(kind, x, c, g, torch.float64 if dtype == np.float64 else torch.float32)
    check(family, y, yt, f"{kind} forward", tol)
    check(family, dx, dxt, f"{kind} dx", tol)


def _pool_id(c):
    return (f"n{c['n']}-{c['h']}x{c['w']}x{c['cin']}-k{c['k'][0]}x{c['k'][1]}-s{c['stride']}-"
            f"p{c['padding']}-cip{int(c['cip'])}").replace(" ", "")


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("c", POOL_CFGS, ids=_pool_id)
def test_pool_matches_torch_float64(c, kind):
    _run_pool(kind, c, np.float64, "pool", TOL64)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("c", POOL_CFGS[::4] + POOL_CFGS[-5:], ids=_pool_id)
def test_pool_matches_torch_float32(c, kind):
    _run_pool(kind, c, np.float32, "pool_f32", TOL32)


def test_pool_config_coverage():
    assert {k for c in POOL_CFGS for k in c["k"]} == {1, 2, 3, 4}
    assert {s for c in POOL_CFGS if c["stride"] for s in c["stride"]} == {1, 2, 3}
    assert any(c["s"][0] < c["k"][0] for c in POOL_CFGS)  # overlapping windows
    assert any(c["stride"] is None for c in POOL_CFGS)
    assert {c["padding"] for c in POOL_CFGS if isinstance(c["padding"], str)} == {"same", "valid"}
    assert len(POOL_CFGS) >= 30


TIE_CASES = [  # (pool_size, stride, padding, h, w)
    (2, 2, "valid", 8, 8), (2, 2, "same", 7, 9), (3, 1, "valid", 7, 6), (3, 2, "same", 9, 8),
    (2, 1, "same", 6, 6), (4, 3, "valid", 10, 11), (3, 2, 1, 7, 7), ((2, 3), (1, 2), "same", 8, 7),
]


@pytest.mark.parametrize("pool_size,stride,padding,h,w", TIE_CASES)
@pytest.mark.parametrize("data", ["ints012", "mnist_like"])
@pytest.mark.parametrize("training", [True, False])
def test_maxpool_ties_route_gradient_like_torch(pool_size, stride, padding, h, w, data, training):
    """Many equal values: the gradient must go to the FIRST max of each window, as in torch,
    whether the forward pass kept each window's winner (training) or its input and output.

    Integer upstream gradients keep every sum exact, so equality is exact.
    """
    rng = np.random.default_rng(h * 31 + w)
    if data == "ints012":
        x = rng.integers(0, 3, size=(3, h, w, 2)).astype(np.float64)
    else:  # flat zero background with a small blob, as in MNIST digits
        x = np.zeros((3, h, w, 2))
        x[:, h // 3:h // 3 + 2, w // 3:w // 3 + 3, :] = rng.integers(0, 3, size=(3, 2, 3, 2))
        x[0] = 0.0  # one sample entirely background
    layer = jn.layers.MaxPool2D(pool_size, stride=stride, padding=padding)
    y = layer.forward(x, training=training)
    g = rng.integers(1, 50, size=y.shape).astype(np.float64)
    dx = layer.backward(g)
    k = jn.functional.pair(pool_size)
    s = jn.functional.pair(stride)
    yt, dxt = torch_pool("max", x, dict(k=k, s=s, padding=padding), g, torch.float64)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, dxt.numpy())
    # each window routes its gradient to exactly one cell: the total is preserved
    assert dx.sum() == g.sum()
    check("pool", dx, dxt, "max ties dx")


@pytest.mark.parametrize("training", [True, False])
def test_maxpool_window_of_more_than_256_cells(training):
    """A training pass keeps each window's winner in the smallest type that holds its offset
    (uint16 for 17x17 windows): the last cells must still win."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(2, 17, 34, 3)).astype(np.float64)
    x[0, 16, 16, 0] = x[1, 16, 33, 2] = 9.0  # the last cell of a window wins
    layer = jn.layers.MaxPool2D(17)
    y = layer.forward(x, training=training)
    g = rng.integers(1, 50, size=y.shape).astype(np.float64)
    dx = layer.backward(g)
    yt, dxt = torch_pool("max", x, dict(k=(17, 17), s=(17, 17), padding="valid"), g, torch.float64)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, dxt.numpy())
    assert dx[0, 16, 16, 0] == g[0, 0, 0, 0] and dx[1, 16, 33, 2] == g[1, 0, 1, 2]
    assert not training or layer.cache.winner.dtype == np.uint16


def test_maxpool_training_keeps_a_byte_per_output_not_the_input():
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32)
    layer = jn.layers.MaxPool2D(2)
    layer.forward(x, training=True)
    assert layer.cache.winner.dtype == np.uint8 and layer.cache.xpad is None and layer.cache.y is None
    layer.forward(x, training=False)
    assert layer.cache.winner is None and layer.cache.xpad is x  # a reference: inference copies nothing


def test_maxpool_tie_goes_to_first_in_row_major_order():
    x = np.zeros((1, 2, 2, 1))
    layer = jn.layers.MaxPool2D(2)
    layer.forward(x)
    dx = layer.backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])


# --------------------------------------------------------------------------- dense, flatten

DENSE_CFGS = [(1, 1, 1, True), (4, 7, 3, True), (5, 10, 10, False), (3, 64, 2, True), (16, 12, 30, True),
              (2, 3136, 8, True), (7, 5, 1, False), (9, 20, 11, True), (1, 100, 10, True), (6, 2, 50, False),
              (32, 16, 16, True), (3, 1, 9, True)]


@pytest.mark.parametrize("n,fin,fout,bias", DENSE_CFGS)
def test_dense_matches_torch(n, fin, fout, bias):
    rng = np.random.default_rng(n * 1000 + fin * 10 + fout)
    layer = jn.layers.Dense(fin, fout, use_bias=bias, rng=rng, dtype=np.float64)
    if bias:
        layer.bias.data[...] = rng.standard_normal(fout)
    x = rng.standard_normal((n, fin))
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    assert y.dtype == dx.dtype == np.float64
    assert all(p.grad.dtype == np.float64 for p in layer.parameters())
    xt, wt = t(x, True), t(layer.weight.data, True)
    bt = t(layer.bias.data, True) if bias else None
    yt = F.linear(xt, wt.T, bt)  # torch stores (out, in); ours is (in, out)
    yt.backward(torch.tensor(g))
    check("dense", y, yt, "forward")
    check("dense", dx, xt.grad, "dx")
    check("dense", layer.weight.grad, wt.grad, "dW")
    if bias:
        check("dense", layer.bias.grad, bt.grad, "db")


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 7, 7, 64), (3, 10), (4, 2, 3)])
def test_flatten_matches_torch(shape):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape)
    layer = jn.layers.Flatten()
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    xt = t(x, True)
    yt = torch.flatten(xt, 1)  # the NHWC tensor flattened in C order, like TF's reshape
    yt.backward(torch.tensor(g))
    check("reshape", y, yt, "forward")
    check("reshape", dx, xt.grad, "dx")


# --------------------------------------------------------------------------- activations

ACTS = {
    "relu": (lambda: jn.layers.ReLU(), lambda z: F.relu(z)),
    "leaky0.01": (lambda: jn.layers.LeakyReLU(), lambda z: F.leaky_relu(z, 0.01)),
    "leaky0.3": (lambda: jn.layers.LeakyReLU(0.3), lambda z: F.leaky_relu(z, 0.3)),
    "sigmoid": (lambda: jn.layers.Sigmoid(), torch.sigmoid),
    "tanh": (lambda: jn.layers.Tanh(), torch.tanh),
    "gelu": (lambda: jn.layers.GELU(), lambda z: F.gelu(z, approximate="tanh")),
}


@pytest.mark.parametrize("name", sorted(ACTS))
@pytest.mark.parametrize("shape,scale", [((4, 9), 1.0), ((2, 5, 6, 3), 3.0), ((3, 17), 40.0), ((1, 1), 0.5)])
@pytest.mark.parametrize("training", [True, False])
def test_activation_matches_torch(name, shape, scale, training):
    # training: ReLU keeps where x > 0 rather than its output
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * scale
    x.flat[::5] = 0.0  # exact zeros: the kink of ReLU/LeakyReLU must match torch's convention
    make, ref = ACTS[name]
    layer = make()
    y = layer.forward(x, training=training)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    xt = t(x, True)
    yt = ref(xt)
    yt.backward(torch.tensor(g))
    check("activations", y, yt, f"{name} forward")
    check("activations", dx, xt.grad, f"{name} dx")


def test_relu_training_keeps_a_byte_per_value_and_the_gradients_dtype():
    x = np.array([[-1.0, 0.0, -0.0, 2.0, np.inf, -np.inf]], dtype=np.float64)
    layer = jn.layers.ReLU()
    layer.forward(x, training=True)
    assert layer.cache.dtype == bool
    dx = layer.backward(np.ones(x.shape, np.float32))
    assert dx.dtype == np.float64 and dx.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0, 0.0]]
    layer.forward(x)
    assert layer.cache.dtype == np.float64 and layer.backward(np.ones(x.shape, np.float32)).tolist() == dx.tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_does_not_overflow(dtype):
    x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype=dtype)
    layer = jn.layers.Sigmoid()
    with np.errstate(all="raise"):
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    check("activations", y, torch.sigmoid(torch.tensor(x, dtype=torch.float64)), "sigmoid extremes",
          tol=TOL64 if dtype == np.float64 else TOL32)


# --------------------------------------------------------------------------- dropout (behaviour)


# The kept fraction is checked with Hoeffding's inequality: for n independent keep/drop draws
# with keep probability p, P(|kept/n - p| >= t) <= 2*exp(-2*n*t^2). With n = 200,000 and
# t = 0.01 that is 2*exp(-40) = 8.5e-18, so a correct layer fails for practically no seed,
# while a rate used as the keep probability (off by |1 - 2*rate| >= 0.6 at the rates tested)
# or a biased mask fails for every seed. The expected values come from the rate alone, never
# from jimunet's output.
DROPOUT_N = 200_000
DROPOUT_T = 0.01


def _kept_fraction_ok(kept_fraction, rate):
    return abs(kept_fraction - (1 - rate)) < DROPOUT_T


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_dropout_keeps_one_minus_rate_and_scales_by_exactly_one_over_one_minus_rate(rate, dtype):
    """Inverted dropout as torch documents it: each activation survives with probability
    1-rate, survivors are multiplied by 1/(1-rate), backward applies the same mask and scale,
    evaluation is the identity."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, size=(40, 50, 100)).astype(dtype)  # no zeros: y == 0 means dropped
    assert x.size == DROPOUT_N
    scale = 1.0 / (1.0 - rate)  # computed here, in float64
    rtol = 4 * np.finfo(dtype).eps  # the layer rounds x*scale (or x/(1-rate)) to its dtype
    layer = jn.layers.Dropout(rate, rng=11)
    y = layer.forward(x, training=True)
    assert y.dtype == dtype
    kept = y != 0
    assert _kept_fraction_ok(kept.mean(), rate), f"kept {kept.mean():.4f}, expected {1 - rate} +- {DROPOUT_T}"
    # forward: every survivor is exactly x * 1/(1-rate), every other value exactly 0
    np.testing.assert_allclose(y[kept] / x[kept].astype(np.float64), scale, rtol=rtol, atol=0)
    # backward: the gradient of every survivor times the same scale, exactly 0 where dropped
    g = rng.standard_normal(x.shape).astype(dtype)
    dx = layer.backward(g)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx[~kept], 0.0)
    np.testing.assert_allclose(dx[kept] / g[kept].astype(np.float64), scale, rtol=rtol, atol=0)
    # evaluation: identity both ways
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    np.testing.assert_array_equal(layer.backward(g), g)


def test_dropout_masks_are_fresh_each_call_and_independent_of_the_data():
    layer = jn.layers.Dropout(0.5, rng=4)
    ones = np.ones(DROPOUT_N)
    a = layer.forward(ones, training=True) != 0
    b = layer.forward(ones, training=True) != 0
    # two independent masks agree on a fraction p^2 + (1-p)^2 = 1/2 of the cells (Hoeffding as above)
    assert abs((a == b).mean() - 0.5) < DROPOUT_T


def test_dropout_follows_torch_scaling_convention():
    """torch.nn.functional.dropout (seeded) obeys the same law: survivors 1/(1-p), about p dropped."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yt = F.dropout(torch.ones(DROPOUT_N, dtype=torch.float64), 0.25, training=True).numpy()
    y = jn.layers.Dropout(0.25, rng=0).forward(np.ones(DROPOUT_N), training=True)
    assert set(np.unique(yt)) == set(np.unique(y)) == {0.0, 1 / 0.75}
    assert _kept_fraction_ok((yt != 0).mean(), 0.25) and _kept_fraction_ok((y != 0).mean(), 0.25)


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (5, 10, 1.0), (32, 10, 10.0), (8, 3, 1e4), (16, 10, 1e4),
                                       (4, 7, 1e-3), (64, 100, 5.0)])
def test_softmax_cross_entropy_matches_torch(n, k, scale):
    rng = np.random.default_rng(n + k)
    logits = rng.standard_normal((n, k)) * scale
    labels = rng.integers(0, k, size=n)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    with np.errstate(over="raise", invalid="raise"):
        loss = loss_fn.forward(logits, labels)
        grad = loss_fn.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    lt = t(logits, True)
    ref = F.cross_entropy(lt, torch.tensor(labels), reduction="mean")
    ref.backward()
    check("loss", np.asarray(loss), ref, "value")
    check("loss", grad, lt.grad, "dlogits")


def test_softmax_cross_entropy_float32_large_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-3e4, 2e4, 5e3]], dtype=np.float32)
    labels = np.array([1, 0])
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert grad.dtype == np.float32
    lt = t(logits.astype(np.float64), True)
    ref = F.cross_entropy(lt, torch.tensor(labels))
    ref.backward()
    check("loss", np.asarray(loss), ref, "value float32", tol=TOL32)
    check("loss", grad, lt.grad, "dlogits float32", tol=TOL32)


# --------------------------------------------------------------------------- optimizers

SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 10


def _params_and_grads(seed):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]
    return init, grads


def _groups(spec, objs):
    """``spec`` is None (a flat list) or a list of (indices, overrides)."""
    if spec is None:
        return list(objs)
    return [{"params": [objs[i] for i in idx], **over} for idx, over in spec]


def _run_optim(family, jn_cls, torch_cls, kwargs, groups=None, seed=0, lr_change=None):
    init, grads = _params_and_grads(seed)
    ours = [jn.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    opt = jn_cls(_groups(groups, ours), **kwargs)
    topt = torch_cls(_groups(groups, theirs), **kwargs)
    for step, gs in enumerate(grads):
        if lr_change is not None and step == lr_change[0]:
            opt.set_lr(lr_change[1])
            for g in topt.param_groups:
                g["lr"] = lr_change[1]
        opt.zero_grad()
        topt.zero_grad()
        for p, tp, g in zip(ours, theirs, gs):
            p.grad += g
            tp.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
        for i, (p, tp, a0) in enumerate(zip(ours, theirs, init)):
            check(family, p.data, tp, f"param {i} after step {step + 1}")
            # the displacement too, so errors in small updates are not hidden by |param|
            check(family, p.data - a0, tp.detach().numpy() - a0, f"update of param {i} after step {step + 1}")


SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "momentum_dampening": dict(lr=0.05, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.8, nesterov=True),
    "weight_decay": dict(lr=0.1, weight_decay=0.01),
    "momentum_wd": dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
    "nesterov_wd": dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1),
    "dampening_wd": dict(lr=0.03, momentum=0.5, dampening=0.5, weight_decay=0.2),
    "full_dampening": dict(lr=0.03, momentum=0.7, dampening=1.0),
}


@pytest.mark.parametrize("name", sorted(SGD_CASES))
def test_sgd_matches_torch(name):
    _run_optim("SGD", jn.optim.SGD, torch.optim.SGD, SGD_CASES[name], seed=len(name))


def test_sgd_param_groups_match_torch():
    groups = [([0, 1], dict(lr=0.1, weight_decay=0.01)),
              ([2], dict(lr=0.02, momentum=0.5, weight_decay=0.0))]
    _run_optim("SGD", jn.optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9), groups=groups, seed=1)
    groups = [([1], dict(nesterov=True, momentum=0.9)), ([0, 2], dict(lr=0.3, dampening=0.1, momentum=0.6))]
    _run_optim("SGD", jn.optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.0), groups=groups, seed=2)


def test_sgd_lr_change_mid_run_matches_torch():
    _run_optim("SGD", jn.optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9), seed=3, lr_change=(5, 0.01))


ADAM_CASES = {
    "default": dict(),
    "lr0.01": dict(lr=0.01),
    "weight_decay": dict(lr=0.01, weight_decay=0.1),
    "betas_eps": dict(lr=0.005, betas=(0.8, 0.99), eps=1e-6),
    "betas_wd": dict(lr=0.02, betas=(0.5, 0.9), weight_decay=1e-3),
    "big_eps": dict(lr=0.1, eps=0.5),
}


@pytest.mark.parametrize("name", sorted(ADAM_CASES))
def test_adam_matches_torch(name):
    _run_optim("Adam", jn.optim.Adam, torch.optim.Adam, ADAM_CASES[name], seed=10 + len(name))


def test_adam_param_groups_match_torch():
    groups = [([0], dict(lr=0.05, weight_decay=0.1)), ([1, 2], dict(betas=(0.7, 0.95)))]
    _run_optim("Adam", jn.optim.Adam, torch.optim.Adam, dict(lr=0.01), groups=groups, seed=4)


def test_adam_lr_change_mid_run_matches_torch():
    _run_optim("Adam", jn.optim.Adam, torch.optim.Adam, dict(lr=0.01), seed=5, lr_change=(4, 0.1))


# --------------------------------------------------------------------------- end to end


def test_small_network_training_step_matches_torch():
    """conv -> relu -> maxpool(same) -> flatten -> dense -> loss -> SGD step, against torch."""
    rng = np.random.default_rng(42)
    conv = jn.layers.Conv2D(1, 4, 5, padding="same", rng=rng, dtype=np.float64)
    dense = jn.layers.Dense(4 * 4 * 4, 3, rng=rng, dtype=np.float64)
    conv.bias.data[...] = 0.1
    model = jn.Sequential([conv, jn.layers.ReLU(), jn.layers.MaxPool2D(2, padding="same"),
                           jn.layers.Flatten(), dense])
    x = rng.standard_normal((6, 7, 7, 1))
    y = rng.integers(0, 3, size=6)
    w0 = [p.data.copy() for p in model.parameters()]
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    opt = jn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        losses.append(float(loss_fn.forward(model.forward(x, training=True), y)))
        model.backward(loss_fn.backward())
        opt.step()

    tw = [torch.nn.Parameter(torch.tensor(a)) for a in w0]
    topt = torch.optim.SGD(tw, lr=0.1, momentum=0.9)
    tlosses = []
    for _ in range(3):
        topt.zero_grad()
        xn = F.pad(nhwc_to_nchw(torch.tensor(x)), (2, 2, 2, 2))
        h = F.relu(F.conv2d(xn, tw[0].permute(3, 2, 0, 1).contiguous(), tw[1]))
        h = F.max_pool2d(F.pad(h, (0, 1, 0, 1), value=-np.inf), 2, 2)  # 7 -> 4, pad after
        logits = torch.flatten(nchw_to_nhwc(h), 1) @ tw[2] + tw[3]
        loss = F.cross_entropy(logits, torch.tensor(y))
        tlosses.append(loss.item())
        loss.backward()
        topt.step()
    check("end_to_end", np.array(losses), np.array(tlosses), "losses")
    for p, tp in zip(model.parameters(), tw):
        check("end_to_end", p.data, tp, "weights after 3 steps")


# --------------------------------------------------------------------------- float64 means float64

def _conv_ref(layer):
    (pt, pb), (pl, pr) = resolve_pads(7, 6, layer.kernel_size, layer.stride, layer.padding)
    return lambda xt, w, b: nchw_to_nhwc(F.conv2d(F.pad(nhwc_to_nchw(xt), (pl, pr, pt, pb)),
                                                  w.permute(3, 2, 0, 1), b, stride=layer.stride))


#: class name -> (float64 layer, per-sample input shape, training, torch reference of (x, *params)).
#: One entry per registered layer class: ``test_float64_layer_computes_in_float64`` fails for a
#: registered class without one.
FLOAT64_CASES = {
    "Conv2D": lambda: (lambda l: (l, (7, 6, 3), True, _conv_ref(l)))(
        jn.layers.Conv2D(3, 4, 3, stride=2, padding="same", rng=1, dtype=np.float64)),
    "Dense": lambda: (jn.layers.Dense(50, 7, rng=2, dtype=np.float64), (50,), True,
                      lambda xt, w, b: xt @ w + b),
    "MaxPool2D": lambda: (jn.layers.MaxPool2D(3, stride=2, padding=1), (7, 6, 3), True,
                          lambda xt: nchw_to_nhwc(F.max_pool2d(nhwc_to_nchw(xt), 3, 2, padding=1))),
    "AvgPool2D": lambda: (jn.layers.AvgPool2D(3, stride=2, padding=1, count_include_pad=False), (7, 6, 3), True,
                          lambda xt: nchw_to_nhwc(F.avg_pool2d(nhwc_to_nchw(xt), 3, 2, padding=1,
                                                               count_include_pad=False))),
    "ReLU": lambda: (jn.layers.ReLU(), (5, 4, 3), True, F.relu),
    "LeakyReLU": lambda: (jn.layers.LeakyReLU(0.2), (5, 4, 3), True, lambda xt: F.leaky_relu(xt, 0.2)),
    "Sigmoid": lambda: (jn.layers.Sigmoid(), (5, 4, 3), True, torch.sigmoid),
    "Tanh": lambda: (jn.layers.Tanh(), (5, 4, 3), True, torch.tanh),
    "GELU": lambda: (jn.layers.GELU(), (5, 4, 3), True, lambda xt: F.gelu(xt, approximate="tanh")),
    "Flatten": lambda: (jn.layers.Flatten(), (5, 4, 3), True, lambda xt: torch.flatten(xt, 1)),
    # Only precision and dtype here: the mask's law is tested above; the reference reuses the
    # layer's own zero pattern and applies the scale computed in float64.
    "Dropout": lambda: (jn.layers.Dropout(0.3, rng=5), (5, 4, 3), True, None),
    "BatchNorm": lambda: (jn.layers.BatchNorm(3, dtype=np.float64), (5, 4, 3), True,
                          lambda xt, g, b: nchw_to_nhwc(F.batch_norm(nhwc_to_nchw(xt), None, None, g, b,
                                                                     training=True, eps=1e-5))),
    "GlobalAvgPool2D": lambda: (jn.layers.GlobalAvgPool2D(), (5, 4, 3), True, lambda xt: xt.mean(dim=(1, 2))),
}

#: Layers that join several inputs: (layer, per-sample input shapes, torch reference of the inputs).
JOIN_CASES = {
    "Add": lambda: (jn.layers.Add(), [(5, 4, 3), (5, 4, 3), (5, 4, 3)], lambda *xs: xs[0] + xs[1] + xs[2]),
    "Concatenate": lambda: (jn.layers.Concatenate(), [(5, 4, 3), (5, 4, 2)], lambda *xs: torch.cat(xs, dim=-1)),
}


@pytest.mark.parametrize("name", sorted(jn.layers.base._REGISTRY))
def test_float64_layer_computes_in_float64(name):
    """Every registered layer class, built in float64: the output, dX and every parameter
    gradient are float64 arrays AND agree with torch's float64 to 1e-12 (float32 anywhere
    inside would give ~1e-7). Parameters get non-zero values of order 1 so that a sloppy
    bias path shows too."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name in JOIN_CASES:
        layer, shapes, ref = JOIN_CASES[name]()
        xs = [rng.standard_normal((4, *shape)) for shape in shapes]
        y = layer.forward(xs, training=True)
        g = rng.standard_normal(y.shape)
        dxs = layer.backward(g)
        assert y.dtype == np.float64 and all(dx.dtype == np.float64 for dx in dxs)
        xts = [t(x, True) for x in xs]
        yt = ref(*xts)
        yt.backward(torch.tensor(g))
        check("float64", y, yt, f"{name} forward")
        for i, (dx, xt) in enumerate(zip(dxs, xts)):
            check("float64", dx, xt.grad, f"{name} dx{i}")
        return
    assert name in FLOAT64_CASES, f"registered layer {name} has no float64 oracle case: add one to FLOAT64_CASES"
    layer, shape, training, ref = FLOAT64_CASES[name]()
    for p in layer.parameters():
        p.data[...] = rng.standard_normal(p.data.shape)
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64
    x = rng.standard_normal((4, *shape))
    y = layer.forward(x, training=training)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    assert y.dtype == np.float64 and dx.dtype == np.float64
    assert all(p.grad.dtype == np.float64 for p in layer.parameters())
    xt = t(x, True)
    pts = [t(p.data, True) for p in layer.parameters()]
    if ref is None:  # Dropout
        yt = xt * torch.tensor((y != 0).astype(np.float64)) * (1.0 / (1.0 - layer.rate))
    else:
        yt = ref(xt, *pts)
    yt.backward(torch.tensor(g))
    check("float64", y, yt, f"{name} forward")
    check("float64", dx, xt.grad, f"{name} dx")
    for p, pt in zip(layer.parameters(), pts):
        check("float64", p.grad, pt.grad, f"{name} d{p.name}")
