"""ONNX export (checked by ONNX Runtime) and import (checked by PyTorch and ONNX Runtime).

Tolerance: float32 results are compared as ``max|a - b| / max|b|`` ≤ ``TOL32 = 1e-5``. Both
sides compute the same sums in float32 but in different orders (different GEMM/convolution
kernels), so they differ by rounding only: for the dot products here (≤ 800 terms) that is a
few float32 ulps (eps = 1.2e-7) relative to the output's scale, typically ~1e-7..1e-6, and
1e-5 leaves room for other CPUs' kernels while a wrong layout or padding gives errors of
order 1. Where PyTorch can run in float64 the import is also checked in float64, to 1e-12:
that proves the layout conversion itself is exact.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import jimunet as jn
from jimunet.app.cli import main
from jimunet.onnx import ONNXError

TOL32 = 1e-5
TOL64 = 1e-12


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run_ort(proto_or_path, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # the machine is shared
    src = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def torch_to_onnx(module, x, dynamic=True):
    f = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None)
    return onnx.load_from_string(f.getvalue())


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# -- packaging ----------------------------------------------------------------------------------

def test_import_jimunet_does_not_import_onnx():
    code = "import jimunet, sys; assert jimunet.onnx.export; assert 'onnx' not in sys.modules, 'onnx imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr


def test_without_onnx_installed_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ImportError, match=r'pip install "jimunet\[onnx\]"'):
        jn.onnx.export(jn.models.mnist_cnn(rng=0), "never-written.onnx")
    with pytest.raises(ImportError, match=r'pip install "jimunet\[onnx\]"'):
        jn.onnx.load("never-read.onnx")
    assert not os.path.exists("never-written.onnx")


# -- export -------------------------------------------------------------------------------------

def test_export_mnist_model_runs_in_onnx_runtime(tmp_path):
    model = jn.models.mnist_cnn(rng=0)
    path = tmp_path / "mnist.onnx"
    proto = jn.onnx.export(model, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    rng = np.random.default_rng(1)
    for n in (1, 7):  # dynamic batch
        x = rng.uniform(-0.5, 0.5, (n, 28, 28, 1)).astype(np.float32)
        y = run_ort(path, x)
        assert rel_err(y, model.predict(x)) < TOL32
    # The graph: NHWC input with a symbolic batch, a recent opset, named nodes, metadata.
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 28, 28, 1]
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.opset_import[0].version == jn.onnx.DEFAULT_OPSET >= 17
    names = [n.name for n in proto.graph.node]
    for i, layer in enumerate(model.layers):
        assert f"jimunet/{i}/{type(layer).__name__}" in names
    assert all(name.startswith("jimunet/") for name in names)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["jimunet_version"] == jn.__version__
    import json
    assert json.loads(props["architecture"]) == model.get_config()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map["jimunet_version"] == jn.__version__


def _random_model(rng, dtype=np.float32):
    """A random chain of every layer: conv → act → pool → conv → act → pool → flatten → dense → ..."""
    L = jn.layers
    while True:
        h, w, c = int(rng.integers(5, 17)), int(rng.integers(5, 17)), int(rng.integers(1, 4))
        layers, shape = [], (h, w, c)

        def pad_choice(k):
            r = rng.integers(3)
            return ("same", "valid", (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1))))[r]

        acts = [L.ReLU(), L.LeakyReLU(float(rng.uniform(0.05, 0.3))), L.Sigmoid(), L.Tanh()]
        for _ in range(2):
            k = tuple(int(v) for v in rng.integers(1, 6, 2))
            out_c = int(rng.integers(1, 6))
            layers.append(L.Conv2D(shape[2], out_c, k, stride=tuple(int(v) for v in rng.integers(1, 4, 2)),
                                   padding=str(rng.choice(["same", "valid"])) if rng.random() < 0.7 else
                                   int(rng.integers(0, 3)), use_bias=bool(rng.random() < 0.8), rng=rng,
                                   dtype=dtype))
            layers.append(acts[rng.integers(4)])
            p = tuple(int(v) for v in rng.integers(1, 4, 2))
            s = tuple(int(v) for v in rng.integers(1, 4, 2))
            if rng.random() < 0.5:
                layers.append(L.MaxPool2D(p, s, pad_choice(p)))
            else:
                layers.append(L.AvgPool2D(p, s, pad_choice(p), count_include_pad=bool(rng.random() < 0.5)))
            try:
                shape = jn.Sequential(layers).output_shape((h, w, c))
            except ValueError:
                break
        else:
            n = int(np.prod(shape))
            layers += [L.Flatten(), L.Dense(n, 9, rng=rng, dtype=dtype), acts[rng.integers(4)],
                       L.Dropout(0.25), L.Dense(9, 4, use_bias=bool(rng.random() < 0.8), rng=rng, dtype=dtype)]
            model = jn.Sequential(layers)
            for p in model.parameters():  # biases too, so that a wrong bias layout would show
                p.data[...] = rng.standard_normal(p.data.shape) * 0.5
            return model, (h, w, c)


@pytest.mark.parametrize("seed", range(16))
def test_export_random_models_match_onnx_runtime(seed):
    rng = np.random.default_rng(seed)
    model, shape = _random_model(rng)
    layout = "NCHW" if seed % 2 else "NHWC"
    softmax = seed % 4 == 3
    opset = {1: 13, 2: 17, 3: 23}.get(seed % 5, jn.onnx.DEFAULT_OPSET)
    proto = jn.onnx.to_onnx(model, shape, layout=layout, softmax=softmax, opset=opset)
    assert proto.opset_import[0].version == opset
    x = rand(rng, 3, *shape)
    want = model.predict(x)
    if softmax:
        want = jn.functional.softmax(want.astype(np.float64))
    got = run_ort(proto, x.transpose(0, 3, 1, 2).copy() if layout == "NCHW" else x)
    assert rel_err(got, want) < TOL32, model.get_config()


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_export_spatial_output_keeps_the_input_layout(layout):
    rng = np.random.default_rng(5)
    L = jn.layers
    model = jn.Sequential([L.Conv2D(2, 3, 3, stride=2, rng=rng), L.Tanh(), L.AvgPool2D(2, 1, "same")])
    x = rand(rng, 2, 9, 8, 2)
    proto = jn.onnx.to_onnx(model, (9, 8, 2), layout=layout)
    want = model.predict(x)
    if layout == "NCHW":
        got = run_ort(proto, x.transpose(0, 3, 1, 2).copy()).transpose(0, 2, 3, 1)
    else:
        got = run_ort(proto, x)
    assert rel_err(got, want) < TOL32


def test_export_mlp_on_flat_input():
    rng = np.random.default_rng(2)
    model = jn.Sequential([jn.layers.Dense(12, 5, rng=rng), jn.layers.Sigmoid(), jn.layers.Dense(5, 3, rng=rng)])
    x = rand(rng, 4, 12)
    assert rel_err(run_ort(jn.onnx.to_onnx(model, (12,)), x), model.predict(x)) < TOL32


def test_export_errors_are_clear():
    model = jn.models.mnist_cnn(rng=0)
    with pytest.raises(ValueError, match="cannot take input"):
        jn.onnx.to_onnx(model, (32, 32, 3))
    with pytest.raises(ONNXError, match="layout"):
        jn.onnx.to_onnx(model, layout="HWCN")
    with pytest.raises(ONNXError, match="opset"):
        jn.onnx.to_onnx(model, opset=5)
    with pytest.raises(ONNXError, match="Sequential"):
        jn.onnx.to_onnx(jn.layers.ReLU())
    with pytest.raises(ONNXError, match="per-sample shape"):
        jn.onnx.to_onnx(model, (28, 28.5, 1))
    assert jn.onnx.to_onnx(model, (None, 28, 28, 1)).graph.input[0].type.tensor_type.shape.dim[3].dim_value == 1
    model.layers[0].weight.data[0, 0, 0, 0] = np.nan
    with pytest.raises(ONNXError, match="NaN"):
        jn.onnx.to_onnx(model)


# -- import from PyTorch ------------------------------------------------------------------------

def _torch_cnns():
    nn = torch.nn
    torch.manual_seed(0)
    return {
        # MNIST-like, padding 1 then none, stride 2; 6 channels x 5x5 at the flatten.
        "mnist": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Conv2d(4, 6, 5, stride=2), nn.ReLU(), nn.Flatten(),
                                nn.Linear(6 * 5 * 5, 10)), (1, 28, 28)),
        # Odd sizes, stride 3 with padding 2, overlapping padded max pool, two Linear layers.
        "odd": (nn.Sequential(nn.Conv2d(3, 5, 4, stride=3, padding=2), nn.ReLU(),
                              nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(5 * 3 * 2, 8),
                              nn.ReLU(), nn.Linear(8, 3)), (3, 13, 11)),
        # Rectangular kernels and strides, no padding, 1x1 conv, Linear without bias.
        "rect": (nn.Sequential(nn.Conv2d(2, 4, (3, 2), stride=(2, 1)), nn.ReLU(), nn.MaxPool2d(2, stride=1),
                               nn.Conv2d(4, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 8, 4, bias=False)),
                 (2, 11, 10)),
    }


@pytest.mark.parametrize("name", ["mnist", "odd", "rect"])
def test_pytorch_exported_cnn_imports_and_predicts_like_pytorch(name):
    module, chw = _torch_cnns()[name]
    module.eval()
    proto = torch_to_onnx(module, torch.zeros(1, *chw), dynamic=name != "rect")
    x = torch.from_numpy(rand(np.random.default_rng(3), 5, *chw))
    x_nhwc = x.numpy().transpose(0, 2, 3, 1)
    with torch.no_grad():
        want32 = module(x).numpy()
        want64 = module.double()(x.double()).numpy()
        module.float()
    m32 = jn.onnx.from_onnx(proto)
    assert m32.metadata["onnx"]["input_layout"] == "NCHW"
    assert m32.metadata["onnx"]["input_shape"] == [chw[1], chw[2], chw[0]]
    assert rel_err(m32.predict(x_nhwc), want32) < TOL32
    m64 = jn.onnx.from_onnx(proto, dtype="float64")
    assert rel_err(m64.predict(x_nhwc.astype(np.float64)), want64) < TOL64


def test_pytorch_mlp_with_log_softmax():
    """Without a convolution nothing says which axis is channels: the input is taken as the graph
    takes it, and the final LogSoftmax is left out (jimunet outputs logits)."""
    nn = torch.nn
    torch.manual_seed(1)
    module = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU(), nn.Linear(16, 10),
                           nn.LogSoftmax(dim=1)).eval()
    model = jn.onnx.from_onnx(torch_to_onnx(module, torch.zeros(1, 1, 28, 28)))
    meta = model.metadata["onnx"]
    assert meta["input_layout"] == "as in the graph" and meta["input_shape"] == [1, 28, 28]
    assert meta["dropped_final_op"] == "LogSoftmax"
    x = rand(np.random.default_rng(14), 3, 1, 28, 28)
    logits = model.predict(x).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    with torch.no_grad():
        assert rel_err(log_probs, module(torch.from_numpy(x)).numpy()) < TOL32


def test_flatten_after_nchw_conv_permutes_dense_rows():
    """The rows of the Dense after a flatten are reordered from PyTorch's CHW to jimunet's HWC."""
    module, chw = _torch_cnns()["mnist"]
    proto = torch_to_onnx(module.eval(), torch.zeros(1, *chw))
    model = jn.onnx.from_onnx(proto)
    dense = [layer for layer in model.layers if isinstance(layer, jn.layers.Dense)][0]
    w_torch = module[-1].weight.detach().numpy().T  # (in = c*25 + h*5 + w, out)
    c, h, w = np.meshgrid(np.arange(6), np.arange(5), np.arange(5), indexing="ij")
    chw_index = (c * 25 + h * 5 + w).transpose(1, 2, 0).ravel()  # in jimunet's h, w, c order
    np.testing.assert_array_equal(dense.weight.data, w_torch[chw_index])
    assert not np.array_equal(dense.weight.data, w_torch)


def test_imported_model_trains_and_exports_again():
    module, chw = _torch_cnns()["odd"]
    model = jn.onnx.from_onnx(torch_to_onnx(module.eval(), torch.zeros(1, *chw)))
    rng = np.random.default_rng(4)
    x, y = rand(rng, 16, chw[1], chw[2], chw[0]), rng.integers(0, 3, 16)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    opt = jn.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(10):
        losses.append(loss_fn.forward(model.forward(x, training=True), y))
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.8 * losses[0], losses
    again = jn.onnx.to_onnx(model, (chw[1], chw[2], chw[0]), layout="NCHW")
    assert rel_err(run_ort(again, x.transpose(0, 3, 1, 2).copy()), model.predict(x)) < TOL32


# -- round trip ---------------------------------------------------------------------------------

def test_round_trip_gives_the_same_model(tmp_path):
    rng = np.random.default_rng(6)
    L = jn.layers
    models = [(jn.models.mnist_cnn(rng=0), (28, 28, 1)),
              (jn.Sequential([L.Conv2D(3, 4, (3, 2), stride=(2, 3), padding="same", rng=rng), L.LeakyReLU(0.2),
                              L.AvgPool2D(3, 2, "same"), L.Conv2D(4, 2, 2, padding=1, use_bias=False, rng=rng),
                              L.Sigmoid(), L.AvgPool2D(2, 1, 1, count_include_pad=False), L.Flatten(),
                              L.Dropout(0.3), L.Dense(2 * 5 * 4, 6, rng=rng), L.Tanh(), L.Dense(6, 2, rng=rng)]),
               (10, 11, 3))]
    for model, shape in models:
        for layout in ("NHWC", "NCHW"):
            path = tmp_path / f"m-{layout}.onnx"
            jn.onnx.export(model, path, shape, layout=layout)
            back = jn.onnx.load(path)
            assert back.get_config() == model.get_config()
            for (name, p), (name2, q) in zip(model.named_parameters(), back.named_parameters()):
                assert name == name2
                np.testing.assert_array_equal(p.data, q.data)
            x = rand(rng, 4, *shape)
            np.testing.assert_array_equal(back.predict(x), model.predict(x))


# -- import of hand-built graphs: every supported op, checked against ONNX Runtime ------------------

def _graph(nodes, inits, in_dims, out_dims, opset=21, value_info=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
                          value_info=list(value_info))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_import_nhwc_graph_like_tf2onnx():
    """NHWC input → Transpose → Conv with SAME_UPPER / asymmetric pads → Transpose back → Reshape → MatMul+Add
    → Softmax: jimunet takes the same NHWC input with no permutation at all."""
    rng = np.random.default_rng(7)
    inits = {"w1": rand(rng, 4, 2, 3, 3), "b1": rand(rng, 4), "w2": rand(rng, 3, 4, 2, 2),
             "shape": np.array([-1, 4 * 4 * 3], np.int64), "wd": rand(rng, 48, 5), "bd": rand(rng, 5)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w1", "b1"], ["c1"], name="conv1", auto_pad="SAME_UPPER",
                              strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[0, 0, 1, 1], strides=[1, 1]),
             helper.make_node("Transpose", ["c2"], ["t2"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t2", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "wd"], ["m"], name="dense"),
             helper.make_node("Add", ["m", "bd"], ["logits"], name="dense_bias"),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)]
    proto = _graph(nodes, inits, ["N", 8, 7, 2], ["N", 5])
    model = jn.onnx.from_onnx(proto)
    meta = model.metadata["onnx"]
    assert meta["input_layout"] == "NHWC" and meta["dropped_final_op"] == "Softmax"
    assert model.layers[0].padding == "same" and model.layers[2].padding == "same"
    x = rand(rng, 3, 8, 7, 2)
    probs = jn.functional.softmax(model.predict(x).astype(np.float64))
    assert rel_err(probs, run_ort(proto, x)) < TOL32


def test_import_every_op_matches_onnx_runtime():
    rng = np.random.default_rng(8)
    inits = {"w1": rand(rng, 3, 2, 3, 3), "b1": rand(rng, 3), "ratio": np.array(0.4, np.float32),
             "w2": rand(rng, 4, 3, 1, 1), "wg": rand(rng, 6, 48), "bg": rand(rng, 1, 6), "wm": rand(rng, 6, 3)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1],
                              strides=[1, 2], kernel_shape=[3, 3], dilations=[1, 1], group=1),
             helper.make_node("LeakyRelu", ["c1"], ["a1"], name="leaky", alpha=0.2),
             helper.make_node("MaxPool", ["a1"], ["p1"], name="maxpool", kernel_shape=[3, 3], strides=[1, 1],
                              pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["p1"], ["p2"], name="avg_exclude", kernel_shape=[2, 3],
                              strides=[2, 1], pads=[1, 1, 1, 1], count_include_pad=0),
             helper.make_node("AveragePool", ["p2"], ["p3"], name="avg_include", kernel_shape=[3, 3],
                              strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1),
             helper.make_node("Conv", ["p3", "w2"], ["c2"], name="conv1x1"),
             helper.make_node("Sigmoid", ["c2"], ["s"], name="sigmoid"),
             helper.make_node("Dropout", ["s", "ratio"], ["d"], name="dropout"),
             helper.make_node("Identity", ["d"], ["i"], name="identity"),
             helper.make_node("Flatten", ["i"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], name="gemm", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Tanh", ["g"], ["t"], name="tanh"),
             helper.make_node("MatMul", ["t", "wm"], ["y"], name="matmul_no_bias")]
    proto = _graph(nodes, inits, ["N", 2, 7, 6], ["N", 3])
    model = jn.onnx.from_onnx(proto)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "LeakyReLU", "MaxPool2D", "AvgPool2D", "AvgPool2D", "Conv2D", "Sigmoid", "Dropout",
                     "Flatten", "Dense", "Tanh", "Dense"]
    assert model.layers[7].rate == pytest.approx(0.4)
    x = rand(rng, 4, 2, 7, 6)
    assert rel_err(model.predict(x.transpose(0, 2, 3, 1)), run_ort(proto, x)) < TOL32


def test_import_opset_11_graph():
    """Before opset 12 Dropout's ratio was an attribute; before 13 Softmax's axis defaulted to 1."""
    rng = np.random.default_rng(15)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["g"], transB=1),
             helper.make_node("Dropout", ["g"], ["d"], ratio=0.3),
             helper.make_node("Softmax", ["d"], ["y"])]
    proto = _graph(nodes, {"w": rand(rng, 4, 12), "b": rand(rng, 4)}, ["N", 3, 2, 2], ["N", 4], opset=11)
    model = jn.onnx.from_onnx(proto)
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten", "Dense", "Dropout"]
    assert model.layers[2].rate == pytest.approx(0.3)
    x = rand(rng, 5, 3, 2, 2)
    assert rel_err(jn.functional.softmax(model.predict(x).astype(np.float64)), run_ort(proto, x)) < TOL32


# -- what jimunet cannot run: clear errors naming the node ----------------------------------------

def _conv_graph(conv_attrs=None, extra_nodes=(), last="c", in_dims=("N", 2, 8, 8), w_shape=(3, 2, 3, 3),
                out_dims=None, pool=None):
    rng = np.random.default_rng(9)
    inits = {"w": rand(rng, *w_shape)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="my_conv", **(conv_attrs or {}))]
    if pool:
        nodes.append(helper.make_node(pool[0], ["c"], ["p"], name="my_pool", **pool[1]))
        last = "p"
    nodes += list(extra_nodes)
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    return _graph(nodes, inits, list(in_dims), out_dims or ["N", None, None, None])


@pytest.mark.parametrize("proto_fn, pattern", [
    (lambda: _conv_graph({"dilations": [2, 2]}), r"'my_conv' \(Conv\): dilations \[2, 2\]"),
    (lambda: _conv_graph({"group": 2}, w_shape=(4, 1, 3, 3)), r"'my_conv' \(Conv\): group=2"),
    (lambda: _conv_graph({"pads": [0, 1, 2, 1]}), r"'my_conv' \(Conv\): asymmetric pads \[0, 1, 2, 1\]"),
    (lambda: _conv_graph({"auto_pad": "SAME_LOWER", "strides": [2, 2]}), r"'my_conv' \(Conv\): asymmetric pads"),
    (lambda: _conv_graph(pool=("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
                         in_dims=("N", 2, 9, 9)), r"'my_pool' \(MaxPool\): ceil_mode=1"),
    (lambda: _conv_graph(pool=("AveragePool", {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER",
                                               "count_include_pad": 1}), in_dims=("N", 2, 9, 9)),
     r"'my_pool' \(AveragePool\): count_include_pad=1"),
    (lambda: _conv_graph(extra_nodes=[helper.make_node("Sin", ["c"], ["s"], name="my_sin")], last="s"),
     r"'my_sin' \(Sin\): jimunet cannot run the op Sin; supported ops: Conv, MaxPool"),
    (lambda: _conv_graph(extra_nodes=[helper.make_node("Relu", ["c"], ["r"], name="r"),
                                      helper.make_node("Add", ["c", "r"], ["s"], name="my_add")], last="s"),
     r"branch"),
    (lambda: _conv_graph(extra_nodes=[helper.make_node("Transpose", ["c"], ["s"], name="my_t", perm=[1, 0, 2, 3])],
                         last="s"), r"'my_t' \(Transpose\): perm \[1, 0, 2, 3\].*batch"),
    (lambda: _conv_graph(extra_nodes=[helper.make_node("Flatten", ["c"], ["s"], name="f")], last="s",
                         out_dims=["N", 108]), r"flatten of an NCHW tensor"),
    (lambda: _conv_graph(extra_nodes=[helper.make_node("Softmax", ["c"], ["s"], name="my_softmax", axis=1)],
                         last="s"), r"'my_softmax' \(Softmax\): jimunet supports Softmax only as the last node"),
    (lambda: _conv_graph(extra_nodes=[helper.make_node("Transpose", ["c"], ["t"], name="to_nhwc",
                                                       perm=[0, 2, 3, 1]),
                                      helper.make_node("MaxPool", ["t"], ["s"], name="my_pool2",
                                                       kernel_shape=[2, 2])], last="s"),
     r"'my_pool2' \(MaxPool\): reads its input as NCHW"),
], ids=["dilations", "group", "asym-pads", "same-lower", "ceil-mode", "avg-include-same", "unknown-op", "branch",
        "transpose-batch", "nchw-flatten-output", "softmax-middle", "pool-on-nhwc"])
def test_unsupported_graphs_give_clear_errors(proto_fn, pattern):
    with pytest.raises(ONNXError, match=pattern):
        jn.onnx.from_onnx(proto_fn())


def test_ceil_mode_that_changes_nothing_is_accepted():
    proto = _conv_graph(pool=("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}))
    x = rand(np.random.default_rng(10), 2, 2, 8, 8)
    model = jn.onnx.from_onnx(proto)
    assert rel_err(model.predict(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), run_ort(proto, x)) < TOL32


def test_bad_weights_give_clear_errors():
    proto = _conv_graph()
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((3, 2, 3, 3), np.int32), "w"))
    with pytest.raises(ONNXError, match=r"'my_conv' \(Conv\): weight 'w' has dtype int32; expected a floating"):
        jn.onnx.from_onnx(proto)
    w = np.ones((3, 2, 3, 3), np.float32)
    w[1, 1, 1, 1] = np.inf
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    with pytest.raises(ONNXError, match="weight 'w' holds NaN or infinity"):
        jn.onnx.from_onnx(proto)


# -- bad files -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_onnx_bytes():
    module, chw = _torch_cnns()["odd"]
    return torch_to_onnx(module.eval(), torch.zeros(1, *chw)).SerializeToString()


def test_truncated_random_and_empty_files(tmp_path, small_onnx_bytes):
    data = small_onnx_bytes
    path = tmp_path / "bad.onnx"
    cases = [data[:n] for n in (1, 10, 100, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1)]
    rng = np.random.default_rng(11)
    cases += [rng.bytes(n) for n in (1, 17, 1000, 50_000)] + [b"", b"\x00" * 64, b"not an onnx file\n"]
    for bad in cases:
        path.write_bytes(bad)
        with pytest.raises(ONNXError, match=r"bad\.onnx: not (a readable ONNX file|an ONNX model|a valid ONNX)"):
            jn.onnx.load(path)
    path.write_bytes(data)
    assert isinstance(jn.onnx.load(path), jn.Sequential)
    with pytest.raises(FileNotFoundError, match="no such file"):
        jn.onnx.load(tmp_path / "missing.onnx")


def test_shapes_that_do_not_chain(tmp_path):
    rng = np.random.default_rng(12)
    base = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Flatten", ["c"], ["f"], name="flat")]
    gemm = helper.make_graph(base + [helper.make_node("Gemm", ["f", "wg"], ["y"], name="fc")], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                             [numpy_helper.from_array(rand(rng, 3, 2, 3, 3), "w"),
                              numpy_helper.from_array(rand(rng, 100, 4), "wg")])
    proto = helper.make_model(gemm, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(ONNXError, match=r"'fc' \(Gemm\): its weight expects 100 input features, but its input "
                                        r"has 48: the shapes do not chain"):
        jn.onnx.from_onnx(proto)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(rand(rng, 3, 5, 3, 3), "w"))
    with pytest.raises(ONNXError, match=r"'conv' \(Conv\): its weight 'w' expects 5 input channels, but its "
                                        r"input has 2"):
        jn.onnx.from_onnx(proto)
    # A declared output shape the nodes do not produce.
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(rand(rng, 3, 2, 3, 3), "w"))
    proto.graph.initializer[1].CopyFrom(numpy_helper.from_array(rand(rng, 48, 4), "wg"))
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    with pytest.raises(ONNXError, match=r"declares tensor 'y' as \(batch, 5\), but its nodes produce \(batch, 4\)"):
        jn.onnx.from_onnx(proto)
    # A kernel larger than its input.
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 2
    with pytest.raises(ONNXError, match=r"'conv' \(Conv\): .*smaller than the 3x3 kernel"):
        jn.onnx.from_onnx(proto)


def test_external_data(tmp_path):
    module, chw = _torch_cnns()["odd"]
    proto = torch_to_onnx(module.eval(), torch.zeros(1, *chw))
    want = jn.onnx.from_onnx(proto).state_dict()
    d = tmp_path / "model"
    d.mkdir()
    path = d / "ext.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    got = jn.onnx.load(path).state_dict()  # next to the model: read
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)

    os.rename(d / "weights.bin", tmp_path / "weights.bin")
    with pytest.raises(ONNXError, match=r"external file 'weights.bin', which does not exist"):
        jn.onnx.load(path)

    # A reference outside the model's directory is refused even though the file exists.
    ext = onnx.load(str(path), load_external_data=False)
    for t in ext.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../weights.bin"
    path.write_bytes(ext.SerializeToString())
    with pytest.raises(ONNXError, match=r"outside the model's directory"):
        jn.onnx.load(path)
    with pytest.raises(ONNXError, match=r"load the model with jn.onnx.load\(path\)"):
        jn.onnx.from_onnx(ext)

    # A truncated data file.
    (d / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes()[:100])
    for t in ext.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "weights.bin"
    path.write_bytes(ext.SerializeToString())
    with pytest.raises(ONNXError, match=r"it may be truncated"):
        jn.onnx.load(path)


# -- command line ----------------------------------------------------------------------------------

def test_cli_export_and_import(tmp_path, capsys):
    model = jn.models.mnist_cnn(rng=0)
    npz, out, back = tmp_path / "best.npz", tmp_path / "model.onnx", tmp_path / "back.npz"
    model.save(npz)
    assert main(["export", str(npz), str(out)]) == 0
    assert "input 'input' (batch, 28, 28, 1) float32 NHWC, output 'logits' (batch, 10)" in capsys.readouterr().out
    x = np.random.default_rng(13).uniform(-0.5, 0.5, (3, 28, 28, 1)).astype(np.float32)
    assert rel_err(run_ort(out, x), model.predict(x)) < TOL32

    before = out.read_bytes()
    assert main(["export", str(npz), str(out)]) == 2  # never replaces a file unasked
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", str(npz), str(out), "--force", "--layout", "NCHW", "--softmax"]) == 0
    capsys.readouterr()

    assert main(["import", str(out), str(back)]) == 0
    printed = capsys.readouterr().out
    assert "takes NCHW input" in printed and "final Softmax was left out" in printed and f"wrote {back}" in printed
    np.testing.assert_array_equal(jn.load(back).predict(x), model.predict(x))

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(out.read_bytes()[:5000])
    assert main(["import", str(bad), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jimunet import: error: ") and "bad.onnx" in err
    assert not (tmp_path / "x.npz").exists()
    assert main(["import", str(tmp_path / "nope.onnx"), str(tmp_path / "x.npz")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err
    assert main(["export", str(npz), str(tmp_path / "y.onnx"), "--input-shape", "32,32,3"]) == 2
    assert "cannot take input" in capsys.readouterr().err

    # An imported model exports again with the input shape it came with.
    module, chw = _torch_cnns()["odd"]
    onnx.save(torch_to_onnx(module.eval(), torch.zeros(1, *chw)), str(tmp_path / "torch.onnx"))
    assert main(["import", str(tmp_path / "torch.onnx"), str(tmp_path / "torch.npz")]) == 0
    assert main(["export", str(tmp_path / "torch.npz"), str(tmp_path / "again.onnx"), "--layout", "NCHW"]) == 0
    assert "input 'input' (batch, 3, 13, 11) float32 NCHW" in capsys.readouterr().out
    x = rand(np.random.default_rng(16), 2, *chw)
    with torch.no_grad():
        assert rel_err(run_ort(tmp_path / "again.onnx", x), module(torch.from_numpy(x)).numpy()) < TOL32


def test_readme_onnx_example_runs(tmp_path, monkeypatch):
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "jn.onnx.export" in b]
    assert len(block) == 1, "README has one ONNX example"
    monkeypatch.chdir(tmp_path)  # it writes mnist.onnx and net.onnx
    ns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block[0], "README.md", "exec"), ns)
    assert rel_err(ns["logits"], ns["model"].predict(ns["x"])) < TOL32
    with torch.no_grad():
        want = ns["net"](torch.from_numpy(ns["x"].transpose(0, 3, 1, 2).copy())).numpy()
    assert rel_err(ns["y"], want) < TOL32
