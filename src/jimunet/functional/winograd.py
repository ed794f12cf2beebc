"""Winograd minimal filtering: stride-1 2-D correlation with fewer multiplications.

One dimension first. ``F(m, r)`` computes ``m`` outputs of a correlation with an ``r``-tap
filter, ``y_i = Σ_k g_k d_{i+k}``, from ``α = m + r - 1`` inputs with only ``α``
multiplications instead of ``m·r``::

    y = Aᵀ [ (G g) ⊙ (Bᵀ d) ]          Aᵀ: m×α,  G: α×r,  Bᵀ: α×α

How the matrices are built (Toom–Cook / Cook–Toom, as used by Lavin & Gray, 2016):

* Correlation is the transpose of polynomial multiplication. If ``h`` has ``m``
  coefficients, ``s(x) = g(x) h(x)`` has ``α`` of them, ``s = C_g h`` with
  ``C_g[i + k, i] = g_k``, and ``(C_gᵀ d)_i = Σ_k g_k d_{i+k}`` is exactly ``y``.
* ``s`` is found by evaluating ``g`` and ``h`` at ``α`` points, multiplying the values
  (the only ``α`` multiplications that involve both operands) and interpolating:
  ``C_g = V⁻¹ diag(G g) H``, where ``G`` and ``H`` evaluate ``g`` and ``h`` (rows
  ``[1, p, p², ...]``) and ``V`` evaluates a polynomial with ``α`` coefficients.
  Transposing gives ``y = Hᵀ [(G g) ⊙ (V⁻ᵀ d)]``, so ``Aᵀ = Hᵀ`` and ``Bᵀ = V⁻ᵀ``.
* One of the points is ``∞``: "evaluating at ∞" means taking the leading coefficient.
  With finite points ``p_0 … p_{α-2}`` and ``M(x) = Π (x - p_l)``, Lagrange interpolation
  reads ``s(x) = Σ_j s(p_j) L_j(x) + s_∞ M(x)`` with ``L_j(x) = Π_{l≠j} (x - p_l) / N_j``
  and ``N_j = Π_{l≠j} (p_j - p_l)``. So row ``j`` of ``V⁻ᵀ`` holds the coefficients of
  ``L_j`` and its last row those of ``M``. The scale ``1/N_j`` is moved from ``Bᵀ`` into
  ``G`` (``diag`` factors commute through the ``⊙``), which leaves ``Bᵀ`` with the small
  integer-and-half coefficients of ``Π_{l≠j} (x - p_l)``.

Everything is computed in exact rational arithmetic (``fractions.Fraction``) and rounded
to floating point once, so the only rounding is that of the convolution itself.

Why the points ``0, 1, -1, 2, -2, 1/2, -1/2, ∞`` (the first ``α - 1`` finite ones, then
``∞``): the transforms' entries are powers of the points and products of their
differences, and rounding error grows with their magnitude (Vandermonde matrices are
notoriously ill-conditioned). ``0`` and ``∞`` give rows with a single 1; ``±1`` give
entries of size 1; ``±2`` and their reciprocals ``±1/2`` keep the largest powers small
and are exact in binary. Points beyond these (``±3``, ``±1/3``, ...) cost float32
accuracy fast (a prototype's ``F(6×6, 5×5)``, two points more than ``F(4×4, 5×5)``, had
about 100× its error), which is why tiles are limited to ``α ≤ 8`` (``F(4×4, 5×5)``,
``F(6×6, 3×3)``, ...): see ``MAX_ALPHA``.

Two dimensions nest the 1-D algorithm, one per axis: for a tile ``d`` (``αh×αw``) and
kernel ``g`` (``kh×kw``), ``Y = Aₕᵀ [(Gₕ g G_wᵀ) ⊙ (Bₕᵀ d B_w)] A_w``. Flattening the
tile row by row turns each two-sided product into one matrix, the Kronecker product
(``kron(Bₕᵀ, B_wᵀ)`` etc.), so a whole batch of tiles could be transformed by one GEMM;
``_two_sided`` instead applies the two factors as two GEMMs, rows then columns, which
does ``αh + αw`` rather than ``αh·αw`` multiply-adds per element and measured 2-3×
faster for the tile transforms (the Kronecker form is kept for the small filter
transform, done once per call).
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

from .._messages import shown
from ..backend import as_strided, xp_of

#: Interpolation points in the order they are taken; ``∞`` is always added as the last one.
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2), Fraction(-1, 2))

#: Largest tile ``α = m + r - 1`` (per axis) the points above support.
MAX_ALPHA = len(POINTS) + 1


def _poly_from_roots(roots):
    """Coefficients (lowest first) of ``Π (x - p)`` over ``roots``."""
    coeffs = [Fraction(1)]
    for p in roots:
        nxt = [Fraction(0)] * (len(coeffs) + 1)
        for i, c in enumerate(coeffs):
            nxt[i] -= p * c
            nxt[i + 1] += c
        coeffs = nxt
    return coeffs


@lru_cache(maxsize=None)
def transform_matrices_exact(m: int, r: int):
    """``(Aᵀ, G, Bᵀ)`` of ``F(m, r)`` as nested tuples of ``Fraction`` (exact).

    ``Aᵀ`` is ``m×α``, ``G`` is ``α×r``, ``Bᵀ`` is ``α×α`` with ``α = m + r - 1``.
    """
    if not (isinstance(m, int) and isinstance(r, int)) or m < 1 or r < 1:
        raise ValueError(f"winograd: tile size m and kernel size r must be positive ints, got {shown(m)}, {shown(r)}")
    alpha = m + r - 1
    if alpha > MAX_ALPHA:
        raise ValueError(f"winograd: F({m}, {r}) needs a tile of {alpha} > {MAX_ALPHA} points; "
                         f"use m <= {MAX_ALPHA + 1 - r}")
    pts = POINTS[:alpha - 1]
    # Aᵀ = Hᵀ: column j evaluates an m-coefficient polynomial at p_j; ∞ takes its leading one.
    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g, bt = [], []
    for j, p in enumerate(pts):
        others = pts[:j] + pts[j + 1:]
        n_j = Fraction(1)
        for q in others:
            n_j *= p - q
        g.append([p ** k / n_j for k in range(r)])
        bt.append(_poly_from_roots(others) + [Fraction(0)])  # degree α-2, padded to α
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    bt.append(_poly_from_roots(pts))  # M(x), degree α-1
    return tuple(map(tuple, at)), tuple(map(tuple, g)), tuple(map(tuple, bt))


@lru_cache(maxsize=None)
def transform_matrices(m: int, r: int):
    """``(Aᵀ, G, Bᵀ)`` of ``F(m, r)`` as float64 arrays (each entry rounded once)."""
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in transform_matrices_exact(m, r))


@lru_cache(maxsize=None)
def transforms_2d(tile, kernel):
    """Kronecker-product transforms of ``F(mh×mw, kh×kw)`` for tiles flattened row by row.

    Returns float64 ``(A2ᵀ, G2, B2ᵀ)`` of shapes ``(mh·mw, αh·αw)``, ``(αh·αw, kh·kw)``,
    ``(αh·αw, αh·αw)``. An axis with a 1-tap kernel uses ``F(m, 1)``, the identity.
    """
    (mh, mw), (kh, kw) = tile, kernel
    ath, gh, bth = transform_matrices(mh, kh)
    atw, gw, btw = transform_matrices(mw, kw)
    return np.kron(ath, atw), np.kron(gh, gw), np.kron(bth, btw)


def multiplications(out_hw, kernel, in_channels, out_channels, tile=None):
    """Multiplications of one image's stride-1 correlation: ``im2col`` (``tile=None``,
    ``oh·ow·kh·kw·C·O``) or Winograd ``F(tile, kernel)`` (``α² · C·O`` per tile, the
    element-wise stage; the transforms are additions and small constant scalings, about
    ``α²·(C + O)`` per tile, and are counted separately by ``transform_cost``)."""
    (oh, ow), (kh, kw) = out_hw, kernel
    if tile is None:
        return oh * ow * kh * kw * in_channels * out_channels
    (mh, mw) = tile
    tiles = -(-oh // mh) * -(-ow // mw)
    return tiles * (mh + kh - 1) * (mw + kw - 1) * in_channels * out_channels


def tiles_view(xpad, tile, kernel, tiles_hw):
    """Read-only view ``(N, th, tw, αh, αw, C)`` of the overlapping input tiles (no copy).

    Tile ``(ty, tx)`` starts at row ``ty·mh`` and column ``tx·mw``; ``xpad`` must hold at
    least ``th·mh + kh - 1`` rows and ``tw·mw + kw - 1`` columns."""
    n, _, _, c = xpad.shape
    (mh, mw), (kh, kw), (th, tw) = tile, kernel, tiles_hw
    sn, sh, sw, sc = xpad.strides
    return as_strided(xpad, (n, th, tw, mh + kh - 1, mw + kw - 1, c), (sn, sh * mh, sw * mw, sh, sw, sc))


def transform_filter(w, tile, out=None):
    """``U = G2 · W``: the HWIO filter ``(kh, kw, C, O)`` in the Winograd domain, ``(α², C, O)``.

    Computed in float64 and rounded once to ``w``'s dtype (it is small)."""
    xp = xp_of(w)
    kh, kw, c, o = w.shape
    _, g2, _ = transforms_2d(tuple(tile), (kh, kw))
    u = xp.matmul(xp.asarray(g2), w.reshape(kh * kw, c * o).astype(np.float64))
    if out is None:
        return u.astype(w.dtype).reshape(-1, c, o)
    out[...] = u.reshape(out.shape)
    return out


def scratch_size(tile, kernel, tiles, in_channels, out_channels):
    """Elements in each scratch buffer a ``ChunkPlan`` or ``WeightGradChunk`` of ``tiles`` tiles needs
    (its matrices' rows are ``ROW_PAD`` apart)."""
    (mh, mw), (kh, kw) = tile, kernel
    return (mh + kh - 1) * ((mw + kw - 1) * tiles * max(in_channels, out_channels) + ROW_PAD)


def _per_axis(xp, dtype, tile, kernel, which):
    """Matrix ``which`` (0: Aᵀ, 1: G, 2: Bᵀ) of ``F(mh, kh)`` and of ``F(mw, kw)``, in ``dtype``."""
    (mh, mw), (kh, kw) = tile, kernel
    return (xp.asarray(transform_matrices(mh, kh)[which], dtype=dtype),
            xp.asarray(transform_matrices(mw, kw)[which], dtype=dtype))


#: Elements between the end of one row of a scratch matrix and the start of the next. Rows
#: of a power-of-two length in bytes all fall in the same cache sets; one cache line of
#: offset per row (64 bytes in float32) measured 1.8x faster transform GEMMs for 8-point
#: tiles, whose rows are 4 KiB multiples long.
ROW_PAD = 16


def _rows(buf, n, length):
    """An ``(n, length)`` view of the flat ``buf``, rows ``length + ROW_PAD`` elements apart."""
    return buf[:n * (length + ROW_PAD)].reshape(n, length + ROW_PAD)[:, :length]


def _spans(n, m):
    """``(first tile, tiles, cells of each)`` covering ``n`` cells with ``m``-cell tiles: the
    whole tiles, then the part of the last one that is inside."""
    whole = n // m
    return ([(0, whole, m)] if whole else []) + ([(whole, 1, n % m)] if n % m else [])


def _two_sided(left_h, left_w, x, rows, out):
    """``out[i, j, r] = Σ_ab left_h[i, a] · left_w[j, b] · x[a, b, r]`` for a batch of tiles,
    as two GEMM steps ``(left, right, out)`` for ``matmul``: rows, then columns (a batch of
    ``pw×qw`` products). ``x``: ``(qh, qw·R)``; ``rows``: ``(ph, qw·R)``; ``out``: ``(ph, pw·R)``.

    The same as one GEMM with ``kron(left_h, left_w)``, but with ``qh + qw`` instead of
    ``qh·qw`` multiply-adds per element: measured 2-3× faster for 8×8 tiles."""
    (ph, _), (pw, qw) = left_h.shape, left_w.shape
    return (left_h, x, rows), (left_w, rows.reshape(ph, qw, -1), out.reshape(ph, pw, -1))


def _input_transform(xp, dtype, xpad, tile, kernel, tiles_hw, gather_buf, rows_buf, v):
    """``V = Bᵀ d B`` for every tile of the padded chunk ``xpad``: ``(tiles, gather, steps)``.

    ``gather[...] = tiles`` puts element ``(a, b)`` of every tile in row ``(a, b)`` of
    ``gather_buf``, in ``(n, ty, tx)`` order; then ``steps`` (see ``_two_sided``) transform
    the rows into ``rows_buf`` and the columns into ``v`` (``(αh, αw·T·C)``). ``Bᵀ`` depends
    on the interpolation points only, so the same ``V`` serves the forward pass ``F(m, k)``
    and the weight gradient ``F(k, m)``."""
    s, _, _, c = xpad.shape
    (mh, mw), (kh, kw), (th, tw) = tile, kernel, tiles_hw
    ah, aw = mh + kh - 1, mw + kw - 1
    n = aw * s * th * tw * c
    gather = _rows(gather_buf, ah, n)
    tiles = tiles_view(xpad, (mh, mw), (kh, kw), (th, tw)).transpose(3, 4, 0, 1, 2, 5)
    bth, btw = _per_axis(xp, dtype, tile, kernel, 2)
    return tiles, gather.reshape(ah, aw, s, th, tw, c), _two_sided(bth, btw, gather, _rows(rows_buf, ah, n), v)


class ChunkPlan:
    """Winograd correlation of one chunk of ``s`` padded images with a transformed filter,
    with every array view it needs made once.

    A layer runs the same chunks call after call. Building their views (reshapes,
    transposes, strided windows) is Python work, and with two threads every microsecond
    of Python between NumPy calls is paid under the GIL. Kept in a plan, a chunk is one
    gather, five GEMMs and at most four copies out (measured on MNIST's conv2 forward,
    two threads: 7.2 -> 5.9 ms per 100 images, identical results).

    Args:
        xp, dtype: array module and compute dtype.
        xpad: ``(s, H, W, C)`` padded input holding whole tiles (see ``tiles_view``): a
            view of a buffer the caller rewrites before each ``correlate``.
        out_hw: ``(oh, ow)``, the output cells that exist (the last tiles may overrun them).
        tile, kernel: ``(mh, mw)``, ``(kh, kw)``.
        out_channels: ``O``.
        scratch: two flat buffers of at least ``scratch_size(...)`` elements each, for
            ``T = s·th·tw`` tiles (reused between calls, so they stay in cache).
        v_out: where to keep the transformed input ``V`` (``α²·T·C`` elements) for the
            weight gradient; by default it lives in the scratch.
    """

    def __init__(self, xp, dtype, xpad, out_hw, tile, kernel, out_channels, scratch, v_out=None):
        s, _, _, c = xpad.shape
        (mh, mw), (kh, kw), o = tile, kernel, out_channels
        th, tw = -(-out_hw[0] // mh), -(-out_hw[1] // mw)
        ah, aw = mh + kh - 1, mw + kw - 1
        t = s * th * tw
        first, second = scratch
        ath, atw = _per_axis(xp, dtype, tile, kernel, 0)
        self.xp = xp
        self.u_shape = (ah, aw, c, o)
        # V lands in ``v_out`` or back in ``first`` (its gather is used up by then).
        v = _rows(first, ah, aw * t * c) if v_out is None else v_out[:ah * aw * t * c].reshape(ah, aw * t * c)
        self.tiles, self.gather, to_v = _input_transform(xp, dtype, xpad, tile, kernel, (th, tw), first, second, v)
        # The element-wise stage summed over channels: α² GEMMs (T×C)·(C×O), into ``second``.
        m = _rows(second, ah, aw * t * o)
        # Output transform Aᵀ M A: rows into ``first`` (V is used up by then), columns into
        # ``second`` (the row GEMM has read M before it is overwritten).
        y = _rows(second, mh, mw * t * o)
        self.gemms = (*to_v,
                      (v.reshape(ah, aw, t, c), None, m.reshape(ah, aw, t, o)),  # None: the filter
                      *_two_sided(ath, atw, m, _rows(first, mh, aw * t * o), y))
        for view, buf in ((self.gather, first), (y, second)):  # reshapes that split axes: views
            assert xp.may_share_memory(view, buf)
        # Output pixel (ty·mh + i, tx·mw + j) of image n is at y[i, j, n, ty, tx]; one copy
        # out for the whole tiles and one for each edge the last tiles cut.
        tiles_out = y.reshape(mh, mw, s, th, tw, o)
        assert xp.may_share_memory(tiles_out, second)
        self.copies = [(slice(ty * mh, ty * mh + nty * ni), slice(tx * mw, tx * mw + ntx * nj),
                        (s, nty, ni, ntx, nj, o),
                        tiles_out[:ni, :nj, :, ty:ty + nty, tx:tx + ntx, :].transpose(2, 3, 0, 4, 1, 5))
                       for ty, nty, ni in _spans(out_hw[0], mh) for tx, ntx, nj in _spans(out_hw[1], mw)]

    def correlate(self, u, y, bias=None):
        """``y`` (``(s, oh, ow, O)``) = the correlation of the current ``xpad`` with the
        filter whose transform is ``u`` (``(α², C, O)``, from ``transform_filter``), plus ``bias``."""
        xp = self.xp
        self.gather[...] = self.tiles
        for left, right, out in self.gemms:
            xp.matmul(left, u.reshape(self.u_shape) if right is None else right, out=out)
        for rows, cols, shape, src in self.copies:
            dst = y[:, rows, cols].reshape(shape)  # it only splits axes: always a view
            if bias is None:
                dst[...] = src
            else:
                xp.add(src, bias, out=dst)


class WeightGradChunk:
    """One chunk's share of the weight gradient in the Winograd domain, with its views made
    once (as ``ChunkPlan``): ``accumulate`` writes ``Σ_tiles V_ξᵀ · (G dY Gᵀ)_ξ`` into an
    ``(α², C, O)`` array.

    ``dW[i, j, c, o] = Σ_{n,y,x} X[n, y+i, x+j, c] · dY[n, y, x, o]`` is a correlation of the
    input with ``dY`` as the filter, so each ``m×m`` tile of ``dY`` and the ``α×α`` input
    tile under it make one ``F(k×k, m×m)``: same ``α``, same points, so the same ``V``
    as the forward pass, with ``dY`` transformed by ``G`` of ``F(k, m)``. The sum over
    tiles is the reduction of α² GEMMs ``(C×T)·(T×O)``; ``finish_weight_grad`` applies
    ``Aᵀ`` of ``F(k, m)`` once to the total.

    Args:
        xp, dtype: array module and compute dtype.
        v: ``(α², T, C)``, the forward pass's transformed input tiles of this chunk, or
            None to transform ``xpad`` again on every call.
        xpad: the chunk's padded input (``ChunkPlan``'s), used when ``v`` is None.
        tiles_hw, tile, kernel: ``(th, tw)``, ``(mh, mw)``, ``(kh, kw)``.
        out_channels: ``O``.
        scratch: four flat buffers of at least ``scratch_size(...)`` elements each.
    """

    def __init__(self, xp, dtype, v, xpad, tiles_hw, tile, kernel, out_channels, scratch):
        s, c = xpad.shape[0], xpad.shape[3]
        (th, tw), (mh, mw), (kh, kw), o = tiles_hw, tile, kernel, out_channels
        ah, aw = mh + kh - 1, mw + kw - 1
        t = s * th * tw
        work, v_buf, dy_buf, half = scratch
        self.xp, self.shape = xp, (s, th, mh, tw, mw, o)
        self.retransform = None
        if v is None:  # V again from the input: into v_buf, through work and half
            v = v_buf[:ah * aw * t * c]
            self.retransform = _input_transform(xp, dtype, xpad, tile, kernel, tiles_hw, work, half,
                                                v.reshape(ah, aw * t * c))
        gh, gw = _per_axis(xp, dtype, (kh, kw), tile, 1)
        # dY's tiles, element (i, j) of every tile as row (i, j), then G dY Gᵀ.
        tiles = _rows(work, mh, mw * t * o)
        self.dy_gather = tiles.reshape(mh, mw, s, th, tw, o)
        dyt = _rows(dy_buf, ah, aw * t * o)
        self.gemms = (*_two_sided(gh, gw, tiles, _rows(half, ah, mw * t * o), dyt),
                      (v.reshape(ah, aw, t, c).transpose(0, 1, 3, 2), dyt.reshape(ah, aw, t, o), None))
        self.out_shape = (ah, aw, c, o)
        assert xp.may_share_memory(self.dy_gather, work)  # reshapes that split axes: views

    def accumulate(self, dy, out):
        """``out`` (``(α², C, O)``) = this chunk's sum, for its ``dY`` zero-padded to whole
        tiles (``(s, th·mh, tw·mw, O)``)."""
        xp = self.xp
        if self.retransform is not None:
            tiles, gather, steps = self.retransform
            gather[...] = tiles
            for left, right, dst in steps:
                xp.matmul(left, right, out=dst)
        self.dy_gather[...] = dy.reshape(self.shape).transpose(2, 4, 0, 1, 3, 5)
        for left, right, dst in self.gemms:
            xp.matmul(left, right, out=out.reshape(self.out_shape) if dst is None else dst)
        return out


def finish_weight_grad(acc, tile, kernel):
    """``dW`` as HWIO ``(kh, kw, C, O)`` from the Winograd-domain sum ``acc`` (``(α², C, O)``)."""
    xp = xp_of(acc)
    (mh, mw), (kh, kw) = tile, kernel
    a2, c, o = acc.shape
    at2, _, _ = transforms_2d((kh, kw), (mh, mw))
    return xp.matmul(xp.asarray(at2, dtype=acc.dtype), acc.reshape(a2, c * o)).reshape(kh, kw, c, o)
