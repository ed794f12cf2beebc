"""Pure, stateless math used by the layers: padding rules, im2col/col2im, softmax."""
from .padding import conv_output_size, normalize_padding, pad_amounts, pad_nhwc, pair
from .im2col import col2im, im2col, window_view
from .softmax import log_softmax, softmax

__all__ = ["conv_output_size", "normalize_padding", "pad_amounts", "pad_nhwc", "pair", "im2col", "col2im",
           "window_view", "softmax", "log_softmax"]
