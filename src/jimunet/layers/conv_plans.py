"""What ``Conv2D`` keeps between calls: scratch buffers and the im2col / Winograd plans.

A plan is the buffers and per-block views one call shape needs, built on the first call
and reused while the calls look the same (its ``"sig"``), so a call does no Python set-up
per block or chunk (which inside a parallel region is paid under the GIL).

Some of a plan's buffers carry one forward call's data to its backward (the im2col
columns, the padded input and the transformed input tiles of Winograd): the plan is lent
to that call's cache (``Conv2D.cache``). ``Workspace.plan`` gives a later call the same
plan only when no other live cache holds it, so a layer used at several nodes of a graph
gets one plan per node, and a layer used once keeps exactly one.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..backend import xp_of
from ..functional import winograd as _wg
from ..functional.im2col import im2col_copy
from ..parallel import batch_blocks, thread_slots

# Winograd runs on chunks of whole images whose scratch (two buffers, see
# ``winograd.scratch_size``) fits in about this many bytes, so each chunk's transforms
# and GEMMs work in cache rather than memory. A constant, not tuned per machine: chunk
# shapes, and with them every GEMM's shape, follow the problem only.
WINOGRAD_CHUNK_BYTES = 1 << 21


class Workspace:
    """Scratch arrays and plans kept between calls (persistent: shared by every use of the layer).

    Re-allocating a 40 MB im2col matrix every step costs page faults worth ~10% of a
    training step; these buffers never leave the layer, so reusing them is safe.
    """

    def __init__(self):
        self._bufs = {}
        self._plans = {}  # key -> plans, each lent to at most one live cache
        self.kept = {}  # results worth keeping between calls, with what they were computed from

    def buffer(self, name, shape, dtype, xp, zeros: bool = False):
        """The buffer kept under ``name`` if it still fits, else a new one (zero-filled if asked)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or xp_of(buf) is not xp:
            buf = self._bufs[name] = (xp.zeros if zeros else xp.empty)(shape, dtype)
        return buf

    def plan(self, key, sig, build, replacing=None):
        """A kept plan for ``key`` made for ``sig`` that no live cache holds but ``replacing``
        (the cache the calling forward pass replaces), else ``build()`` (a dict), kept from
        now on. Free plans of other shapes are dropped then: one plan per key unless several
        caches hold one."""
        plans = self._plans.get(key, [])
        free = [p for p in plans if _holder(p) is None or _holder(p) is replacing]
        for p in free:
            if p["sig"] == sig:
                return p
        plan = build()
        plan["sig"] = sig
        self._plans[key] = [p for p in plans if all(p is not f for f in free)] + [plan]
        return plan

    def __deepcopy__(self, memo):  # copies of a layer start with empty scratch space
        return Workspace()


def lend(plan, cache) -> None:
    """Mark ``plan``'s per-call buffers as holding ``cache``'s call until that cache is dropped."""
    plan["holder"] = weakref.ref(cache)


def _holder(plan):
    ref = plan.get("holder")
    return None if ref is None else ref()


def im2col_plan(x, pads, out_hw, kernel, stride, parts, bias_row):
    """Buffers and per-block views for the im2col forward pass on ``x``'s shape.

    The padded input's border is zeroed once; each call rewrites its interior. With one
    input channel each block's windows are built transposed (``im2col_transposed``) in
    a segment of their own, so a block's GEMM operand is the same whatever else the
    batch holds, and a row of ones under them (``bias_row``) adds the bias inside the GEMM
    (the separate pass over the output it saves cost 20% of MNIST's conv1)."""
    xp = xp_of(x)
    n, h, w, c = x.shape
    transposed = c == 1
    (pt, pb), (pl, pr) = pads
    (kh, kw), (oh, ow) = kernel, out_hw
    pad_shape = (n, h + pt + pb, w + pl + pr, c)
    xpad = xp.zeros(pad_shape, x.dtype) if pad_shape != x.shape else None
    rows, k = oh * ow, kh * kw * c
    height = k + bias_row
    buf = xp.empty(n * rows * height, x.dtype)
    by_start, cols = {}, []
    for sl in parts:
        if transposed:
            seg = buf[sl.start * rows * height:sl.stop * rows * height].reshape(height, -1)
            seg[k:] = 1
            out, a, cols_part = seg[:k], seg.T, seg[:k].T
        else:
            out = a = cols_part = buf[sl.start * rows * k:sl.stop * rows * k].reshape(-1, k)
        copy = None if xpad is None else im2col_copy(xpad[sl], kernel, stride, out_hw, out, transposed)
        interior = None if xpad is None else xpad[sl, pt:pt + h, pl:pl + w, :]
        by_start[sl.start] = (interior, out, copy, a)
        cols.append(cols_part)
    return {"parts": by_start, "slices": parts, "cols": cols,
            "k": k, "transposed": transposed, "bias_row": bias_row, "pad_shape": pad_shape}


def winograd_plan(shape, dtype, pads, w_shape, tile, keep, chunked, xp):
    """Buffers and chunks for a Winograd correlation of an input of ``shape``, with a
    ``winograd.ChunkPlan`` for each chunk.

    The batch's blocks (``batch_blocks``) are cut into chunks of whole images whose
    scratch fits ``WINOGRAD_CHUNK_BYTES``: shapes fixed by the problem, and by a
    process's share of it only through its blocks.

    ``keep``: what a weight gradient will read after the call: ``"tiles"`` (the transformed
    input, kept), ``"input"`` (the padded input, kept whole to be transformed again) or None
    (nothing: inference, dX). ``chunked``: each chunk is padded in its block's own buffer,
    where a padded copy of the whole batch would be as big as the input (not with ``"input"``)."""
    if chunked and keep == "input":
        raise ValueError("a chunked plan keeps no whole padded input")
    n, h, wd, c = shape
    blocks = batch_blocks(n)
    kh, kw, _, o = w_shape
    (pt, pb), (pl, pr) = pads
    (mh, mw) = tile
    oh, ow = h + pt + pb - kh + 1, wd + pl + pr - kw + 1
    th, tw = -(-oh // mh), -(-ow // mw)
    per_image = _wg.scratch_size(tile, (kh, kw), th * tw, c, o)
    chunk = max(1, WINOGRAD_CHUNK_BYTES // (2 * per_image * np.dtype(dtype).itemsize))
    chunks, block_chunks = [], []
    for b in blocks:
        first = len(chunks)
        chunks += [slice(i, min(i + chunk, b.stop)) for i in range(b.start, b.stop, chunk)]
        block_chunks.append(slice(first, len(chunks)))
    # The padded input also holds the rows and columns that complete the last tiles;
    # its border is zeroed once, each call rewrites the interior.
    padded_hw = (th * mh + kh - 1, tw * mw + kw - 1)
    largest = max(sl.stop - sl.start for sl in chunks)
    # Scratch (and a chunk's padded input) per thread slot, not per block: blocks of one slot
    # run one after the other (``thread_slots``), so 2 threads keep 2 sets instead of 8.
    slots = thread_slots(len(blocks))
    ext = xp.zeros((max(slots) + 1, largest, *padded_hw, c) if chunked else (n, *padded_hw, c), dtype)
    scratch = xp.empty((max(slots) + 1, 2, min(chunk, n) * per_image), dtype)
    v_per_image = (mh + kh - 1) * (mw + kw - 1) * th * tw * c
    kept = xp.empty((n * v_per_image,), dtype) if keep == "tiles" else None

    # Each chunk's padded input, per block: its own rows of the whole copy, or its slot's buffer.
    inputs = [[ext[slots[bi], :sl.stop - sl.start] if chunked else ext[sl] for sl in chunks[block_chunks[bi]]]
              for bi in range(len(blocks))]
    chunk_plans = [[(sl, _wg.ChunkPlan(xp, dtype, xpad, (oh, ow), tile, (kh, kw), o, scratch[slots[bi]],
                                       None if kept is None else
                                       kept[sl.start * v_per_image:sl.stop * v_per_image]),
                     xpad[:, pt:pt + h, pl:pl + wd, :] if chunked else None)
                    for sl, xpad in zip(chunks[block_chunks[bi]], inputs[bi])] for bi in range(len(blocks))]
    return {"tile": tuple(tile), "tiles": (th, tw), "out_hw": (oh, ow), "ext": ext, "chunked": chunked, "slots": slots,
            "kept": kept, "chunks": chunks, "largest": largest, "blocks": block_chunks, "block_samples": blocks,
            "v_per_image": v_per_image, "inputs": inputs, "chunk_plans": chunk_plans}


def weight_grad_chunks(plan, dtype, kernel, in_channels, out_channels):
    """A ``winograd.WeightGradChunk`` for each chunk of the forward ``plan``, per block:
    made on the first backward pass after the plan was built, then kept in it."""
    kept_chunks = plan.setdefault("dw_chunks", {})
    if np.dtype(dtype).str in kept_chunks:
        return kept_chunks[np.dtype(dtype).str]
    xp = xp_of(plan["ext"])
    (th, tw), tile = plan["tiles"], plan["tile"]
    c, o, vpi = in_channels, out_channels, plan["v_per_image"]
    per_image = _wg.scratch_size(tile, kernel, th * tw, c, o)
    slots = plan["slots"]
    scratch = xp.empty((max(slots) + 1, 4, plan["largest"] * per_image), dtype)
    kept = plan["kept"]

    def v_of(sl):  # the chunk's kept transformed input (α², T, C); None: transform again
        if kept is None:
            return None
        return kept[sl.start * vpi:sl.stop * vpi].reshape(-1, (sl.stop - sl.start) * th * tw, c)
    if kept is None and plan["chunked"]:
        raise ValueError("the weight gradient needs the transformed or the whole padded input; this plan kept neither")
    chunks = [[(sl, _wg.WeightGradChunk(xp, dtype, v_of(sl), xpad, (th, tw), tile, kernel, o, scratch[slots[bi]]))
               for sl, xpad in zip(plan["chunks"][plan["blocks"][bi]], plan["inputs"][bi])]
              for bi in range(len(plan["blocks"]))]
    kept_chunks.clear()  # one dtype at a time
    kept_chunks[np.dtype(dtype).str] = chunks
    return chunks
