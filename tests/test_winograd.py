"""Winograd convolution: exact transforms, the accuracy contract, the ``auto`` choice, config."""
from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

import jimunet as jn
from jimunet.functional import winograd as wg
from jimunet.layers import conv as conv_module
from jimunet.layers import conv_plans
from jimunet.layers.conv import auto_tile

#: The documented bounds (Conv2D docstring, README): max|err| / max|exact|.
BOUND64 = 1e-12
BOUND32 = 5e-5


def rel(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max() / np.abs(ref).max())


ALL_1D = [(m, r) for r in range(1, wg.MAX_ALPHA + 1) for m in range(1, wg.MAX_ALPHA + 2 - r)]


@pytest.mark.parametrize("m,r", ALL_1D, ids=[f"F({m},{r})" for m, r in ALL_1D])
def test_transforms_compute_the_correlation_exactly_in_rationals(m, r):
    at, g, bt = wg.transform_matrices_exact(m, r)
    alpha = m + r - 1
    assert (len(at), len(at[0]), len(g), len(g[0]), len(bt), len(bt[0])) == (m, alpha, alpha, r, alpha, alpha)
    rnd = random.Random(m * 10 + r)
    for _ in range(3):
        gg = [Fraction(rnd.randint(-50, 50), rnd.randint(1, 9)) for _ in range(r)]
        dd = [Fraction(rnd.randint(-50, 50), rnd.randint(1, 9)) for _ in range(alpha)]
        gt = [sum(g[j][k] * gg[k] for k in range(r)) for j in range(alpha)]
        bd = [sum(bt[j][k] * dd[k] for k in range(alpha)) for j in range(alpha)]
        y = [sum(at[i][j] * gt[j] * bd[j] for j in range(alpha)) for i in range(m)]
        assert y == [sum(gg[k] * dd[i + k] for k in range(r)) for i in range(m)]


def test_transforms_have_the_expected_small_entries():
    # F(2, 3) from the points 0, 1, -1, ∞: the textbook Aᵀ, and Bᵀ with entries in {0, ±1}.
    at, g, bt = wg.transform_matrices(2, 3)
    np.testing.assert_array_equal(at, [[1, 1, 1, 0], [0, 1, -1, 1]])
    assert set(np.unique(bt)) <= {-1.0, 0.0, 1.0}
    # The points are exact in binary, so every Bᵀ entry of every tile is a small dyadic rational.
    for m, r in ALL_1D:
        _, _, bt = wg.transform_matrices(m, r)
        assert np.all(bt * 64 == np.round(bt * 64)) and np.abs(bt).max() <= 32


def test_input_transform_depends_on_the_tile_length_only():
    # So the forward pass F(m, k) and the weight gradient F(k, m) share the transformed input.
    for m, r in ALL_1D:
        np.testing.assert_array_equal(wg.transform_matrices(m, r)[2], wg.transform_matrices(r, m)[2])


def test_tiles_beyond_the_points_are_refused():
    with pytest.raises(ValueError, match="tile of 9 > 8"):
        wg.transform_matrices(5, 5)
    with pytest.raises(ValueError, match="winograd_tile"):
        jn.layers.Conv2D(2, 2, 5, algorithm="winograd", winograd_tile=6)


def test_multiplication_counts():
    # The figures per 4x4 output tile and channel pair, for a 5x5 kernel.
    assert wg.multiplications((4, 4), (5, 5), 1, 1) == 16 * 25
    assert wg.multiplications((4, 4), (5, 5), 1, 1, (2, 2)) == 4 * 36
    assert wg.multiplications((4, 4), (5, 5), 1, 1, (4, 4)) == 64
    conv = jn.layers.Conv2D(32, 64, 5, algorithm="winograd")
    assert conv.multiplications((14, 14, 32)) == 16 * 64 * 32 * 64  # 4x4 tiles of 14x14: 16 tiles
    assert conv.multiplications((14, 14, 32), ("im2col", None)) == 14 * 14 * 25 * 32 * 64


def _pair_of_layers(c, o, k, padding, tile, dtype, seed=0):
    """The same weights under im2col and forced Winograd."""
    ref = jn.layers.Conv2D(c, o, k, padding=padding, algorithm="im2col", rng=seed, dtype=dtype)
    win = jn.layers.Conv2D(c, o, k, padding=padding, algorithm="winograd", winograd_tile=tile, rng=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    ref.bias.data[...] = rng.standard_normal(o)
    for p, q in zip(win.parameters(), ref.parameters()):
        p.data[...] = q.data
    return ref, win


def _fwd_bwd(layer, x, g):
    y = layer.forward(x, training=True)
    return y, layer.backward(g), layer.weight.grad.copy()


def _chunks_per_block(layer):
    """How many chunks each block of the batch had in ``layer``'s last Winograd forward plan."""
    plan = layer.cache.plan
    return [len(plan["chunks"][blocks]) for blocks in plan["blocks"]]


# Odd and even sizes and kernels, 1 to many channels, batch 1 to more than a chunk's worth,
# sizes that are and are not multiples of the tile, rectangular kernels and tiles.
CASES64 = [
    # (n, h, w, c, o, kernel, padding, tile)
    (1, 28, 28, 1, 4, 5, "same", 4),
    (3, 14, 14, 32, 64, 5, "same", 4),
    (2, 13, 9, 5, 3, 5, "same", 3),
    (5, 7, 8, 3, 7, 3, "same", 4),
    (2, 9, 9, 4, 2, 3, "valid", 6),
    (1, 6, 11, 2, 3, 2, "same", 7),
    (2, 8, 8, 3, 3, 4, "same", 5),
    (3, 10, 7, 2, 5, (3, 5), 1, (2, 4)),
    (2, 5, 5, 6, 2, 7, "same", 2),
    (1, 3, 2, 2, 2, 5, "same", 4),   # input smaller than the kernel
    (40, 6, 6, 8, 8, 3, "same", 4),  # several blocks, one chunk each
    # several chunks per block: 2 MiB of scratch holds 2 of these images (46,176 elements
    # each), so each block of 3 images has a chunk of 2 and one of 1 (asserted below)
    (24, 14, 14, 80, 80, 3, "same", 4),
]


@pytest.mark.parametrize("n,h,w,c,o,k,padding,tile", CASES64)
def test_float64_winograd_equals_im2col(n, h, w, c, o, k, padding, tile):
    ref, win = _pair_of_layers(c, o, k, padding, tile, np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c))
    g = rng.standard_normal((n, *ref.output_shape(x.shape[1:])))
    y0, dx0, dw0 = _fwd_bwd(ref, x, g)
    y1, dx1, dw1 = _fwd_bwd(win, x, g)
    assert win.last_algorithm[0] == "winograd" and ref.last_algorithm == ("im2col", None)
    assert y1.shape == y0.shape and dx1.shape == dx0.shape and y1.dtype == np.float64
    assert rel(y1, y0) <= BOUND64 and rel(dx1, dx0) <= BOUND64
    assert rel(dw1, dw0) <= BOUND64
    assert rel(win.bias.grad, ref.bias.grad) <= BOUND64
    assert y1.flags.c_contiguous
    if n == 24:  # the case that is there for it: it must really cut its blocks into chunks
        assert max(_chunks_per_block(win)) > 1, _chunks_per_block(win)


#: What a forward pass leaves for the weight gradient: a training pass keeps the transformed
#: input tiles ("tiles") or the padded input ("input", transformed again in backward); an
#: inference pass keeps its padded input, and a backward after it transforms it again.
KEEPS = ["tiles", "input", "inference"]


def _forward_for(layer, x, keep, monkeypatch):
    if keep != "inference":
        monkeypatch.setattr(conv_module, "WINOGRAD_TRAINING_KEEPS", keep)
    return layer.forward(x, training=keep != "inference")


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("n", [24, 64])
def test_weight_gradient_of_blocks_of_several_chunks(n, keep, monkeypatch):
    # dW sums each block's chunks, then the blocks; db sums each block's samples. A chunk
    # dropped or counted twice, or samples of the wrong block, show here (with each kind of
    # kept input), at two batch sizes, twice (the second pass adds into .grad and reuses the
    # plan's chunks).
    ref, win = _pair_of_layers(80, 80, 3, "same", 4, np.float64, seed=4)
    rng = np.random.default_rng(n)
    x, g = rng.standard_normal((n, 14, 14, 80)), rng.standard_normal((n, 14, 14, 80))
    for layer in (ref, win):
        for _ in range(2):
            _forward_for(layer, x, keep, monkeypatch)
            layer.backward(g, input_grad=False)
    per_block = _chunks_per_block(win)
    assert len(per_block) > 1 and min(per_block) > 1, per_block
    plan = win.cache.plan
    assert win.last_algorithm == ("winograd", (4, 4)) and (plan["kept"] is not None) == (keep == "tiles")
    assert plan["chunked"] == (keep == "tiles")  # padded a chunk at a time unless the padded input is kept
    assert rel(win.weight.grad, ref.weight.grad) <= BOUND64
    assert rel(win.bias.grad, ref.bias.grad) <= BOUND64
    db = 2 * g.sum(axis=(0, 1, 2))  # and db is exactly what it should be, not merely close
    assert rel(win.bias.grad, db) <= 1e-14


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_what_forward_keeps_changes_no_bit_of_the_gradients(dtype, monkeypatch):
    """The same transforms in the same order, whichever input is kept and however it is padded
    (a whole batch, or a chunk at a time in a block's buffer; dY's last tiles cut by the output
    edge, 13x11 with 4x4 tiles), on 1 and 3 threads."""
    rng = np.random.default_rng(5)
    x, g = rng.standard_normal((40, 13, 11, 24)).astype(dtype), rng.standard_normal((40, 13, 11, 32)).astype(dtype)
    results, saved = [], jn.get_num_threads()
    try:
        for keep in KEEPS:
            for threads in (1, 3):
                jn.set_num_threads(threads)
                layer = jn.layers.Conv2D(24, 32, 3, algorithm="winograd", winograd_tile=4, rng=1, dtype=dtype)
                y = _forward_for(layer, x, keep, monkeypatch)
                dx = layer.backward(g)
                results.append((keep, threads, y, dx, layer.weight.grad, layer.bias.grad))
    finally:
        jn.set_num_threads(saved)
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first[2:], other[2:]):
            assert a.tobytes() == b.tobytes(), (first[:2], other[:2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auto_keeps_the_tiles_up_to_the_limit_and_the_input_beyond(dtype, monkeypatch):
    """``WINOGRAD_TRAINING_KEEPS = "auto"``: the tiles while their bytes are within
    ``WINOGRAD_KEEP_TILES_BYTES``, the padded input from one byte less; the same bits either way."""
    monkeypatch.setattr(conv_module, "WINOGRAD_TRAINING_KEEPS", "tiles")
    rng = np.random.default_rng(7)
    x, g = rng.standard_normal((10, 13, 11, 6)).astype(dtype), rng.standard_normal((10, 13, 11, 8)).astype(dtype)
    layer = jn.layers.Conv2D(6, 8, 3, algorithm="winograd", winograd_tile=4, rng=3, dtype=dtype)
    layer.forward(x, training=True)
    tiles = layer.cache.plan["kept"].nbytes
    assert tiles == 10 * (4 * 6) * (3 * 6) * 6 * np.dtype(dtype).itemsize  # 4x3 tiles of 6x6 points, 6 channels
    monkeypatch.setattr(conv_module, "WINOGRAD_TRAINING_KEEPS", "auto")
    results = []
    for limit, kept in ((tiles, "tiles"), (tiles - 1, "input")):
        monkeypatch.setattr(conv_module, "WINOGRAD_KEEP_TILES_BYTES", limit)
        layer = jn.layers.Conv2D(6, 8, 3, algorithm="winograd", winograd_tile=4, rng=3, dtype=dtype)
        y = layer.forward(x, training=True)
        plan = layer.cache.plan
        assert (plan["kept"] is not None, plan["chunked"]) == ((True, True) if kept == "tiles" else (False, False))
        results.append((y, layer.backward(g), layer.weight.grad, layer.bias.grad))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


def test_scratch_is_kept_per_thread_slot_and_follows_the_thread_count(monkeypatch):
    """Blocks that run on one thread share a scratch set (``parallel.thread_slots``): one layer
    object, its thread count changed between steps, keeps one set per thread and gives the
    same bits as a layer that only ever ran on one thread (several chunks per block, dY's last
    tiles cut by the output edge, so the shared padded buffers are reused)."""
    rng = np.random.default_rng(6)
    x, g = rng.standard_normal((64, 13, 13, 40)).astype(np.float32), rng.standard_normal((64, 13, 13, 48))
    g = g.astype(np.float32)
    monkeypatch.setattr(conv_plans, "WINOGRAD_CHUNK_BYTES", 700_000)  # chunks of 3, 3 and 2 images per block
    saved = jn.get_num_threads()

    def step(layer):
        layer.weight.grad[...] = 0
        layer.bias.grad[...] = 0
        y = layer.forward(x, training=True)
        return y, layer.backward(g), layer.weight.grad.copy(), layer.bias.grad.copy()
    try:
        jn.set_num_threads(1)
        alone = jn.layers.Conv2D(40, 48, 3, algorithm="winograd", winograd_tile=4, rng=2)
        reference = step(alone)
        layer = jn.layers.Conv2D(40, 48, 3, algorithm="winograd", winograd_tile=4, rng=2)
        for threads in (3, 1, 2, 8, 2):
            jn.set_num_threads(threads)
            results = step(layer)
            plan = layer.cache.plan
            slots = plan["slots"]
            assert len(slots) == 8 and max(slots) + 1 == threads  # 8 blocks of 8 images
            assert [c.stop - c.start for c in plan["chunks"][plan["blocks"][0]]] == [3, 3, 2]
            assert plan["ext"].shape[0] == threads and plan["dw_chunks"]
            for a, b in zip(results, reference):
                assert a.tobytes() == b.tobytes(), threads
        for forward_threads, backward_threads in ((1, 3), (3, 1), (2, 8)):  # changed in between
            jn.set_num_threads(forward_threads)
            layer.weight.grad[...] = 0
            layer.bias.grad[...] = 0
            y = layer.forward(x, training=True)
            jn.set_num_threads(backward_threads)
            results = (y, layer.backward(g), layer.weight.grad, layer.bias.grad)
            for a, b in zip(results, reference):
                assert a.tobytes() == b.tobytes(), (forward_threads, backward_threads)
    finally:
        jn.set_num_threads(saved)


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
@pytest.mark.parametrize("n", [24, 64])
def test_bias_gradient_is_the_block_sums_added_in_block_order(n, algorithm):
    # The order that makes gradients independent of threads and of a data-parallel split
    # (README, parallel.sum_blocks): each block of the batch (parallel.batch_blocks) sums its
    # own samples, the block sums are added in block order, then added into .grad. Bit for
    # bit, so a sum over the samples of another block, even a permutation of the blocks that
    # leaves the value correct up to rounding, shows without MPI.
    from jimunet.parallel import batch_blocks
    layer = jn.layers.Conv2D(80, 80, 3, padding="same", algorithm=algorithm, winograd_tile=4 if algorithm ==
                             "winograd" else None, rng=0, dtype=np.float64)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 14, 14, 80))
    g = rng.standard_normal((n, 14, 14, 80)) * rng.uniform(0.1, 10, 80)  # channels of other scales
    layer.forward(x, training=True)
    layer.backward(g, input_grad=False)
    assert layer.last_algorithm[0] == algorithm and len(batch_blocks(n)) == 8
    sums = [g[b].sum(axis=(0, 1, 2)) for b in batch_blocks(n)]
    total = sums[0].copy()
    for s in sums[1:]:
        total += s
    np.testing.assert_array_equal(layer.bias.grad, total)


def _auto_winograd_kernels():
    """Every (kernel, tile) ``auto`` can send to Winograd: sizes 1..8 over outputs 1..64."""
    found = set()
    for kh in range(1, 9):
        for kw in range(1, 9):
            for size in (1, 2, 3, 4, 5, 7, 10, 14, 28, 64):
                for c in (1, 8, 32, 256):
                    tile = auto_tile((kh, kw), (size, size), c, 64)
                    if tile is not None:
                        found.add(((kh, kw), tile))
    return sorted(found)


AUTO_KERNELS = _auto_winograd_kernels()


def test_auto_sends_some_kernels_to_winograd_and_keeps_within_the_points():
    assert ((5, 5), (4, 4)) in AUTO_KERNELS and ((3, 3), (4, 4)) in AUTO_KERNELS
    assert ((5, 5), (3, 3)) in AUTO_KERNELS and ((3, 3), (3, 3)) in AUTO_KERNELS
    for (kh, kw), (mh, mw) in AUTO_KERNELS:
        assert mh + kh - 1 <= wg.MAX_ALPHA and mw + kw - 1 <= wg.MAX_ALPHA


@pytest.mark.parametrize("kernel,tile", AUTO_KERNELS, ids=[f"k{k}-m{m}" for k, m in AUTO_KERNELS])
@pytest.mark.parametrize("c,o,hw,n", [(8, 16, (9, 10), 3), (64, 32, (8, 8), 2), (256, 8, (5, 6), 1)])
def test_float32_winograd_within_the_bound_of_a_float64_reference(kernel, tile, c, o, hw, n):
    ref, win = _pair_of_layers(c, o, kernel, "same", tile, np.float32, seed=c)
    exact = jn.layers.Conv2D(c, o, kernel, algorithm="im2col", dtype=np.float64)
    for p, q in zip(exact.parameters(), ref.parameters()):
        p.data[...] = q.data
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, *hw, c)).astype(np.float32)
    g = rng.standard_normal((n, *hw, o)).astype(np.float32)
    y64, dx64, dw64 = _fwd_bwd(exact, x.astype(np.float64), g.astype(np.float64))
    y32, dx32, dw32 = _fwd_bwd(win, x, g)
    assert win.last_algorithm == ("winograd", tile) and y32.dtype == dx32.dtype == dw32.dtype == np.float32
    assert rel(y32, y64) <= BOUND32, "forward"
    assert rel(dx32, dx64) <= BOUND32, "dX"
    assert rel(dw32, dw64) <= BOUND32, "dW"
    # and it is really Winograd: im2col in float32 is markedly closer to the reference
    y_i2c = ref.forward(x)
    assert rel(y_i2c, y64) <= BOUND32 / 10


@pytest.mark.parametrize("keep", KEEPS)
def test_weight_gradient_with_and_without_the_kept_input_tiles(keep, monkeypatch):
    # Each kind of kept input gives im2col's gradient, accumulated (added) into .grad.
    ref, win = _pair_of_layers(16, 8, 3, "same", 4, np.float64)
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((70, 9, 6, 16)), rng.standard_normal((70, 9, 6, 8))
    for layer in (ref, win):
        for _ in range(2):
            _forward_for(layer, x, keep, monkeypatch)
            layer.backward(g, input_grad=False)
    assert (win.last_algorithm[0], win.cache.plan["kept"] is not None) == ("winograd", keep == "tiles")
    assert rel(win.weight.grad, ref.weight.grad) <= BOUND64
    assert rel(win.bias.grad, ref.bias.grad) <= BOUND64


def test_auto_rule():
    conv2 = jn.layers.Conv2D(32, 64, 5)
    assert conv2.algorithm == "auto" and conv2.algorithm_for((14, 14, 32)) == ("winograd", (4, 4))
    # tiles: the one of 4 and 3 with the fewest transformed points ceil(n/m)·(m+k-1), ties to the larger
    for n, m in {4: 4, 5: 3, 6: 3, 7: 4, 8: 4, 9: 3, 10: 4, 14: 4, 28: 4, 56: 4}.items():
        assert auto_tile((5, 5), (n, n), 32, 64) == (m, m), n
    for n, m in {4: 4, 5: 3, 6: 3, 9: 3, 14: 4}.items():
        assert auto_tile((3, 3), (n, n), 32, 64) == (m, m), n
    assert auto_tile((3, 5), (6, 28), 8, 8) == (3, 4)
    assert auto_tile((4, 4), (5, 5), 8, 8) == (3, 3)
    # conv1 (one input channel): the tile transforms cost more than they save
    assert jn.layers.Conv2D(1, 32, 5).algorithm_for((28, 28, 1)) == ("im2col", None)
    assert jn.layers.Conv2D(32, 64, 5, stride=2).algorithm_for((14, 14, 32)) == ("im2col", None)
    assert jn.layers.Conv2D(32, 64, 1).algorithm_for((14, 14, 32)) == ("im2col", None)
    assert jn.layers.Conv2D(32, 64, 5).algorithm_for((2, 2, 32)) == ("im2col", None)  # tiny input
    assert jn.layers.Conv2D(32, 64, 5, algorithm="im2col").algorithm_for((14, 14, 32)) == ("im2col", None)
    assert jn.layers.Conv2D(32, 64, 5, winograd_tile=2).algorithm_for((14, 14, 32)) == ("winograd", (2, 2))
    # what ran is recorded
    layer = jn.layers.Conv2D(32, 8, 3, rng=0)
    layer.forward(np.zeros((1, 8, 8, 32), np.float32))
    assert layer.last_algorithm == layer.algorithm_for((8, 8, 32))


@pytest.mark.parametrize("bad,match", [
    (dict(algorithm="fft"), "algorithm must be one of"),
    (dict(algorithm="winograd", stride=2), "stride 1"),
    (dict(algorithm="winograd", kernel_size=1), "kernel of at least 2x2"),
    (dict(winograd_tile=0), "winograd_tile"),
    (dict(winograd_tile=(2, 9)), "winograd_tile"),
])
def test_bad_algorithm_arguments_are_refused_clearly(bad, match):
    kwargs = dict(in_channels=2, out_channels=2, kernel_size=3) | bad
    with pytest.raises(ValueError, match=match):
        jn.layers.Conv2D(**kwargs)


def test_config_round_trip_and_old_configs_load_as_auto(tmp_path):
    model = jn.Sequential([jn.layers.Conv2D(3, 4, 3, algorithm="winograd", winograd_tile=(2, 4), rng=0),
                           jn.layers.ReLU(), jn.layers.Conv2D(4, 2, 3, algorithm="im2col", rng=1)])
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = jn.load(path)
    assert (loaded.layers[0].algorithm, loaded.layers[0].winograd_tile) == ("winograd", (2, 4))
    assert loaded.layers[2].algorithm == "im2col"
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    config = model.layers[0].get_config()
    assert config["algorithm"] == "winograd" and config["winograd_tile"] == [2, 4]
    for key in ("algorithm", "winograd_tile"):  # a model saved before the option existed
        del config[key]
    old = jn.layers.Conv2D(**config)
    assert old.algorithm == "auto" and old.winograd_tile is None


def test_winograd_does_not_mutate_its_inputs():
    layer = jn.layers.Conv2D(3, 4, 3, algorithm="winograd", rng=0)
    x = np.random.default_rng(0).standard_normal((2, 7, 7, 3)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((2, 7, 7, 4)).astype(np.float32)
    x0, g0, w0 = x.copy(), g.copy(), layer.weight.data.copy()
    layer.forward(x, training=True)
    layer.backward(g)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(g, g0)
    np.testing.assert_array_equal(layer.weight.data, w0)


def test_inference_reuses_the_transformed_kernel_only_while_the_weights_are_unchanged():
    rng = np.random.default_rng(5)
    layer = jn.layers.Conv2D(8, 8, 3, algorithm="winograd", rng=0)
    x = rng.standard_normal((2, 6, 6, 8)).astype(np.float32)

    def fresh():  # the same layer computed from scratch
        other = jn.layers.Conv2D(8, 8, 3, algorithm="winograd", rng=0)
        other.weight.assign(layer.weight.data)
        return other.forward(x)
    first = layer.forward(x)
    assert np.array_equal(layer.forward(x), first)
    layer.weight.data[1, 2, 3, 4] += 0.5  # in place, as an optimizer step does
    changed = layer.forward(x)
    assert not np.array_equal(changed, first)
    np.testing.assert_array_equal(changed, fresh())
    layer.weight.data = layer.weight.data * 2  # a new array
    np.testing.assert_array_equal(layer.forward(x), fresh())
    y64 = layer.forward(x.astype(np.float64))  # another compute dtype transforms again
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, fresh(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cin, algorithm, padding", [(1, "auto", "same"), (1, "im2col", "valid"), (3, "im2col", "same"),
                                                     (8, "winograd", "same"), (8, "winograd", "valid")])
def test_kept_views_follow_the_input_shape(cin, algorithm, padding):
    # A layer keeps its buffers and views between calls (Conv2D._im2col_plan, _winograd_plan);
    # any change of batch, image size, dtype or mode must give what a fresh layer computes.
    rng = np.random.default_rng(6)
    layer = jn.layers.Conv2D(cin, 4, 3, padding=padding, algorithm=algorithm, rng=0)
    layer.bias.data[...] = rng.standard_normal(4).astype(np.float32)
    for n, hw, dtype, training in [(5, 9, np.float32, False), (3, 9, np.float32, False), (5, 9, np.float32, True),
                                   (5, 11, np.float32, False), (5, 9, np.float64, False), (5, 9, np.float32, False)]:
        x = rng.standard_normal((n, hw, hw, cin)).astype(dtype)
        g = rng.standard_normal(layer.forward(x, training=training).shape)
        fresh = jn.layers.Conv2D(cin, 4, 3, padding=padding, algorithm=algorithm, rng=0)
        fresh.bias.assign(layer.bias.data)
        np.testing.assert_array_equal(layer.forward(x, training=training), fresh.forward(x, training=training))
        if training:
            np.testing.assert_array_equal(layer.backward(g), fresh.backward(g))
            for p, q in zip(layer.parameters(), fresh.parameters()):
                np.testing.assert_array_equal(p.grad, q.grad)
                p.grad[...] = 0
