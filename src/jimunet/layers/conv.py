"""2-D convolution on NHWC activations with HWIO weights: im2col and one GEMM, or
Winograd minimal filtering for stride-1 layers (``algorithm=``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._messages import shown
from .. import init as _init
from ..backend import xp_of
from ..functional import winograd as _wg
from ..functional.im2col import im2col_copy
from ..functional.padding import MAX_SIZE, conv_output_size, normalize_padding, pad_amounts, pair
from ..parallel import batch_blocks, get_num_threads, paccumulate_tmatmul, pfor, sum_blocks, thread_slots
from ..random import resolve_rng
from . import conv_plans as _plans
from .base import Layer, check_bool, check_dtype_arg, register


@dataclass(eq=False)
class ConvCache:
    """What ``Conv2D.backward`` needs from its forward call.

    ``plan`` is the im2col or Winograd plan (``conv_plans``) lent to this call: its buffers
    hold the call's input as the weight gradient reads it (the im2col columns, or the
    padded input and, in training, its transformed Winograd tiles)."""

    algorithm: tuple  # ("im2col", None) or ("winograd", (mh, mw))
    plan: dict
    x_shape: tuple
    pads: tuple
    out_hw: tuple

    def __deepcopy__(self, memo):
        # A copy of the layer starts with empty scratch space (``conv_plans.Workspace``), so
        # without the plan this cache holds: it is forwarded again before a backward.
        return None


def _fmt_pad(padding):
    return padding if isinstance(padding, str) else [list(padding[0]), list(padding[1])]


ALGORITHMS = ("auto", "im2col", "winograd")


def _tile_pair(tile, what="Conv2D winograd_tile"):
    return None if tile is None else pair(tile, what)


#: ``auto`` sends a stride-1 layer to Winograd only with at least this many input and
#: output channels: the element-wise stage is a batch of (tiles × C_in)·(C_in × C_out)
#: GEMMs, and with few channels the tile transforms cost more than the multiplications
#: they save (measured: MNIST's conv1, one input channel, runs 2.6-4x slower; see
#: BENCHMARKS.md). The same rule, channels swapped, decides ``dX``.
AUTO_MIN_CHANNELS = 8

#: What a Winograd layer's training pass keeps for its weight gradient: ``"tiles"``, the
#: transformed input (2.25x the input's bytes with 4x4 tiles), ``"input"``, the padded
#: input, transformed again in backward, or ``"auto"``: the tiles when they take at most
#: ``WINOGRAD_KEEP_TILES_BYTES``, else the input. Every choice gives the same bits. See
#: BENCHMARKS.md ("#23 speed steps", step 4).
WINOGRAD_TRAINING_KEEPS = "auto"

#: ``"auto"``'s limit, per layer: ``mnist_resnet``'s tiles at batch 128 (at most 9.4 MB) are
#: kept, airbench's at batch 1024 (75-216 MB) are not. Measured on airbench: 17% less peak
#: memory (1,670 -> 1,391 MB, below PyTorch's) for 4% more CPU per step.
WINOGRAD_KEEP_TILES_BYTES = 32 << 20


def auto_tile(kernel, out_hw, in_channels, out_channels):
    """The Winograd tile ``auto`` uses for a stride-1 convolution, or None for im2col.

    The rule, from single-layer A/B measurements (``benchmarks/conv_algorithms.py``,
    tables in BENCHMARKS.md): Winograd for kernels of 3 to 5 taps per axis, an output of
    at least 4×4 and at least ``AUTO_MIN_CHANNELS`` input and output channels. The tile
    per axis is the one of 4 and 3 with the fewest transformed points,
    ``ceil(n/m)·(m+k-1)`` for an output of ``n`` and a kernel of ``k`` (ties: the larger
    tile; 2 never has fewer for outputs of 4 or more). The element-wise GEMMs and both
    transforms scale with these points, and the last tile's overrun is computed and
    thrown away. So 14 outputs of a 5-tap kernel take 4 (4 tiles · 8 points = 32, against
    5 · 7 = 35 for 3), 6 take 3 (14 against 16). All tiles it picks have ``m + k - 1 <= 8``
    points, within the tested float32 bound.
    """
    if min(in_channels, out_channels) < AUTO_MIN_CHANNELS:
        return None
    tile = []
    for k, n in zip(kernel, out_hw):
        if not 3 <= k <= 5 or n < 4:
            return None
        tile.append(min((4, 3), key=lambda m: (-(-n // m) * (m + k - 1), -m)))
    return tuple(tile)


@register
class Conv2D(Layer):
    """2-D convolution (cross-correlation); pads ``"same"`` by default, unlike Keras and PyTorch.

    The default keeps the output at ``ceil(input / stride)``, as the TensorFlow MNIST sample's
    layers do; Keras's ``Conv2D`` defaults to ``"valid"`` and PyTorch's ``Conv2d`` to
    ``padding=0``: pass ``padding="valid"`` (or 0) for their output sizes.

    Two algorithms compute it (``algorithm=``):

    * ``"im2col"``: forward copies every window into a row of an im2col matrix and
      multiplies it once by the weight reshaped to ``(kh*kw*in, out)``. Backward:
      ``dW = colsᵀ·dY``, ``db = Σ dY`` and ``dX`` = for each kernel offset,
      ``dY·W[i,j]ᵀ`` added into the shifted input slab that offset read from. Exact up to
      the GEMM's own rounding (relative error ~1e-7 in float32, ~1e-16 in float64).
    * ``"winograd"`` (stride 1, kernels of 2 taps or more per axis): Winograd minimal
      filtering ``F(m×m, k×k)`` (``jimunet.functional.winograd``) for the forward pass and
      for ``dX`` (a stride-1 correlation of ``dY`` with the kernel rotated by 180° and its
      channels swapped), and ``F(k×k, m×m)`` for ``dW`` (the input correlated with ``dY``;
      it reuses the forward pass's transformed input tiles). Each ``m×m`` output tile
      costs ``(m+k-1)²`` multiplications per channel pair instead of ``m²k²``. The
      transforms amplify rounding: relative error (``max|err| / max|exact|``) of at most
      5e-5 in float32 (measured on MNIST's conv2, 5 seeds: at most 6e-6 forward, 8e-6
      ``dX``, 6e-6 ``dW`` with its 4×4 tiles, 5e-6 / 7e-6 / 6e-6 with 3×3 tiles; at most
      7e-6 over the tests' shapes, up to 256 input channels) and 1e-12 in float64 (measured
      ~1e-14); tested for every kernel and tile ``auto`` uses.
    * ``"auto"`` (default): Winograd where it was measured to be faster (stride 1,
      kernel 3 to 5 taps per axis, output at least 4×4, at least 8 input and 8 output
      channels), with the 4×4 or 3×3 tiles that transform the fewest points (see
      ``auto_tile`` and BENCHMARKS.md), im2col everywhere else;
      ``dX`` is decided the same way, channels swapped. It only picks tiles within the
      float32 bound above.

    Args:
        in_channels: channels of the input (its last axis).
        out_channels: number of filters.
        kernel_size: int or ``(kh, kw)``; odd and even sizes both work.
        stride: int or ``(sh, sw)``, each ≥ 1.
        padding: ``"same"`` (the default; TensorFlow's rule: output ``ceil(n/stride)``, the
            smaller half of the padding before), ``"valid"`` (none), or an int / pair of zero
            rows per side.
        use_bias: add a learned bias per output channel.
        weight_init, bias_init: initialisers (see ``jimunet.init``) or their names.
        rng: Generator (or int seed) for the initial weights; default ``jn.set_seed``'s.
        dtype: parameter dtype, float32 by default.
        algorithm: ``"auto"``, ``"im2col"`` or ``"winograd"`` (see above).
        winograd_tile: output tile ``m`` (int or ``(mh, mw)``) for Winograd; None lets
            ``auto`` choose (forced ``"winograd"`` then uses 4, or less where the kernel
            needs it). ``m + k - 1`` may not exceed 8 per axis.

    Shape:
        input ``(N, H, W, in_channels)`` → output ``(N, H_out, W_out, out_channels)``;
        weight ``(kh, kw, in_channels, out_channels)``, bias ``(out_channels,)``.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> conv = jn.layers.Conv2D(1, 32, 5)
        >>> conv(np.zeros((2, 28, 28, 1), np.float32)).shape
        (2, 28, 28, 32)
        >>> jn.layers.Conv2D(32, 64, 5).algorithm_for((14, 14, 32))
        ('winograd', (4, 4))
    """

    per_sample = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding="same",
                 use_bias: bool = True, weight_init="glorot_uniform", bias_init="zeros", rng=None,
                 dtype=np.float32, algorithm: str = "auto", winograd_tile=None):
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE:
                raise ValueError(f"Conv2D: {name} must be a positive int (at most {MAX_SIZE:,}), got {shown(v)}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "Conv2D kernel_size")
        self.stride = pair(stride, "Conv2D stride")
        self.padding = normalize_padding(padding, "Conv2D padding")
        self.use_bias = check_bool("Conv2D", "use_bias", use_bias)
        self.algorithm, self.winograd_tile = self._check_algorithm(algorithm, winograd_tile)
        self.weight_init, self.bias_init = _init.get(weight_init), _init.get(bias_init)
        dtype = check_dtype_arg(dtype, "Conv2D")
        rng = resolve_rng(rng)
        kh, kw = self.kernel_size
        self.weight = self._new_parameter(self.weight_init, (kh, kw, self.in_channels, self.out_channels), rng,
                                          dtype, "weight")
        self.bias = self._new_parameter(self.bias_init, (self.out_channels,), rng, dtype, "bias") \
            if self.use_bias else None
        self._work = _plans.Workspace()  # persistent scratch and plans, shared by every use

    @property
    def last_algorithm(self):
        """``(name, tile)`` of the latest forward pass (its ``cache``); None before one."""
        return None if self.cache is None else self.cache.algorithm

    def _check_algorithm(self, algorithm, tile):
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise ValueError(f"Conv2D algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                             f"got {shown(algorithm)}")
        tile = _tile_pair(tile)
        if algorithm == "winograd" and (self.stride != (1, 1) or min(self.kernel_size) < 2):
            raise ValueError(f"Conv2D algorithm='winograd' needs stride 1 and a kernel of at least 2x2, "
                             f"got stride {self.stride} and kernel {self.kernel_size}")
        if tile is not None:
            for m, k in zip(tile, self.kernel_size):
                if m + k - 1 > _wg.MAX_ALPHA:
                    raise ValueError(f"Conv2D winograd_tile {tile} with kernel {self.kernel_size}: tile + "
                                     f"kernel - 1 must be <= {_wg.MAX_ALPHA} per axis (accuracy bound); "
                                     f"use a tile of at most {_wg.MAX_ALPHA + 1 - k}")
        return algorithm, tile

    def describe(self) -> str:
        kh, kw = self.kernel_size
        return f"Conv2D({self.in_channels}->{self.out_channels}, {kh}x{kw}, stride={self.stride}, " \
               f"padding={_fmt_pad(self.padding)})"

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def _geometry(self, hw):
        pads = pad_amounts(hw, self.kernel_size, self.stride, self.padding)
        out_hw = conv_output_size(hw, self.kernel_size, self.stride, self.padding)
        if out_hw[0] < 1 or out_hw[1] < 1:
            raise ValueError(f"{self.describe()}: input of height x width {tuple(hw)} is smaller than the "
                             f"{self.kernel_size[0]}x{self.kernel_size[1]} kernel after padding")
        return pads, out_hw

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] != self.in_channels:
            raise ValueError(f"{self.describe()}: expected per-sample input (height, width, "
                             f"{self.in_channels}), got {tuple(input_shape)}")
        _, out_hw = self._geometry(input_shape[:2])
        return (*out_hw, self.out_channels)

    def algorithm_for(self, input_shape):
        """``("im2col", None)`` or ``("winograd", (mh, mw))``: what the forward pass runs on
        per-sample input ``(H, W, C)``."""
        oh, ow, _ = self.output_shape(input_shape)
        return self._choose((oh, ow))

    def _choose(self, out_hw, channels=None):
        """``(name, tile)`` for a stride-1 correlation with output ``out_hw`` and
        ``channels = (in, out)`` (the layer's own by default; swapped for dX)."""
        if self.algorithm == "im2col" or self.stride != (1, 1):
            return "im2col", None
        if self.device != "cpu":  # the Winograd rule was measured on CPUs; GPUs run im2col
            if self.algorithm == "winograd":
                raise ValueError(f"{self.describe()}: algorithm='winograd' runs on the CPU only; use 'auto' or "
                                 "'im2col' on a GPU")
            return "im2col", None
        if self.algorithm == "winograd":
            tile = self.winograd_tile or tuple(min(4, _wg.MAX_ALPHA + 1 - k) for k in self.kernel_size)
            return "winograd", tile
        tile = auto_tile(self.kernel_size, out_hw, *(channels or (self.in_channels, self.out_channels)))
        if tile is None:
            return "im2col", None
        return "winograd", self.winograd_tile or tile

    def multiplications(self, input_shape, algorithm=None):
        """Multiplications of the forward pass for one image (bias excluded), for the
        algorithm it runs (or the ``(name, tile)`` given)."""
        oh, ow, _ = self.output_shape(input_shape)
        name, tile = algorithm or self._choose((oh, ow))
        return _wg.multiplications((oh, ow), self.kernel_size, self.in_channels, self.out_channels,
                                   tile if name == "winograd" else None)

    def flops(self, input_shape):
        oh, ow, o = self.output_shape(input_shape)
        kh, kw = self.kernel_size
        return 2 * oh * ow * o * kh * kw * self.in_channels + (oh * ow * o if self.use_bias else 0)

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": _fmt_pad(self.padding), "use_bias": self.use_bias,
                "dtype": str(self.weight.data.dtype), "algorithm": self.algorithm,
                "winograd_tile": None if self.winograd_tile is None else list(self.winograd_tile)}

    def forward(self, x, training: bool = False):
        self._check_input(x, 4, self.in_channels, "NHWC batch (batch, height, width, channels)")
        pads, out_hw = self._geometry(x.shape[1:3])
        algorithm = self._choose(out_hw)
        if algorithm[0] == "winograd":
            # In training the weight gradient reads the transformed input tiles (kept, or made again).
            keep = self._training_keep(x, out_hw, algorithm[1]) if training else None
            y, plan = self._winograd(x, pads, self.weight.data, algorithm[1], "fwd", self.bias,
                                     keep=keep, replacing=self.cache)
        else:
            y, plan = self._im2col_forward(x, pads, out_hw)
        self.cache = ConvCache(algorithm, plan, x.shape, pads, out_hw)
        _plans.lend(plan, self.cache)
        return y

    def _training_keep(self, x, out_hw, tile):
        """``"tiles"`` or ``"input"``: what this training pass keeps (``WINOGRAD_TRAINING_KEEPS``)."""
        if WINOGRAD_TRAINING_KEEPS != "auto":
            return WINOGRAD_TRAINING_KEEPS
        per_image = _wg.multiplications(out_hw, self.kernel_size, self.in_channels, 1, tile)  # α²·tiles·C values
        nbytes = x.shape[0] * per_image * np.result_type(x.dtype, self.weight.data.dtype).itemsize
        return "tiles" if nbytes <= WINOGRAD_KEEP_TILES_BYTES else "input"

    def _im2col_forward(self, x, pads, out_hw):
        """The output by im2col and one GEMM per block of samples, and the plan whose
        columns ``backward`` reads."""
        xp = xp_of(x)
        n = x.shape[0]
        (oh, ow), rows = out_hw, out_hw[0] * out_hw[1]
        parts = batch_blocks(n) if xp is np else [slice(0, n)]  # pfor runs a GPU batch whole
        bias_row = x.shape[3] == 1 and self.bias is not None  # see conv_plans.im2col_plan
        sig = (x.shape, x.dtype, xp, pads, tuple((p.start, p.stop) for p in parts), bias_row)
        plan = self._work.plan("im2col", sig, replacing=self.cache, build=lambda: _plans.im2col_plan(
            x, pads, out_hw, self.kernel_size, self.stride, parts, bias_row))
        w2 = self.weight.data.reshape(-1, self.out_channels)
        if plan["bias_row"]:
            w2 = xp.concatenate([w2, self.bias.data.reshape(1, -1).astype(w2.dtype, copy=False)])
        y = xp.empty((n * rows, self.out_channels), np.result_type(x.dtype, w2.dtype))
        by_start = plan["parts"]
        add_bias = self.bias is not None and not plan["bias_row"]

        def block(sl):  # samples sl: pad, im2col, GEMM, bias; each writes only its own rows
            interior, out, copy, a = by_start[sl.start]
            if interior is not None:
                interior[...] = x[sl]
            dst, src = copy or im2col_copy(x[sl], self.kernel_size, self.stride, (oh, ow), out, plan["transposed"])
            dst[...] = src
            r = slice(sl.start * rows, sl.stop * rows)
            xp.matmul(a, w2, out=y[r])
            if add_bias:
                y[r] += self.bias.data
        pfor(block, n, n * rows * plan["k"], like=x, parts=plan["slices"])
        return y.reshape(n, oh, ow, self.out_channels), plan

    def _winograd(self, src, pads, w, tile, key, bias=None, keep=None, replacing=None):
        """Stride-1 correlation of ``src`` (``(N, H, W, C)``, zero-padded by ``pads``) with
        the HWIO kernel ``w`` by Winograd ``F(tile, kernel)``, plus ``bias``.

        Returns the output and the plan (``conv_plans.winograd_plan``, kept under ``key``),
        which the weight gradient reads: the chunks and what ``keep`` says (``"tiles"``: the
        transformed input tiles; ``"input"``: the padded input). ``replacing``: the cache this
        call's replaces (its plan may be reused). dX's calls (``key`` "bwd") and those keeping
        the tiles pad one chunk at a time; an inference pass pads its blocks whole, as before."""
        xp = xp_of(src)
        n, h, wd, c = src.shape
        (pt, _), (pl, _) = pads
        dt = np.result_type(src.dtype, w.dtype)
        chunked = keep == "tiles" or key == "bwd"
        sig = (tuple(src.shape), np.dtype(dt), pads, tuple(w.shape), tuple(tile), keep, chunked, xp,
               tuple((b.start, b.stop) for b in batch_blocks(n)), get_num_threads())  # scratch per thread slot
        plan = self._work.plan(key, sig, replacing=replacing, build=lambda: _plans.winograd_plan(
            src.shape, dt, pads, w.shape, tile, keep, chunked, xp))
        u = self._transformed_filter(w, tile, dt, reuse=key == "fwd" and keep is None)
        (oh, ow), o = plan["out_hw"], w.shape[3]
        y = xp.empty((n, oh, ow, o), dt)
        b = None if bias is None else bias.data.astype(dt, copy=False)
        ext, samples, chunk_plans = plan["ext"], plan["block_samples"], plan["chunk_plans"]

        def run(block_ids):
            for bi in range(block_ids.start, block_ids.stop):
                if not chunked:
                    ext[samples[bi], pt:pt + h, pl:pl + wd, :] = src[samples[bi]]
                for sl, chunk, interior in chunk_plans[bi]:
                    if chunked:
                        interior[...] = src[sl]
                    chunk.correlate(u, y[sl], b)
        pfor(run, len(samples), n * oh * ow * max(c, o) * 8, blocks=len(samples), like=src)
        return y, plan

    def _transformed_filter(self, w, tile, dtype, reuse):
        """``U``, the kernel ``w`` in the Winograd domain of ``F(tile, kernel)``, in ``dtype``.

        With ``reuse`` (inference) the last ``U`` is kept with a copy of the weights it came
        from and served again while they are bitwise the same: the comparison costs about a
        tenth of the transform (MNIST's conv2: 0.03 vs 0.27 ms), which every 100-image
        ``predict`` chunk would otherwise repeat. Any change to the weights, in place or
        not, makes it transform again."""
        xp = xp_of(w)
        kept = self._work.kept.get("winograd_u") if reuse else None
        if kept is not None and kept[0] == (tuple(tile), np.dtype(dtype), w.shape, w.dtype) \
                and xp.array_equal(kept[1], w):
            return kept[2]
        kh, kw, c, o = w.shape
        u = xp.empty(((tile[0] + kh - 1) * (tile[1] + kw - 1), c, o), dtype)
        # Inside a region even though it is one small GEMM: BLAS stays single-threaded there
        # (a multi-threaded BLAS call on a loaded machine costs more than the whole product).
        pfor(lambda _: _wg.transform_filter(w, tile, out=u), 1, like=w)
        if reuse:
            self._work.kept["winograd_u"] = ((tuple(tile), np.dtype(dtype), w.shape, w.dtype), w.copy(), u)
        return u

    def _winograd_weight_grad(self, dy, plan):
        """``dW`` and ``db`` (added into the parameters' ``.grad``) by Winograd ``F(k, m)``:
        the input tiles of the forward pass (kept, or transformed again) against the
        ``m×m`` tiles of ``dY``. Each block of images sums into its own buffer and the
        buffers are added in block order, so the result does not depend on the threads."""
        xp = xp_of(dy)
        n, oh, ow, o = dy.shape
        (mh, mw), (th, tw) = plan["tile"], plan["tiles"]
        kh, kw = self.kernel_size
        c, blocks, samples = self.in_channels, plan["blocks"], plan["block_samples"]
        a2 = (mh + kh - 1) * (mw + kw - 1)
        dt = np.result_type(dy.dtype, plan["ext"].dtype)
        whole = oh == th * mh and ow == tw * mw
        # dY zero-padded to whole tiles, a chunk at a time in each block's own buffer (whose
        # border is never written): a copy of the whole dY would be as big as the layer's output.
        slots = plan["slots"]
        dypad = None if whole else self._work.buffer("dw_dy", (max(slots) + 1, plan["largest"], th * mh, tw * mw, o),
                                                     dt, xp, zeros=True)
        partial = xp.empty((len(blocks), 2, a2, c, o), dt)
        db = xp.empty((len(blocks), o), dt) if self.bias is not None else None
        dw_chunks = _plans.weight_grad_chunks(plan, dt, self.kernel_size, self.in_channels, self.out_channels)

        def run(block_ids):
            for bi in range(block_ids.start, block_ids.stop):
                for i, (sl, chunk) in enumerate(dw_chunks[bi]):
                    d = dy[sl] if whole else dypad[slots[bi], :sl.stop - sl.start]
                    if not whole:
                        d[:, :oh, :ow, :] = dy[sl]
                    target = partial[bi, 0 if i == 0 else 1]  # the first chunk writes, later ones add
                    chunk.accumulate(d, target)
                    if i:
                        partial[bi, 0] += target
                if db is not None:
                    dy[samples[bi]].sum(axis=(0, 1, 2), out=db[bi])
        # The scratch slots are the forward pass's: with another thread count since, blocks
        # of one slot could run at once, so they all run in turn on this thread.
        same = slots == thread_slots(len(blocks))
        pfor(run, len(blocks), n * oh * ow * max(c, o) * 8, blocks=len(blocks), like=dy,
             parts=None if same else [slice(0, len(blocks))])

        def finish(dw, db_total=None):  # the whole sum first, then one add into .grad
            pfor(lambda _: xp.add(self.weight.grad, _wg.finish_weight_grad(dw, (mh, mw), (kh, kw)),
                                  out=self.weight.grad), 1, like=dy)
            if db_total is not None:
                xp.add(self.bias.grad, db_total, out=self.bias.grad)
        sum_blocks([partial[:, 0]] + ([] if db is None else [db]), finish)

    def backward(self, grad, input_grad: bool = True):
        cache = self.cache
        if cache is None:
            raise self._no_forward()
        xp = xp_of(grad)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        plan, x_shape, pads, (oh, ow) = cache.plan, cache.x_shape, cache.pads, cache.out_hw
        n = x_shape[0]
        self._check_grad(grad, (n, oh, ow, self.out_channels))
        if cache.algorithm[0] == "winograd":
            self._winograd_weight_grad(grad, plan)
            xpad_shape = None
        else:
            cols, xpad_shape = plan["cols"], plan["pad_shape"]
            starts = np.cumsum([0] + [len(a) for a in cols])  # each block's rows
            paccumulate_tmatmul(cols, grad.reshape(-1, self.out_channels),
                                self.weight.grad.reshape(cols[0].shape[1], self.out_channels),
                                b_sum_out=None if self.bias is None else self.bias.grad,
                                parts=[slice(int(a), int(b)) for a, b in zip(starts, starts[1:])])
        dy = grad.reshape(-1, self.out_channels)
        if not input_grad:
            return None
        (pt, pb), (pl, pr) = pads
        w = self.weight.data
        if self.algorithm != "im2col" and self.stride == (1, 1):
            # dX is the stride-1 "full" correlation of dY with the kernel turned by 180° and
            # its channels swapped; padding dY by k-1-p on each side yields just X's region.
            back_pads = ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
            if min(min(p) for p in back_pads) >= 0:
                h, wd = x_shape[1:3]
                name, tile = self._choose_input_grad((h, wd))
                if name == "winograd":
                    dx, _ = self._winograd(grad, back_pads, w[::-1, ::-1].transpose(0, 1, 3, 2), tile, "bwd")
                    return dx
        if xpad_shape is None:
            xpad_shape = (n, x_shape[1] + pt + pb, x_shape[2] + pl + pr, x_shape[3])
        c, rows = self.in_channels, oh * ow
        dxpad = xp.empty(xpad_shape, dtype=np.result_type(grad.dtype, w.dtype))

        def block(sl):
            # dX is a sum over kernel offsets: the slab each offset read gets dY·W[i,j]ᵀ.
            # Small GEMMs straight into the slabs avoid a (rows × kh·kw·C) dcols buffer.
            dxb = dxpad[sl]
            dxb[...] = 0
            dyb = dy[sl.start * rows:sl.stop * rows]
            m = sl.stop - sl.start
            for i in range(kh):
                for j in range(kw):
                    dxb[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] += \
                        xp.matmul(dyb, w[i, j].T).reshape(m, oh, ow, c)
        pfor(block, n, dy.size * kh * kw, like=dy, parts=batch_blocks(n))
        return dxpad[:, pt:pt + x_shape[1], pl:pl + x_shape[2], :]

    def _choose_input_grad(self, in_hw):
        """The algorithm for ``dX``: a stride-1 correlation from ``out_channels`` to
        ``in_channels`` whose output is the input."""
        return self._choose(in_hw, (self.out_channels, self.in_channels))
