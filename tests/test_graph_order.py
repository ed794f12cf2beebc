"""The order of a graph model's nodes, layers and parameters, which its files store.

The rule (``jimunet.graph.Model``):

- nodes: depth-first post-order from the outputs (in the order the outputs are given); the
  inputs of a node are visited in the order of its call (``Add()([a, b])``: ``a``'s branch
  first), so a node comes after every node it reads and sibling branches come in call order;
- layers (``model.layers``): each layer object once, in the order of its first node;
- parameter and buffer names: ``"<layer index>.<name>"`` (``"0.weight"``, ``"3.running_mean"``);
- generated tensor names: ``"input"`` (``"input_<i>"`` with several inputs), then
  ``"<layer class, lower case>_<node index>"``.

``save``/``jn.load`` and checkpoints name arrays by these indices, so a change of order is
a change of file format: a model saved before would load its weights into the wrong layers.
"""
from __future__ import annotations

import numpy as np

import jimunet as jn

L = jn.layers


def branching_model():
    """A ResNet-style block (conv → BN against a 1×1 shortcut, added), then three branches
    concatenated; one ReLU object used at two nodes."""
    act = L.ReLU()
    inp = jn.Input((8, 8, 3))
    a = act(L.Conv2D(3, 4, 3, rng=1)(inp))
    main = L.BatchNorm(4)(L.Conv2D(4, 4, 3, rng=2)(a))
    shortcut = L.Conv2D(4, 4, 1, rng=3)(a)
    r = act(L.Add()([main, shortcut]))
    p = L.Conv2D(4, 2, 1, rng=4)(r)
    q = L.Conv2D(4, 3, 3, rng=5)(r)
    t = L.Conv2D(4, 1, 1, rng=6)(L.MaxPool2D(3, 1, padding="same")(r))
    out = L.Dense(6, 2, rng=7)(L.GlobalAvgPool2D()(L.Concatenate()([p, q, t])))
    return jn.Model(inp, out)


NODES = [  # (tensor name, layer class, its inputs)
    ("conv2d_0", "Conv2D", ["input"]),
    ("relu_1", "ReLU", ["conv2d_0"]),
    ("conv2d_2", "Conv2D", ["relu_1"]),          # Add's first input: the main branch first
    ("batchnorm_3", "BatchNorm", ["conv2d_2"]),
    ("conv2d_4", "Conv2D", ["relu_1"]),          # then the shortcut
    ("add_5", "Add", ["batchnorm_3", "conv2d_4"]),
    ("relu_6", "ReLU", ["add_5"]),               # the shared ReLU's second node
    ("conv2d_7", "Conv2D", ["relu_6"]),          # Concatenate's branches in call order
    ("conv2d_8", "Conv2D", ["relu_6"]),
    ("maxpool2d_9", "MaxPool2D", ["relu_6"]),
    ("conv2d_10", "Conv2D", ["maxpool2d_9"]),
    ("concatenate_11", "Concatenate", ["conv2d_7", "conv2d_8", "conv2d_10"]),
    ("globalavgpool2d_12", "GlobalAvgPool2D", ["concatenate_11"]),
    ("dense_13", "Dense", ["globalavgpool2d_12"]),
]
LAYERS = ["Conv2D", "ReLU", "Conv2D", "BatchNorm", "Conv2D", "Add", "Conv2D", "Conv2D", "MaxPool2D", "Conv2D",
          "Concatenate", "GlobalAvgPool2D", "Dense"]
PARAMETERS = ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias", "4.weight", "4.bias",
              "6.weight", "6.bias", "7.weight", "7.bias", "9.weight", "9.bias", "12.weight", "12.bias"]
STATE = PARAMETERS[:6] + ["3.running_mean", "3.running_var"] + PARAMETERS[6:]


def _order(model):
    return ([(name, type(layer).__name__, ins) for name, layer, ins in model.graph_steps()],
            [type(layer).__name__ for layer in model.layers],
            [name for name, _ in model.named_parameters()])


def test_node_layer_and_parameter_order_of_a_branching_model():
    model = branching_model()
    nodes, layers, params = _order(model)
    assert nodes == NODES
    assert layers == LAYERS
    assert params == PARAMETERS
    assert sorted(model.state_dict()) == sorted(STATE)
    shapes = {n: p.data.shape for n, p in model.named_parameters()}
    assert shapes["0.weight"] == (3, 3, 3, 4) and shapes["4.weight"] == (1, 1, 4, 4)  # stem; shortcut
    assert shapes["7.weight"] == (3, 3, 4, 3) and shapes["9.weight"] == (1, 1, 4, 1)  # branches 2 and 3
    config = model.get_config()
    assert [n["name"] for n in config["nodes"]] == [n for n, _, _ in NODES]
    assert [n["layer"] for n in config["nodes"]] == [0, 1, 2, 3, 4, 5, 1, 6, 7, 8, 9, 10, 11, 12]
    assert [s["class"] for s in config["layers"]] == LAYERS
    assert config["inputs"] == [{"name": "input", "shape": [8, 8, 3]}] and config["outputs"] == ["dense_13"]


def test_the_order_survives_save_and_load(tmp_path):
    model = branching_model()
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.data.shape)
    model.save(tmp_path / "m.npz")
    loaded = jn.load(tmp_path / "m.npz")
    assert _order(loaded) == (NODES, LAYERS, PARAMETERS)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters()):
        assert n1 == n2 and np.array_equal(p1.data, p2.data)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_outputs_are_visited_in_the_order_given():
    inp = jn.Input((4,))
    shared = L.Dense(4, 4, rng=0)(inp)
    first = L.Dense(4, 2, rng=1)(L.ReLU()(shared))
    second = L.Dense(4, 3, rng=2)(shared)
    a = jn.Model(inp, [first, second])
    b = jn.Model(inp, [second, first])
    assert [n for n, _, _ in a.graph_steps()] == ["dense_0", "relu_1", "dense_2", "dense_3"]
    assert [type(layer).__name__ for layer in a.layers] == ["Dense", "ReLU", "Dense", "Dense"]
    assert a.layers[2].out_features == 2 and a.layers[3].out_features == 3
    assert [n for n, _, _ in b.graph_steps()] == ["dense_0", "dense_1", "relu_2", "dense_3"]
    assert b.layers[1].out_features == 3 and b.layers[3].out_features == 2
    assert a.output_names == ["dense_2", "dense_3"] and b.output_names == ["dense_1", "dense_3"]
