"""im2col / col2im: the matrix layout convolution relies on, col2im as its adjoint, and the
transposed im2col that one-channel convolutions use."""
import numpy as np
import pytest

from jimunet.functional import col2im, im2col, window_view
from jimunet.functional.im2col import im2col_transposed


@pytest.mark.parametrize("c,kernel,stride", [(1, (5, 5), (1, 1)), (3, (2, 3), (2, 1)), (4, (3, 3), (3, 2))])
@pytest.mark.parametrize("contiguous", [True, False])
def test_im2col_rows_are_windows_and_col2im_is_its_adjoint(c, kernel, stride, contiguous):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 8, c))
    if not contiguous:  # a channel-strided view takes the general path
        x = np.repeat(x, 2, axis=3)[..., ::2]
    oh = (9 - kernel[0]) // stride[0] + 1
    ow = (8 - kernel[1]) // stride[1] + 1
    cols = im2col(x, kernel, stride, (oh, ow))
    assert cols.shape == (2 * oh * ow, kernel[0] * kernel[1] * c)
    n, i, j = 1, oh - 1, ow // 2
    window = x[n, i * stride[0]:i * stride[0] + kernel[0], j * stride[1]:j * stride[1] + kernel[1], :]
    np.testing.assert_array_equal(cols[(n * oh + i) * ow + j], window.reshape(-1))
    np.testing.assert_array_equal(cols.reshape(2, oh, ow, *kernel, c), window_view(x, kernel, stride, (oh, ow)))
    g = rng.standard_normal(cols.shape)
    lhs = float((cols * g).sum())
    rhs = float((x * col2im(g, x.shape, kernel, stride, (oh, ow))).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("c,kernel,stride", [(1, (5, 5), (1, 1)), (1, (3, 2), (2, 3)), (3, (2, 3), (2, 1))])
def test_im2col_transposed_is_the_transpose_of_im2col(c, kernel, stride):
    x = np.random.default_rng(1).standard_normal((3, 9, 8, c)).astype(np.float32)
    oh, ow = (9 - kernel[0]) // stride[0] + 1, (8 - kernel[1]) // stride[1] + 1
    cols = im2col(x, kernel, stride, (oh, ow))
    out = np.full(cols.shape[::-1], np.nan, np.float32)
    assert im2col_transposed(x, kernel, stride, (oh, ow), out=out) is out
    np.testing.assert_array_equal(out, cols.T)
    np.testing.assert_array_equal(im2col_transposed(x, kernel, stride, (oh, ow)), cols.T)
