"""``np.matmul`` as on a CPU whose BLAS rounds a product differently for different shapes.

OpenBLAS's Haswell kernels round a row of a product differently depending on the product's
height; this machine's kernels may not. The stand-in scales every result by ``1 + k·eps``
with ``k`` taken from the operands' shapes, so code whose GEMM shapes change (with the thread
count, or with a data-parallel process's share of the batch) gets other numbers here too, on
any CPU. Used by ``test_parallel.py`` (in-process) and ``test_distributed.py`` (in MPI jobs).
"""
import numpy as np


def rounding_by_shape(real, record=None):
    """A ``matmul`` that calls ``real`` and then rounds by shape; ``record((a.shape, b.shape))``
    is called for every product when given."""
    def matmul(a, b, out=None, **kwargs):
        r = real(a, b, **kwargs)
        if record is not None:
            record((a.shape, b.shape))
        r *= r.dtype.type(1 + (hash((a.shape, b.shape)) % 7) * np.finfo(r.dtype).eps)
        if out is None:
            return r
        out[...] = r
        return out
    return matmul
