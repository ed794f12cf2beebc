"""Hostile and careless ONNX files (issue #21): bombs stay small, odd files get one-line errors,
and what the importer accepts is what ``jn.load`` accepts.

The bombs are tiny files written to ``tmp_path``. Each runs in a subprocess that reports its
peak resident memory (``ru_maxrss``); the bound, ``PEAK_MB``, is generous (importing numpy and
onnx takes ~70 MB) and far below what the bombs asked for before (2.4 GB to 8 GB).
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import jimunet as jn
from jimunet.app.cli import main
from jimunet.model import MAX_LAYERS
from jimunet.onnx import ONNXError, layout

PEAK_MB = 300
CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|Traceback")


def _model(nodes, inits, in_dims, out_dims, opset=21):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _import_in_subprocess(path):
    """``(error message or "", peak RSS in MB)`` of ``jn.onnx.load(path)`` in a fresh process."""
    # VmHWM is this process's own peak; ru_maxrss would include the parent's from before exec.
    code = ("import re, resource, sys, jimunet as jn\n"
            "try:\n    jn.onnx.load(sys.argv[1]); msg = ''\n"
            "except ValueError as e:\n    msg = str(e)\n"
            "try:\n    peak = int(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "except OSError:\n    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(peak / 1024)\nprint(msg)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr[-2000:]
    peak, msg = r.stdout.split("\n", 1)
    return msg.strip(), float(peak)


def _one_line_error(e):
    msg = str(e.value)
    assert "\n" not in msg and not CLASS_NAME.search(msg), msg
    return msg


# -- shape bombs: nothing is allocated from a declared shape -----------------------------------

@pytest.mark.parametrize("dims, pattern", [
    # An 85-byte file: 2.45 GB before. Its model needs 1.1 GiB per sample: jn.load's bound refuses it.
    ((1, 12000, 12000), r"one sample of shape \(1, 12000, 12000\) needs 1.1 GiB \(1,152,000,000 bytes\) of "
                        r"intermediate results in this model, over the bound of 1.0 GiB"),
    ((1000, 1000, 1000), r"one sample takes 4,000,000,000 bytes as float32, over the limit of 1,073,741,824"),
])
def test_flatten_of_a_huge_declared_shape_allocates_nothing(tmp_path, dims, pattern):
    path = tmp_path / "bomb.onnx"
    onnx.save(_model([helper.make_node("Flatten", ["x"], ["y"])], [], ["N", *dims], ["N", int(np.prod(dims))]),
              str(path))
    assert path.stat().st_size < 100
    msg, peak = _import_in_subprocess(path)
    assert re.search(pattern, msg), msg
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"
    if dims == (1, 12000, 12000):  # allowed more, the model is made (from the shape alone: no memory)
        model = jn.onnx.load(path, max_activation_bytes=2 ** 31)
        assert model.summary(model.metadata["onnx"]["input_shape"]).output_shape == (144_000_000,)


def test_flatten_of_a_huge_nchw_tensor_does_not_build_an_index(tmp_path):
    # A 1x1 convolution to 2 channels, then a flatten in NCHW order: the reordering is known
    # from the shape alone (before: 2 index arrays of 288M int64, 4.6 GB).
    path = tmp_path / "bomb.onnx"
    onnx.save(_model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Flatten", ["c"], ["y"])],
                     [_init("w", np.ones((2, 1, 1, 1), np.float32))], ["N", 1, 12000, 12000], ["N", 288000000]),
              str(path))
    msg, peak = _import_in_subprocess(path)
    assert "the graph's output is a flatten of an NCHW tensor" in msg, msg
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"


def test_dense_rows_permuted_without_index_arrays():
    # The row permutation of a Dense after an NCHW flatten, against the index-array definition.
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 4), (1, 3, 4), (2, 1, 4), (3, 1, 1), (1, 1, 5)]:
        for view in [(0, 3, 1, 2), (0, 1, 2, 3), (0, 2, 3, 1), (0, 3, 2, 1)]:
            order = np.arange(np.prod(shape)).reshape(shape).transpose([v - 1 for v in view[1:]]).ravel()
            w = rng.standard_normal((order.size, 3))
            want = np.empty_like(w)
            want[order] = w
            got = layout.dense_rows_from_onnx(w, layout.flatten_order(shape, view))
            np.testing.assert_array_equal(got, want)
            assert (layout.flatten_order(shape, view) is None) == bool(np.all(order == np.arange(order.size)))


# -- external data: a byte budget, exact lengths, no hidden files ---------------------------------

def _external_model(directory, location, dims, offset=0, extra=()):
    """A chain of MatMuls whose weights live in ``location``: ``w`` of ``dims`` at ``offset``, then
    each ``(name, dims, offset)`` of ``extra``."""
    inits, nodes, cur = [], [], "x"
    weights = (("w", dims, offset),) + tuple(extra)
    for i, (name, d, off) in enumerate(weights):
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(d), data_location=TensorProto.EXTERNAL)
        for k, v in (("location", location), ("offset", str(off)), ("length", str(int(np.prod(d)) * 4))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
        out = "y" if i == len(weights) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [cur, name], [out]))
        cur = out
    path = directory / "m.onnx"
    path.write_bytes(_model(nodes, inits, ["N", dims[0]], ["N", weights[-1][1][1]]).SerializeToString())
    return path


def test_external_data_over_the_byte_budget_is_refused_before_reading(tmp_path):
    # 137 bytes pointing at a 4 GB sparse file: 7.9 GB RSS over 47 s before.
    path = _external_model(tmp_path, "w.bin", (2 ** 15, 2 ** 15))
    with open(tmp_path / "w.bin", "wb") as f:
        f.truncate(2 ** 32)
    msg, peak = _import_in_subprocess(path)
    assert re.search(r"with its external data \(4,294,967,296 bytes declared so far\) the model has "
                     r"4,294,967,\d+ bytes, over the limit of 1,073,741,824 bytes \(pass max_bytes=", msg), msg
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"


def test_external_file_must_match_its_tensors_exactly(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = _external_model(tmp_path, "w.bin", (4, 3))
    (tmp_path / "w.bin").write_bytes(w.tobytes() + b"secret")  # more than the tensor
    with pytest.raises(ONNXError) as e:
        jn.onnx.load(path)
    assert "has 54 bytes, but the tensors it holds end at byte 48" in _one_line_error(e)
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    np.testing.assert_array_equal(jn.onnx.load(path).state_dict()["0.weight"], w)

    # Two tensors in one file: an overlap or a gap of 64 KiB or more is refused.
    path = _external_model(tmp_path, "w.bin", (4, 3), extra=[("v", (3, 2), 24)])
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    with pytest.raises(ONNXError) as e:
        jn.onnx.load(path)
    assert "weight 'v' overlaps another tensor in the external file 'w.bin'" in _one_line_error(e)
    path = _external_model(tmp_path, "w.bin", (4, 3), extra=[("v", (3, 2), 48 + 70000)])
    (tmp_path / "w.bin").write_bytes(w.tobytes() + bytes(70000) + bytes(24))
    with pytest.raises(ONNXError) as e:
        jn.onnx.load(path)
    assert "weight 'v' starts 70,000 bytes after the previous tensor" in _one_line_error(e)


def test_external_data_with_alignment_gaps_imports(tmp_path):
    w, v = np.arange(12, dtype=np.float32).reshape(4, 3), -np.arange(6, dtype=np.float32).reshape(3, 2)
    (tmp_path / "w.bin").write_bytes(v.tobytes() + bytes(4096 - 24) + w.tobytes())  # v, then w at 4 KiB
    path = _external_model(tmp_path, "w.bin", (4, 3), offset=4096, extra=[("v", (3, 2), 0)])
    state = jn.onnx.load(path).state_dict()
    np.testing.assert_array_equal(state["0.weight"], w)
    np.testing.assert_array_equal(state["1.weight"], v)


@pytest.mark.parametrize("location, make", [
    (".secret", lambda d: (d / ".secret").write_bytes(bytes(48))),
    (".ssh/id", lambda d: ((d / ".ssh").mkdir(), (d / ".ssh" / "id").write_bytes(bytes(48)))),
    ("link.bin", lambda d: ((d / ".hidden").write_bytes(bytes(48)), (d / "link.bin").symlink_to(d / ".hidden"))),
])
def test_external_data_from_hidden_files_is_refused(tmp_path, location, make):
    make(tmp_path)
    path = _external_model(tmp_path, location, (4, 3))
    with pytest.raises(ONNXError) as e:
        jn.onnx.load(path)
    assert "a hidden file or folder (a name starting with '.')" in _one_line_error(e)


def test_max_bytes_bounds_the_file_and_the_weights(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_init("w", np.ones((1000, 10), np.float32))],
                     ["N", 1000], ["N", 10]), str(path))
    assert jn.onnx.load(path).layers[0].weight.data.shape == (1000, 10)
    with pytest.raises(ONNXError, match=r"the file has 40,\d+ bytes, over the limit of 40,000 bytes \(pass max_bytes"):
        jn.onnx.load(path, max_bytes=40_000)
    with pytest.raises(ONNXError, match=r"its weights as float64 take 80,000 bytes, over the limit of 79,999 bytes"):
        jn.onnx.load(path, max_bytes=79_999, dtype="float64")
    with pytest.raises(ONNXError, match="max_bytes must be a non-negative int"):
        jn.onnx.load(path, max_bytes="big")


# -- PyTorch's exporter shares equal weights through Identity nodes -------------------------------

def _torch_onnx(module, x):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


def test_pytorch_models_with_equal_weights_import():
    nn = torch.nn
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),
                        nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with torch.no_grad():
        for layer in mlp[::2]:
            layer.bias.zero_()  # a plain MLP with zero biases: two Identity nodes
        cnn[4].weight.copy_(cnn[2].weight)
        cnn[4].bias.copy_(cnn[2].bias)
        cnn[10].weight.copy_(cnn[8].weight)
        for i in (6, 8, 10):
            cnn[i].bias.zero_()
    for module, shape in ((mlp.eval(), (4,)), (cnn.eval(), (1, 8, 8))):
        proto = _torch_onnx(module, torch.zeros(1, *shape))
        assert any(n.op_type == "Identity" for n in proto.graph.node)
        model = jn.onnx.from_onnx(proto)
        x = np.random.default_rng(1).standard_normal((5, *shape)).astype(np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        got = model.predict(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# -- import checks what load checks -----------------------------------------------------------------

def test_gemm_scaling_is_checked_after_it_is_applied():
    w = _init("w", np.full((3, 2), 1e10, np.float32))
    for attrs, what in (({"alpha": float("inf")}, "weight 'w' times alpha=inf"),
                        ({"alpha": 1e30}, "weight 'w' times alpha=1e+30"),  # finite in float64, not in float32
                        ({"beta": float("inf")}, "bias 'b' times beta=inf")):
        proto = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], **attrs)],
                       [w, _init("b", np.ones(2, np.float32) * 1e10)], ["N", 3], ["N", 2])
        with pytest.raises(ONNXError) as e:
            jn.onnx.from_onnx(proto)
        assert f"node #0 (Gemm): {what} holds NaN or infinity" in _one_line_error(e)
    proto = _model([helper.make_node("Gemm", ["x", "w"], ["y"], alpha=1e30)], [w], ["N", 3], ["N", 2])
    scaled = np.float64(np.float32(1e10)) * np.float64(np.float32(1e30))  # as ONNX stores them
    assert jn.onnx.from_onnx(proto, dtype="float64").layers[0].weight.data[0, 0] == scaled


def test_a_chain_longer_than_load_builds_is_refused():
    n = MAX_LAYERS + 1
    nodes = [helper.make_node("Relu", ["x" if i == 0 else f"t{i}"], [f"t{i + 1}" if i < n - 1 else "y"])
             for i in range(n)]
    with pytest.raises(ONNXError) as e:
        jn.onnx.from_onnx(_model(nodes, [], ["N", 4], ["N", 4]))
    assert f"would be layer 10,001; jimunet models have at most {MAX_LAYERS:,} layers" in _one_line_error(e)


def test_a_graph_of_too_many_nodes_is_refused_before_it_is_parsed(tmp_path):
    # 1,000,000 Relus (a 26 MB file) took 1.2 GB and 22 s to reach the layer limit; parsing alone
    # takes ~17 times the bytes of such tiny nodes, so they are counted in the wire format first.
    from jimunet.onnx._files import MAX_NODES
    n = MAX_NODES + 1
    nodes = [helper.make_node("Relu", ["x" if i == 0 else f"t{i}"], [f"t{i + 1}" if i < n - 1 else "y"])
             for i in range(n)]
    proto = _model(nodes, [], ["N", 4], ["N", 4])
    onnx.save(proto, str(tmp_path / "chain.onnx"))
    for load in (lambda: jn.onnx.load(tmp_path / "chain.onnx"), lambda: jn.onnx.from_onnx(proto)):
        with pytest.raises(ONNXError) as e:
            load()
        assert f"the graph has more than {MAX_NODES:,} nodes; jimunet imports at most {MAX_NODES:,}" in \
            _one_line_error(e)


def _field(number, payload):
    """A length-delimited protobuf field."""
    n, size = len(payload), bytearray()
    while True:
        size.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes([number << 3 | 2]) + bytes(size) + payload


def test_files_that_parse_into_far_more_memory_are_refused_before_parsing(tmp_path):
    # 1,000,001 empty dims in a 2 MB file parse into ~230 MB; a packed list of 1-byte ints into
    # 8 bytes each (100 MB of them took 2.4 GB and imported).
    from jimunet.onnx._files import MAX_MESSAGES
    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    vi.type.tensor_type.shape.dim.extend([onnx.TensorShapeProto.Dimension()] * (MAX_MESSAGES + 1))
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [vi],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=8),
              str(tmp_path / "dims.onnx"))
    msg, peak = _import_in_subprocess(tmp_path / "dims.onnx")
    assert f"holds more than {MAX_MESSAGES:,} protobuf messages" in msg, msg
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"

    proto = _model([helper.make_node("Relu", ["x"], ["y"])], [], ["N", 4], ["N", 4])
    tensor = _field(1, b"\x01" * 2_000_000) + b"\x10\x01" + _field(8, b"w")  # dims: 2,000,000 packed 1s
    data = proto.SerializeToString() + _field(7, _field(5, tensor))  # a 2nd ModelProto.graph, merged
    (tmp_path / "packed.onnx").write_bytes(data)
    with pytest.raises(ONNXError) as e:
        jn.onnx.load(tmp_path / "packed.onnx", max_bytes=20_000_000)
    assert "parsing it would take more than 20,000,000 bytes" in _one_line_error(e)


def test_layer_arguments_are_checked_by_the_constructors_load_uses():
    proto = _model([helper.make_node("Conv", ["x", "w"], ["y"])], [_init("w", np.ones((0, 2, 3, 3), np.float32))],
                   ["N", 2, 8, 8], ["N", 0, 6, 6])
    with pytest.raises(ONNXError) as e:
        jn.onnx.from_onnx(proto)
    assert re.search(r"node #0 \(Conv\): Conv2D: out_channels must be a positive int.*, got 0", _one_line_error(e))


def test_cli_writes_only_what_jn_load_reads(tmp_path, capsys, monkeypatch):
    import jimunet.app.cli.import_ as cmd
    path = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])], [], ["N", 4], ["N", 4]), str(path))

    def refuse(p, *a, **k):
        raise jn.serialization.CheckpointError(f"{p}: a check jn.load makes")
    monkeypatch.setattr(cmd, "load", refuse)
    assert main(["import", str(path), str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("out.npz not written: jn.load would refuse the model: a check jn.load makes"), err
    assert os.listdir(tmp_path) == ["m.onnx"]  # nor a temporary file
    monkeypatch.undo()
    assert main(["import", str(path), str(tmp_path / "out.npz")]) == 0
    assert jn.load(tmp_path / "out.npz").layers[0].__class__.__name__ == "ReLU"


# -- one-line errors for odd fields and arguments ---------------------------------------------------

@pytest.mark.parametrize("ratio, mode, pattern", [
    ([0.1, 0.2], None, r"node #0 \(Dropout\): its ratio input 'r' must be a single number, got float32 of shape \[2\]"),
    (np.zeros((0,), np.float32), None, r"its ratio input 'r' must be a single number, got float32 of shape \[0\]"),
    (0.1, [True, False], r"its training_mode input 't' must be a single boolean, got bool of shape \[2\]"),
    (0.1, np.float32(1), r"its training_mode input 't' must be a single boolean, got float32 of shape \[\]"),
    (0.1, True, r"training_mode=True drops values at inference"),
])
def test_dropout_inputs_of_the_wrong_shape_or_type(ratio, mode, pattern):
    inits = [_init("r", np.asarray(ratio, np.float32))] + ([] if mode is None else [_init("t", np.asarray(mode))])
    proto = _model([helper.make_node("Dropout", ["x", "r"] + (["t"] if mode is not None else []), ["y"])],
                   inits, ["N", 4], ["N", 4])
    with pytest.raises(ONNXError) as e:
        jn.onnx.from_onnx(proto)
    assert re.search(pattern, _one_line_error(e))


def _conv(**attrs):
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)],
                  [_init("w", np.ones((3, 2, 3, 3), np.float32))],
                  ["N", 2, 8, 8], ["N", 3, "h", "w"])


def _with_attr(proto, name, attr_type, **fields):
    a = proto.graph.node[0].attribute.add(name=name, type=attr_type)
    for k, v in fields.items():
        setattr(a, k, v) if not isinstance(v, list) else getattr(a, k).extend(v)
    return proto


@pytest.mark.parametrize("proto, pattern", [
    (_with_attr(_conv(), "auto_pad", onnx.AttributeProto.STRING, s=b"\xff\xfe"),
     r"attribute 'auto_pad' cannot be read"),
    (_conv(pads=[1, 1]), r"attribute 'pads' must be a list of 4 ints, got \[1, 1\]"),
    (_conv(strides=[1]), r"attribute 'strides' must be a list of 2 ints, got \[1\]"),
    (_conv(dilations=[1, 1, 1]), r"attribute 'dilations' must be a list of 2 ints"),
    (_model([helper.make_node("Constant", [], ["w"], value_string="a"), helper.make_node("MatMul", ["x", "w"], ["y"])],
            [], ["N", 4], ["N", 3]), r"Constant 'w' has no value jimunet can read \(\['value_string'\]"),
    (_model([helper.make_node("Reshape", ["x", "s"], ["y"])], [_init("s", np.array([-1.0, 24.0], np.float32))],
            ["N", 2, 3, 4], ["N", 24]), r"its shape input 's' must be a 1-D int64 tensor, got float32"),
    (_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
            [TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3], raw_data=bytes(8000))],
            ["N", 4], ["N", 3]), r"constant 'w' is corrupt \(.*\); its data may not match its shape and type"),
    (_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_init("w", np.full((4, 3), 1e300))], ["N", 4], ["N", 3]),
     r"weight 'w' holds NaN or infinity, or values beyond float32's range"),
    (_model([helper.make_node("Relu", ["x"], ["y"])], [], ["N", 2 ** 31 + 1], ["N", 2 ** 31 + 1]),
     r"one sample takes 8,589,934,596 bytes as float32"),
    (helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_sequence_value_info("x", 1, ["N", 4])],
        [helper.make_tensor_value_info("y", 1, ["N", 4])]), opset_imports=[helper.make_opsetid("", 21)], ir_version=8),
     r"the input 'x' is a sequence, not a tensor"),
    (helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", 1, ["N", 4])],
        [helper.make_tensor_value_info("y", 1, ["N", 3])], sparse_initializer=[helper.make_sparse_tensor(
            _init("w", np.ones(1, np.float32)), _init("i", np.zeros(1, np.int64)), [4, 3])]),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=8),
     r"node #0 \(MatMul\): its input 'w' is a sparse initializer; jimunet reads dense initializers only"),
])
def test_odd_attributes_and_constants_get_one_line_errors(proto, pattern):
    with pytest.raises(ONNXError) as e:
        jn.onnx.from_onnx(proto)
    assert re.search(pattern, _one_line_error(e)), str(e.value)


def test_fuzzed_attributes_of_every_op_get_one_line_errors():
    """Every supported op with each attribute set to values of every type and shape, and its
    constant inputs replaced by arrays of odd shapes and types: an ONNXError, one line, or a model."""
    values = [0, -1, 2 ** 40, 1.5, float("nan"), "x", [1], [0, 0], [-1, -1], [1, 2, 3, 4], [1.0, 2.0],
              ["a", "b"], numpy_helper.from_array(np.zeros(2, np.float32))]
    ops = {"Conv": (["x", "w", "b"], {"w": np.ones((3, 2, 3, 3), np.float32), "b": np.zeros(3, np.float32)},
                    ["N", 2, 8, 8], ["strides", "pads", "dilations", "group", "kernel_shape", "auto_pad"]),
           "MaxPool": (["x"], {}, ["N", 2, 8, 8], ["kernel_shape", "strides", "pads", "ceil_mode", "auto_pad"]),
           "AveragePool": (["x"], {}, ["N", 2, 8, 8], ["kernel_shape", "count_include_pad", "pads"]),
           "Gemm": (["x", "w", "b"], {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}, ["N", 4],
                    ["alpha", "beta", "transA", "transB"]),
           "LeakyRelu": (["x"], {}, ["N", 4], ["alpha"]),
           "Flatten": (["x"], {}, ["N", 2, 3, 4], ["axis"]),
           "Transpose": (["x"], {}, ["N", 2, 3, 4], ["perm"]),
           "Softmax": (["x"], {}, ["N", 4], ["axis"]),
           "Dropout": (["x", "r", "t"], {"r": np.array(0.2, np.float32), "t": np.array(False)}, ["N", 4], ["seed"])}
    odd = [np.zeros((0,), np.float32), np.zeros((2, 2, 2), np.float32), np.array([1, 2], np.int64),
           np.array(np.nan, np.float32), np.array(True), np.zeros((1, 1), np.float16)]
    tried = 0
    for op, (inputs, inits, dims, names) in ops.items():
        out = ["N", "c", "h", "w"] if len(dims) == 4 else ["N", "f"]
        base = {"kernel_shape": [2, 2]} if "Pool" in op else {}
        cases = []
        for name in names:
            for v in values:
                node = helper.make_node(op, inputs, ["y"], **{k: b for k, b in base.items() if k != name})
                node.attribute.append(helper.make_attribute(name, v))
                cases.append((node, inits))
        for k in inits:
            cases += [(helper.make_node(op, inputs, ["y"], **base), {**inits, k: v}) for v in odd]
        for node, consts in cases:
            tried += 1
            try:
                jn.onnx.from_onnx(_model([node], [_init(k, v) for k, v in consts.items()], dims, out))
            except ONNXError as e:
                assert "\n" not in str(e) and not CLASS_NAME.search(str(e)), (node, str(e))
    assert tried > 300


@pytest.mark.parametrize("architecture", [
    "[" * 200_000 + "]" * 200_000,                                          # RecursionError before
    '{"layers": [{"class": "LeakyReLU", "config": "a string"}]}',           # AttributeError before
    '{"layers": [{"class": "LeakyReLU", "config": {"alpha": 1' + "0" * 400 + '}}]}',
    '{"layers": [{"class": "LeakyReLU", "config": {"alpha": NaN}}]}', '"x"', '{"layers": "x"}',
])
def test_odd_metadata_of_a_jimunet_export_is_ignored(architecture):
    # The architecture a jimunet export records is only a hint (exact float parameters, "same"
    # padding); the graph defines the model.
    proto = _model([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.5)], [], ["N", 4], ["N", 4])
    proto.producer_name = "jimunet"
    proto.metadata_props.add(key="architecture", value=architecture)
    assert jn.onnx.from_onnx(proto).layers[0].alpha == 0.5


def test_cli_import_to_an_empty_or_directory_name(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])], [], ["N", 4], ["N", 4]), str(path))
    for args, message in (([str(path), ""], "OUT.npz is empty; expected the name of the .npz file to write"),
                          (["", "out.npz"], "IN.onnx is empty; expected the path of an ONNX file"),
                          ([str(path), str(tmp_path)], f"{tmp_path}: a directory; expected the name of the .npz")):
        assert main(["import", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"jimunet import: error: {message}" or err.startswith(f"jimunet import: error: {message}"), err
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_from_onnx_leaves_the_proto_unchanged(tmp_path):
    path = _external_model(tmp_path, "w.bin", (4, 3))
    (tmp_path / "w.bin").write_bytes(np.ones((4, 3), np.float32).tobytes())
    proto = onnx.load(str(path), load_external_data=False)
    before = proto.SerializeToString()
    jn.onnx.from_onnx(proto, base_dir=str(tmp_path))
    assert proto.SerializeToString() == before
    assert json.loads(json.dumps(jn.onnx.load(path).metadata))["onnx"]["input_shape"] == [4]
