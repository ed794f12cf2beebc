"""Ready-made architectures."""
from __future__ import annotations

import numpy as np

from . import init
from .graph import Model
from .layers import GELU, Add, BatchNorm, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU
from .layers.symbolic import Input
from .model import Sequential
from .random import resolve_rng, spawn_rng


def mnist_cnn(rng=None, dropout: float = 0.5, num_classes: int = 10, dtype=np.float32,
              input_shape=(28, 28, 1)) -> Sequential:
    """The network of TensorFlow's MNIST sample (``convolutional.py``), with its initialisation.

    conv 5×5×32 SAME → ReLU → maxpool 2×2/2 SAME → conv 5×5×64 SAME → ReLU → maxpool →
    fc 3136→512 → ReLU → dropout → fc 512→num_classes. Weights truncated normal with std 0.1;
    biases 0 for conv1 and 0.1 for the others, as the sample sets them. Another ``input_shape``
    ``(H, W, C)`` changes conv1's input channels and fc1's inputs (``ceil(H/4)·ceil(W/4)·64``).

    Args:
        rng: Generator or int seed for the weights and the dropout masks (default:
            the one ``jn.set_seed`` seeds).
        dropout: drop probability of the dropout layer (the sample's keep_prob 0.5).
        num_classes: outputs of the last layer.
        dtype: parameter dtype.
        input_shape: ``(height, width, channels)`` of one image (MNIST's by default).

    Example:
        >>> import jimunet as jn
        >>> jn.models.mnist_cnn(rng=0).summary((28, 28, 1)).total_params
        1663370
        >>> jn.models.mnist_cnn(rng=0, input_shape=(32, 32, 3)).summary((32, 32, 3)).total_params
        2156490
    """
    height, width, channels = _check_input_shape(input_shape)
    rng = resolve_rng(rng)
    w, b0, b1 = init.truncated_normal(0.1), init.zeros(), init.constant(0.1)
    return Sequential([
        Conv2D(channels, 32, 5, padding="same", weight_init=w, bias_init=b0, rng=rng, dtype=dtype),
        ReLU(),
        MaxPool2D(2, 2, padding="same"),
        Conv2D(32, 64, 5, padding="same", weight_init=w, bias_init=b1, rng=rng, dtype=dtype),
        ReLU(),
        MaxPool2D(2, 2, padding="same"),
        Flatten(),
        Dense(-(-height // 4) * -(-width // 4) * 64, 512, weight_init=w, bias_init=b1, rng=rng, dtype=dtype),
        ReLU(),
        Dropout(dropout, rng=spawn_rng(rng)),
        Dense(512, num_classes, weight_init=w, bias_init=b1, rng=rng, dtype=dtype),
    ])


def _check_input_shape(shape) -> tuple:
    ok = isinstance(shape, (tuple, list)) and len(shape) == 3 and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape)
    if not ok:
        raise ValueError(f"input_shape must be (height, width, channels), 3 positive integers, got {shape!r}")
    return tuple(int(d) for d in shape)


def _conv_bn(x, cin, cout, k, stride, rng, dtype, relu=True):
    x = Conv2D(cin, cout, k, stride=stride, padding="same", use_bias=False, weight_init=init.he_normal(),
               rng=rng, dtype=dtype)(x)
    x = BatchNorm(cout, dtype=dtype)(x)
    return ReLU()(x) if relu else x


def residual_block(x, cin, cout, stride=1, rng=None, dtype=np.float32):
    """``ReLU(BN(Conv(ReLU(BN(Conv(x))))) + shortcut(x))`` on a symbolic tensor (He et al. 2016).

    The shortcut is ``x`` itself when shapes agree, else a 1×1 convolution with the block's
    stride followed by BatchNorm (the "projection shortcut").
    """
    rng = resolve_rng(rng)
    h = _conv_bn(x, cin, cout, 3, stride, rng, dtype)
    h = _conv_bn(h, cout, cout, 3, 1, rng, dtype, relu=False)
    shortcut = x if (cin == cout and stride == 1) else _conv_bn(x, cin, cout, 1, stride, rng, dtype, relu=False)
    return ReLU()(Add()([h, shortcut]))


def mnist_resnet(rng=None, stem: int = 16, blocks=((32, 2), (64, 2), (64, 1)), num_classes: int = 10,
                 dtype=np.float32, input_shape=(28, 28, 1)):
    """A small residual network for 28×28×1 images (the ``jimunet train --model resnet`` recipe).

    ``input_shape`` ``(H, W, C)`` builds the same network for other images (e.g. CIFAR-10's
    32×32×3): global average pooling makes every layer after the stem independent of H and W.

    A stem conv 3×3 → BN → ReLU with ``stem`` channels at 28×28, then one residual block
    per ``(channels, stride)`` in ``blocks`` (by default 28 → 14 → 7 pixels through
    stride-2 blocks with projection shortcuts, then one identity-shortcut block at 7×7),
    global average pooling and Dense → classes. Convolutions have no bias (BatchNorm's β
    takes its place) and He-normal weights. Most of the work happens at 14×14 and 7×7,
    where the matrix products are large enough to run efficiently.

    Example:
        >>> import jimunet as jn
        >>> m = jn.models.mnist_resnet(rng=0)
        >>> s = m.summary()
        >>> s.total_params, round(s.total_flops / 1e6, 1)
        (147066, 18.8)
        >>> jn.models.mnist_resnet(rng=0, input_shape=(32, 32, 3)).summary().total_params
        147354
    """
    shape = _check_input_shape(input_shape)
    rng = resolve_rng(rng)
    inp = Input(shape, name="image")
    x = _conv_bn(inp, shape[2], stem, 3, 1, rng, dtype)
    cin = stem
    for cout, stride in blocks:
        x = residual_block(x, cin, cout, stride=stride, rng=rng, dtype=dtype)
        cin = cout
    x = GlobalAvgPool2D()(x)
    out = Dense(cin, num_classes, weight_init="glorot_uniform", rng=rng, dtype=dtype)(x)
    return Model(inp, out)


def cifar_resnet(rng=None, width: int = 16, num_classes: int = 10, dtype=np.float32, input_shape=(32, 32, 3)):
    """A narrow ResNet-9 (after David Page's DAWNBench network) for CIFAR-10 (``--model cifar``).

    prep conv(w) → conv(2w), maxpool, residual block(2w) → conv(4w), maxpool → conv(8w),
    maxpool, residual block(8w) → global average pool → Dense. Every conv is 3×3 SAME without
    bias, then BatchNorm and ReLU; the residual blocks are ``residual_block``'s (BN before the
    sum, ReLU after it). Page uses ``width`` 64, global max pooling, ReLU before the sum and a
    0.125 logit scale; without that scale (no such layer here) his form blew the logits up to
    hundreds in the first steps, this form did not. ``width`` 16 has (16/64)² = 1/16 of Page's FLOPs,
    which a 2-core CPU trains in a few minutes per epoch. He-normal weights.

    Example:
        >>> import jimunet as jn
        >>> s = jn.models.cifar_resnet(rng=0).summary()
        >>> s.total_params, round(s.total_flops / 1e6, 1)
        (412954, 48.4)
    """
    shape = _check_input_shape(input_shape)
    rng = resolve_rng(rng)
    w = int(width)
    if w < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    inp = Input(shape, name="image")
    x = _conv_bn(inp, shape[2], w, 3, 1, rng, dtype)
    cin = w
    for cout, residual in ((2 * w, True), (4 * w, False), (8 * w, True)):
        x = MaxPool2D(2, 2, padding="same")(_conv_bn(x, cin, cout, 3, 1, rng, dtype))
        if residual:
            x = residual_block(x, cout, cout, rng=rng, dtype=dtype)
        cin = cout
    x = GlobalAvgPool2D()(x)
    out = Dense(cin, num_classes, weight_init="glorot_uniform", rng=rng, dtype=dtype)(x)
    return Model(inp, out)


AIRBENCH_ACTIVATIONS = {"relu": ReLU, "gelu": GELU}  # cifar_airbench's activation=
AIRBENCH_WIDTHS = (64, 128, 128)  # airbench93's block widths (arXiv 2404.00498's 93% network)
WHITEN_KERNEL = 2  # the whitening conv's patch size


def cifar_airbench(rng=None, widths=AIRBENCH_WIDTHS, num_classes: int = 10, dtype=np.float32,
                   input_shape=(32, 32, 3), bn_momentum: float = 0.4, activation: str = "relu") -> Sequential:
    """The network of Keller Jordan's airbench (``--model cifar`` on colour images).

    whiten: conv 2×2 VALID to ``2·4·C`` channels (set by ``init.patch_whitening``, with a
    bias) → ReLU → three blocks of [conv 3×3, maxpool 2×2, BatchNorm, ReLU, conv 3×3,
    BatchNorm, ReLU] of ``widths`` channels → maxpool over the whole remaining map (3×3 for
    32×32 images) → Flatten → Dense without bias. ``activation="gelu"``: every ReLU a ``GELU``
    (tanh form), as airbench has it. Convs without bias, ``init.partial_dirac``;
    BatchNorm with ``eps`` 1e-12 and PyTorch momentum ``bn_momentum`` (airbench's 0.6
    in its own convention). Differs from airbench93 in ReLU for GELU and in the last layer:
    airbench multiplies its logits by 1/9; here the Dense weights start 9× smaller instead,
    and the recipe trains them with 1/81 of the learning rate (``lr_scale``) and 81× the
    weight decay coefficient, which is the same training, step for step, in exact arithmetic.
    The recipe also keeps the whitening weights and BatchNorm's scales fixed (not in its
    optimizer). Until ``init.patch_whitening`` sets them, the whitening weights are zero.

    Example:
        >>> import jimunet as jn
        >>> s = jn.models.cifar_airbench(rng=0).summary((32, 32, 3))
        >>> s.total_params, round(s.total_flops / 1e6, 1)
        (569656, 108.7)
    """
    shape = _check_input_shape(input_shape)
    rng = resolve_rng(rng)
    widths = tuple(int(w) for w in widths)
    if len(widths) != 3 or min(widths) < 1:
        raise ValueError(f"widths must be three positive integers, got {widths!r}")
    if activation not in AIRBENCH_ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, AIRBENCH_ACTIVATIONS))}, "
                         f"got {activation!r}")
    act = AIRBENCH_ACTIVATIONS[activation]
    cin = 2 * WHITEN_KERNEL * WHITEN_KERNEL * shape[2]
    sides = [d - WHITEN_KERNEL + 1 for d in shape[:2]]
    for _ in widths:
        sides = [d // 2 for d in sides]
    if min(sides) < 1:
        raise ValueError(f"cifar_airbench: input {shape} is too small (needs at least 9x9 pixels)")
    layers = [Conv2D(shape[2], cin, WHITEN_KERNEL, padding="valid", weight_init="zeros", rng=rng, dtype=dtype),
              act()]
    for w in widths:
        layers += [Conv2D(cin, w, 3, use_bias=False, weight_init="partial_dirac", rng=rng, dtype=dtype),
                   MaxPool2D(2), BatchNorm(w, momentum=bn_momentum, eps=1e-12, dtype=dtype), act(),
                   Conv2D(w, w, 3, use_bias=False, weight_init="partial_dirac", rng=rng, dtype=dtype),
                   BatchNorm(w, momentum=bn_momentum, eps=1e-12, dtype=dtype), act()]
        cin = w
    head = Dense(cin, num_classes, use_bias=False, weight_init="torch_uniform", rng=rng, dtype=dtype)
    head.weight.data *= np.asarray(1 / 9, dtype)
    return Sequential(layers + [MaxPool2D(tuple(sides)), Flatten(), head])
