"""Bad input fails early with the documented error, and the message names the layer, what it
expected and what it got."""
from __future__ import annotations

import numpy as np
import pytest

import jimunet as jn
from jimunet import layers as L


def _raises(exc, fn, *substrings):
    """Run ``fn``; assert it raises ``exc`` whose message contains every substring."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for s in substrings:
        assert s in msg, f"{s!r} not in message {msg!r}"
    return msg


f32 = np.float32


# --------------------------------------------------------------------------- wrong rank


@pytest.mark.parametrize("make,x,name,expected", [
    (lambda: L.Conv2D(1, 4, 3), np.zeros((28, 28, 1), f32), "Conv2D", "4-D"),
    (lambda: L.Conv2D(1, 4, 3), np.zeros((2, 1, 28, 28, 1), f32), "Conv2D", "4-D"),
    (lambda: L.MaxPool2D(2), np.zeros((28, 28, 3), f32), "MaxPool2D", "4-D"),
    (lambda: L.AvgPool2D(2), np.zeros((4, 28), f32), "AvgPool2D", "4-D"),
    (lambda: L.Dense(10, 3), np.zeros((2, 5, 2), f32), "Dense(10->3)", "2-D"),
    (lambda: L.Dense(10, 3), np.zeros((10,), f32), "Dense(10->3)", "2-D"),
    (lambda: L.Flatten(), np.zeros((5,), f32), "Flatten", "2-D"),
])
def test_wrong_rank(make, x, name, expected):
    _raises(ValueError, lambda: make().forward(x), name, expected, str(tuple(x.shape)))


# --------------------------------------------------------------------------- channels / layout


def test_channel_count_mismatch():
    msg = _raises(ValueError, lambda: L.Conv2D(3, 8, 3).forward(np.zeros((2, 28, 28, 1), f32)),
                  "Conv2D(3->8", "3 channels", "(2, 28, 28, 1)")
    assert "NCHW" not in msg  # no misleading hint when the layout is not the problem


def test_dense_feature_mismatch():
    _raises(ValueError, lambda: L.Dense(10, 3).forward(np.zeros((4, 9), f32)), "Dense(10->3)", "10", "(4, 9)")


@pytest.mark.parametrize("cin,shape", [(3, (2, 3, 28, 28)), (1, (5, 1, 28, 28))])
def test_nchw_input_gets_a_hint(cin, shape):
    _raises(ValueError, lambda: L.Conv2D(cin, 8, 3).forward(np.zeros(shape, f32)),
            "Conv2D", "NCHW", "NHWC", str(shape))


def test_nchw_through_a_model_names_the_first_layer():
    model = jn.models.mnist_cnn(rng=0)
    _raises(ValueError, lambda: model.forward(np.zeros((4, 1, 28, 28), f32)), "Conv2D(1->32", "NCHW")


# --------------------------------------------------------------------------- dtype and values

ALL_LAYERS = [
    ("Conv2D", lambda: L.Conv2D(2, 2, 3), (2, 5, 5, 2)),
    ("MaxPool2D", lambda: L.MaxPool2D(2), (2, 4, 4, 2)),
    ("AvgPool2D", lambda: L.AvgPool2D(2), (2, 4, 4, 2)),
    ("Dense", lambda: L.Dense(6, 2), (3, 6)),
    ("ReLU", lambda: L.ReLU(), (3, 6)),
    ("LeakyReLU", lambda: L.LeakyReLU(), (3, 6)),
    ("Sigmoid", lambda: L.Sigmoid(), (3, 6)),
    ("Tanh", lambda: L.Tanh(), (3, 6)),
    ("GELU", lambda: L.GELU(), (3, 6)),
    ("Flatten", lambda: L.Flatten(), (2, 3, 3)),
    ("Dropout", lambda: L.Dropout(0.5, rng=0), (3, 6)),
]
ALL_IDS = [c[0] for c in ALL_LAYERS]


@pytest.mark.parametrize("name,make,shape", ALL_LAYERS, ids=ALL_IDS)
@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.int32, bool])
def test_integer_input_is_refused(name, make, shape, dtype):
    x = np.ones(shape, dtype=dtype)
    _raises(ValueError, lambda: make().forward(x, training=True), name, "floating-point", str(np.dtype(dtype)),
            "astype")


@pytest.mark.parametrize("name,make,shape", ALL_LAYERS, ids=ALL_IDS)
def test_nan_input_is_refused(name, make, shape):
    x = np.ones(shape, f32)
    x.flat[3] = np.nan
    _raises(ValueError, lambda: make().forward(x, training=True), name, "NaN")


def test_non_array_input_is_refused():
    _raises(ValueError, lambda: L.ReLU().forward([1.0, -1.0]), "ReLU", "array", "list")


@pytest.mark.filterwarnings("error")
def test_infinite_input_is_not_mistaken_for_nan():
    """inf and -inf together sum to NaN; that must neither raise nor warn."""
    y = L.ReLU().forward(np.array([np.inf, -np.inf, 1.0]))
    np.testing.assert_array_equal(y, [np.inf, 0.0, 1.0])


# --------------------------------------------------------------------------- call order, gradients


@pytest.mark.parametrize("name,make,shape", ALL_LAYERS, ids=ALL_IDS)
def test_backward_before_forward(name, make, shape):
    layer = make()
    _raises(RuntimeError, lambda: layer.backward(np.ones(shape, f32)), name, "backward", "before forward")


def test_loss_backward_before_forward():
    _raises(RuntimeError, lambda: jn.losses.SoftmaxCrossEntropy().backward(), "SoftmaxCrossEntropy",
            "before forward")


@pytest.mark.parametrize("name,make,shape", ALL_LAYERS, ids=ALL_IDS)
def test_wrong_upstream_gradient_shape(name, make, shape):
    layer = make()
    y = layer.forward(np.ones(shape, f32), training=True)
    bad = np.ones((y.shape[0] + 1, *y.shape[1:]), f32)
    _raises(ValueError, lambda: layer.backward(bad), name, str(tuple(y.shape)), str(tuple(bad.shape)))
    bad2 = np.ones(y.shape + (1,), f32)
    _raises(ValueError, lambda: layer.backward(bad2), name, str(tuple(bad2.shape)))


def test_model_backward_with_wrong_gradient_names_the_last_layer():
    model = jn.Sequential([L.Flatten(), L.Dense(4, 3)])
    model.forward(np.ones((2, 2, 2), f32))
    _raises(ValueError, lambda: model.backward(np.ones((2, 4), f32)), "Dense(4->3)", "(2, 3)", "(2, 4)")


def test_input_smaller_than_kernel():
    _raises(ValueError, lambda: L.Conv2D(1, 2, 5, padding="valid").forward(np.zeros((1, 3, 8, 1), f32)),
            "Conv2D", "5x5", "(3, 8)")
    _raises(ValueError, lambda: L.MaxPool2D(4).forward(np.zeros((1, 3, 3, 1), f32)), "MaxPool2D", "window")


# --------------------------------------------------------------------------- constructor arguments


@pytest.mark.parametrize("fn,substrings", [
    (lambda: L.Conv2D(1, 2, 0), ["Conv2D", "kernel_size", "0"]),
    (lambda: L.Conv2D(1, 2, (3, 0)), ["Conv2D", "kernel_size", "(3, 0)"]),
    (lambda: L.Conv2D(1, 2, 3, stride=0), ["Conv2D", "stride", "0"]),
    (lambda: L.Conv2D(1, 2, 3, stride=-1), ["Conv2D", "stride", "-1"]),
    (lambda: L.Conv2D(1, 2, 2.5), ["Conv2D", "kernel_size", "2.5"]),
    (lambda: L.Conv2D(1, 2, 3, padding="full"), ["Conv2D", "padding", "same", "valid", "'full'"]),
    (lambda: L.Conv2D(1, 2, 3, padding=-1), ["Conv2D", "padding", "-1"]),
    (lambda: L.Conv2D(0, 2, 3), ["Conv2D", "in_channels", "0"]),
    (lambda: L.Conv2D(1, 0, 3), ["Conv2D", "out_channels", "0"]),
    (lambda: L.Conv2D(1, 2, 3, dtype=np.int32), ["dtype", "floating-point", "int32"]),
    (lambda: L.MaxPool2D(0), ["MaxPool2D", "pool_size", "0"]),
    (lambda: L.MaxPool2D(2, stride=0), ["MaxPool2D", "stride", "0"]),
    (lambda: L.MaxPool2D(2, padding="full"), ["MaxPool2D", "padding", "'full'"]),
    (lambda: L.MaxPool2D(2, padding=2), ["MaxPool2D", "padding", "half the window"]),
    (lambda: L.AvgPool2D(0), ["AvgPool2D", "pool_size", "0"]),
    (lambda: L.AvgPool2D(3, padding="full"), ["AvgPool2D", "padding", "'full'"]),
    (lambda: L.Dense(0, 3), ["Dense", "in_features", "0"]),
    (lambda: L.Dense(3, -2), ["Dense", "out_features", "-2"]),
    (lambda: L.Dense(3.0, 2), ["Dense", "in_features", "3.0"]),
    (lambda: L.Dropout(1.0), ["Dropout", "rate", "[0, 1)", "1.0"]),
    (lambda: L.Dropout(-0.1), ["Dropout", "rate", "-0.1"]),
    (lambda: L.Dropout("0.5"), ["Dropout", "rate", "'0.5'"]),
    (lambda: L.Dropout(0.5, rng="seed"), ["rng", "str"]),
    (lambda: jn.Sequential([L.ReLU(), "relu"]), ["Sequential", "item 1", "str"]),
])
def test_bad_constructor_arguments(fn, substrings):
    _raises(ValueError, fn, *substrings)


# --------------------------------------------------------------------------- loss


def _loss(logits, labels):
    return jn.losses.SoftmaxCrossEntropy().forward(logits, labels)


def test_loss_labels_out_of_range():
    _raises(ValueError, lambda: _loss(np.zeros((3, 10)), np.array([0, 10, 2])), "SoftmaxCrossEntropy",
            "[0, 10)", "[0, 10]")
    _raises(ValueError, lambda: _loss(np.zeros((3, 10)), np.array([0, -1, 2])), "SoftmaxCrossEntropy",
            "[0, 10)", "[-1, 2]")


def test_loss_labels_wrong_shape():
    _raises(ValueError, lambda: _loss(np.zeros((3, 10)), np.array([0, 1])), "SoftmaxCrossEntropy", "(3,)", "(2,)")
    _raises(ValueError, lambda: _loss(np.zeros((3, 10)), np.zeros((3, 1), np.int64)), "SoftmaxCrossEntropy",
            "(3,)", "(3, 1)")


def test_loss_float_labels():
    _raises(ValueError, lambda: _loss(np.zeros((3, 10)), np.array([0.0, 1.0, 2.0])), "SoftmaxCrossEntropy",
            "integer", "float64")


def test_loss_one_hot_labels():
    onehot = np.eye(10, dtype=np.int64)[[1, 2, 3]]
    _raises(ValueError, lambda: _loss(np.zeros((3, 10)), onehot), "SoftmaxCrossEntropy", "one-hot", "(3, 10)")


def test_loss_bad_logits():
    _raises(ValueError, lambda: _loss(np.zeros((3, 10), np.int64), np.array([0, 1, 2])), "SoftmaxCrossEntropy",
            "float", "int64")
    _raises(ValueError, lambda: _loss(np.zeros((3, 10, 1)), np.array([0, 1, 2])), "SoftmaxCrossEntropy",
            "(batch, classes)", "(3, 10, 1)")
    _raises(ValueError, lambda: _loss(np.zeros((0, 10)), np.zeros(0, np.int64)), "SoftmaxCrossEntropy", "empty")


# --------------------------------------------------------------------------- model summaries


def test_dense_without_flatten_names_the_layer_index():
    model = jn.Sequential([L.Conv2D(1, 4, 3), L.ReLU(), L.MaxPool2D(2), L.Dense(7 * 7 * 4, 10)])
    _raises(ValueError, lambda: model.summary((14, 14, 1)), "layer 3", "Dense(196->10)", "(N, 7, 7, 4)",
            "Flatten")


def test_summary_wrong_channels_names_the_layer_index():
    model = jn.Sequential([L.Conv2D(1, 4, 3), L.Conv2D(8, 4, 3)])
    _raises(ValueError, lambda: model.summary((10, 10, 1)), "layer 1", "Conv2D(8->4", "(N, 10, 10, 4)")


def test_summary_too_many_pools_names_the_layer_index():
    model = jn.Sequential([L.MaxPool2D(2), L.MaxPool2D(2), L.MaxPool2D(2)])
    _raises(ValueError, lambda: model.summary((5, 5, 1)), "layer 2", "MaxPool2D", "(N, 1, 1, 1)")


@pytest.mark.filterwarnings("error")
def test_huge_float32_input_passes_the_nan_check_silently():
    x = np.full((2, 4), 3e38, np.float32)  # the sum overflows; that is not a NaN
    y = L.ReLU().forward(x)
    np.testing.assert_array_equal(y, x)


# --------------------------------------------------------------------------- a value of the wrong type

class _Settings:  # a user's object without a repr of its own: Python would show its address
    pass


@pytest.mark.parametrize("call", [
    lambda o: L.Conv2D(1, 4, o), lambda o: L.Conv2D(1, 4, 3, stride=o), lambda o: L.Conv2D(1, 4, 3, padding=o),
    lambda o: L.Conv2D(o, 4, 3), lambda o: L.Conv2D(1, 4, 3, algorithm=o), lambda o: L.Conv2D(1, 4, 3, dtype=o),
    lambda o: L.Conv2D(1, 4, 3, weight_init=o), lambda o: L.Dense(o, 2), lambda o: L.Dropout(o),
    lambda o: L.MaxPool2D(o), lambda o: L.BatchNorm(o), lambda o: L.Concatenate(axis=o), lambda o: jn.Input(o),
    lambda o: jn.optim.SGD(L.Dense(2, 2).parameters(), lr=o),
    lambda o: jn.optim.Adam(L.Dense(2, 2).parameters(), betas=o),
    lambda o: jn.Trainer(jn.Sequential([L.Dense(2, 2)]), jn.losses.SoftmaxCrossEntropy(),
                         jn.optim.SGD(L.Dense(2, 2).parameters(), lr=0.1), batch_size=o),
    lambda o: jn.Trainer(jn.Sequential([L.Dense(2, 2)]), jn.losses.SoftmaxCrossEntropy(),
                         jn.optim.SGD(L.Dense(2, 2).parameters(), lr=0.1), batch_size=2, rng=o),
    lambda o: jn.set_seed(o), lambda o: jn.set_num_threads(o), lambda o: jn.Sequential([L.Dense(2, 2)]).to(o),
    lambda o: jn.data.augment.RandomShift(o),
])
def test_an_object_of_the_wrong_type_is_named_by_its_type_not_its_address(call):
    msg = _raises(ValueError, lambda: call(_Settings()), "got an object of type _Settings")
    assert "0x" not in msg and "<" not in msg


def test_values_in_messages_keep_their_repr_without_addresses():
    from jimunet._messages import shown
    assert shown((3, "same")) == "(3, 'same')" and shown(2.5) == "2.5" and shown("x" * 200).endswith("...")
    assert shown([1, _Settings()]) == "[1, <_Settings>]"
    assert shown({"f": lambda: 0}) == "{'f': <function <lambda>>}"
    assert shown(_Settings) == repr(_Settings)  # a class has no address in its repr


def test_sequential_fuse_must_be_a_bool():
    with pytest.raises(ValueError, match=r"^Sequential: fuse must be true or false, got an object of type object$"):
        jn.Sequential([jn.layers.ReLU()], fuse=object())
    assert jn.Sequential([jn.layers.ReLU()], fuse=False).fuse is False
