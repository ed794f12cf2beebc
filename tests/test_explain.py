"""jimunet.app.explain: the block-by-block walk of one image, its figures and its CLI hook."""
import argparse
import io
import sys

import numpy as np
import pytest

import jimunet as jn
from jimunet.app.cli.explain import register
from jimunet.app.explain import explain
from jimunet.app.plotting import PlotDependencyError
from jimunet.data.images import preprocess
from jimunet.functional.softmax import softmax


def _digit(seed=0):
    """A stroke-like uint8 28x28x1 image (deterministic, no data set needed)."""
    img = np.zeros((28, 28), np.uint8)
    img[5:23, 13:16] = 255
    img[5:8, 8:20] = 200
    img += np.random.default_rng(seed).integers(0, 30, (28, 28)).astype(np.uint8)
    return img[..., None]


def _run(model, image, **kw):
    buf = io.StringIO()
    recs = explain(model, image, file=buf, **kw)
    return recs, buf.getvalue()


def _small_stack(final=None):
    layers = [jn.layers.Conv2D(1, 4, 3, stride=2, padding="valid", rng=1), jn.layers.AvgPool2D(2),
              jn.layers.Flatten(), jn.layers.Dense(6 * 6 * 4, 10, rng=2)]
    return jn.Sequential(layers + ([final] if final else []))


def test_mnist_cnn_shapes_im2col_and_gemm_sizes():
    model = jn.models.mnist_cnn(rng=0)
    recs, text = _run(model, _digit())
    chain = [tuple(recs[0]["input_shape"])] + [tuple(r["output_shape"]) for r in recs]
    assert chain == [(28, 28, 1), (28, 28, 32), (28, 28, 32), (14, 14, 32), (14, 14, 64), (14, 14, 64),
                     (7, 7, 64), (3136,), (512,), (512,), (512,), (10,)]
    assert [r["kind"] for r in recs] == [type(layer).__name__ for layer in model.layers]
    c1, c2 = recs[0]["details"], recs[3]["details"]
    assert c1["im2col"] == [784, 25] and c2["im2col"] == [196, 800]
    assert c1["gemm"] == [[784, 25], [25, 32]] and c2["gemm"] == [[196, 800], [800, 64]]
    assert c1["padding"] == [[2, 2], [2, 2]] and c2["padding"] == [[2, 2], [2, 2]]
    assert recs[7]["details"]["gemm"] == [[1, 3136], [3136, 512]]
    assert recs[10]["details"]["gemm"] == [[1, 512], [512, 10]]
    assert recs[2]["details"]["window"] == [2, 2] and recs[2]["details"]["stride"] == [2, 2]
    # FLOPs and parameters agree with the model summary
    summary = model.summary((28, 28, 1))
    assert [r["flops"] for r in recs] == [row["flops"] for row in summary.rows]
    assert sum(r["params"] for r in recs) == summary.total_params
    # the printed text says the same
    for s in ("28x28x1 -> 28x28x32", "28x28x32 -> 14x14x32", "14x14x32 -> 14x14x64", "14x14x64 -> 7x7x64",
              "7x7x64 -> 3136", "3136 -> 512", "512 -> 10", "im2col   784 x 25", "im2col   196 x 800",
              "(784 x 25) . (25 x 32)", "(196 x 800) . (800 x 64)", "(1 x 3136) . (3136 x 512)",
              "padding  top 2, bottom 2, left 2, right 2", "window   2x2 (max), stride 2x2", "top-3",
              f"{summary.total_flops:,} FLOPs"):
        assert s in text, s
    # value ranges are those of the real activations, and the top-3 is the model's prediction
    x = preprocess(_digit())[None]
    outs = [x]
    for layer in model.layers:
        outs.append(layer.forward(outs[-1]))
    for r, y in zip(recs, outs[1:]):
        assert r["min"] == pytest.approx(float(y.min()), rel=1e-6, abs=1e-7)
        assert r["max"] == pytest.approx(float(y.max()), rel=1e-6, abs=1e-7)
    assert recs[1]["min"] == 0.0 and 0 < recs[1]["zero_fraction"] < 1
    probs = softmax(model.predict(x).astype(np.float64))[0]
    np.testing.assert_allclose(recs.probabilities, probs, rtol=1e-5)
    assert [k for k, _ in recs.top] == list(np.argsort(-probs)[:3])
    assert recs.top[0][1] >= recs.top[1][1] >= recs.top[2][1]


def test_another_stack_strided_valid_conv_and_avgpool():
    recs, text = _run(_small_stack(), _digit(1))
    assert [tuple(r["output_shape"]) for r in recs] == [(13, 13, 4), (6, 6, 4), (144,), (10,)]
    d = recs[0]["details"]
    assert d["padding"] == [[0, 0], [0, 0]] and d["im2col"] == [169, 9] and d["gemm"] == [[169, 9], [9, 4]]
    assert d["stride"] == [2, 2]
    assert recs[1]["details"]["window"] == [2, 2]
    assert recs[3]["details"]["gemm"] == [[1, 144], [144, 10]]
    for s in ("28x28x1 -> 13x13x4", "13x13x4 -> 6x6x4", "6x6x4 -> 144", "144 -> 10", "im2col   169 x 9",
              "(mean)", "stride 2x2"):
        assert s in text, s
    assert len(recs.top) == 3


def test_sigmoid_tanh_stack_and_same_padded_pool_ranges():
    model = jn.Sequential([jn.layers.Conv2D(1, 3, 3, padding=1, rng=0), jn.layers.Tanh(),
                           jn.layers.MaxPool2D(3, stride=2, padding="same"), jn.layers.Flatten(),
                           jn.layers.Dense(14 * 14 * 3, 5, rng=1), jn.layers.Sigmoid()])
    recs, text = _run(model, _digit(2).astype(np.float32) / 255.0)  # float image: used as is
    assert [tuple(r["output_shape"]) for r in recs] == [(28, 28, 3), (28, 28, 3), (14, 14, 3), (588,), (5,),
                                                        (5,)]
    assert recs[0]["details"]["padding"] == [[1, 1], [1, 1]]
    assert recs[2]["details"]["padding"] == [[0, 1], [0, 1]]  # TF "same": the larger half after
    assert -1 <= recs[1]["min"] <= recs[1]["max"] <= 1
    assert 0 <= recs[5]["min"] <= recs[5]["max"] <= 1
    assert "Tanh()" in text and "Sigmoid()" in text and "uint8 pixels scaled" not in text


def test_image_layouts_and_wrong_shape():
    model = _small_stack()
    a = explain(model, _digit(), file=None)
    b = explain(model, _digit()[..., 0], file=None)
    c = explain(model, _digit()[None], file=None)
    assert a.top == b.top == c.top
    with pytest.raises(ValueError, match="cannot take an image"):
        explain(model, np.zeros((32, 32, 1), np.uint8), file=None)


def test_out_dir_writes_one_png_per_block(tmp_path):
    from PIL import Image

    model = jn.models.mnist_cnn(rng=0)
    recs, _ = _run(model, _digit(), out_dir=tmp_path / "ex")
    pngs = sorted(p.name for p in (tmp_path / "ex").glob("layer-*.png"))
    assert len(pngs) == len(model.layers) == len(recs)
    assert pngs[0] == "layer-00-Conv2D.png" and pngs[-1] == "layer-10-Dense.png"
    assert (tmp_path / "ex" / "input.png").exists()
    for r in recs:
        with Image.open(r["png"]) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 150


def test_text_works_without_matplotlib_and_figures_give_the_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    recs, text = _run(_small_stack(), _digit())
    assert len(recs) == 4 and "top-3" in text
    with pytest.raises(PlotDependencyError, match=r"pip install 'jimunet\[plot\]'") as info:
        explain(_small_stack(), _digit(), out_dir=tmp_path / "x", file=None)
    assert not isinstance(info.value, ImportError)
    assert not (tmp_path / "x").exists()


def _parser():
    parser = argparse.ArgumentParser(prog="jimunet")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_untrained_model_with_npy_file(tmp_path, capsys):
    f = tmp_path / "digit.npy"
    np.save(f, _digit())
    args = _parser().parse_args(["explain", str(f)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "im2col   784 x 25" in out and "top-3" in out


def test_cli_saved_model_index_and_out(tmp_path, capsys, monkeypatch):
    model = _small_stack()
    model.save(tmp_path / "m.npz")
    x = np.stack([_digit(s) for s in range(3)])
    y = np.array([4, 1, 7], np.int64)
    monkeypatch.setattr(jn.datasets, "load_mnist", lambda root=None, **kw: ((x, y), (x, y)))
    args = _parser().parse_args(["explain", str(tmp_path / "m.npz"), "--index", "2",
                                 "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "test image 2 (true label 7)" in out and "13x13x4 -> 6x6x4" in out and "UNTRAINED" not in out
    assert len(list((tmp_path / "o").glob("layer-*.png"))) == 4
    # --index and a FILE together are refused; a bad index too
    np.save(tmp_path / "d.npy", _digit())
    args = _parser().parse_args(["explain", str(tmp_path / "m.npz"), str(tmp_path / "d.npy"), "--index", "0"])
    assert args.func(args) == 2
    args = _parser().parse_args(["explain", "--index", "99"])
    assert args.func(args) == 2
    assert "--index" in capsys.readouterr().err


def test_cli_picture_file(tmp_path, capsys):
    from PIL import Image

    # a picture goes through jimunet.data.images (the reader of `jimunet predict`, which
    # normalises it like an MNIST digit): the walk equals that of the normalised pixels
    from jimunet.data.images import load_inputs

    path = tmp_path / "digit.png"
    Image.fromarray(_digit()[..., 0]).save(path)
    np.save(tmp_path / "normalised.npy", load_inputs(path))
    outs = []
    for f in (path, tmp_path / "normalised.npy"):
        args = _parser().parse_args(["explain", str(f)])
        assert args.func(args) == 0
        outs.append(capsys.readouterr().out)
    assert "top-3" in outs[0]
    body = [o[o.index("[ 0]"):] for o in outs]  # after the lines naming the input file
    assert body[0] == body[1]


def test_conv_algorithm_and_multiplication_counts_are_shown():
    model = jn.models.mnist_cnn(rng=0)
    recs, text = _run(model, _digit())
    c1, c2 = recs[0]["details"], recs[3]["details"]
    assert (c1["algorithm"], c1["tile"]) == ("im2col", None)  # one input channel: auto keeps im2col
    assert c1["multiplies"] == c1["multiplies_im2col"] == 28 * 28 * 25 * 32
    assert (c2["algorithm"], c2["tile"]) == ("winograd", [4, 4])
    # 14x14 output = 4x4 tiles of 4x4 (the last ones cut), 8x8 products per tile and channel pair
    assert c2["multiplies"] == 16 * 64 * 32 * 64 and c2["multiplies_im2col"] == 14 * 14 * 25 * 32 * 64
    assert "algo     im2col: 627,200 multiplies" in text
    assert "algo     winograd F(4x4, 5x5): 64 products per 4x4 tile and channel pair; 2,097,152 multiplies " \
           "vs im2col's 10,035,200 (4.79x fewer)" in text
    # what is shown is what ran
    assert model.layers[3].last_algorithm == ("winograd", (4, 4))
    forced = jn.Sequential([jn.layers.Conv2D(1, 4, 3, algorithm="winograd", winograd_tile=2, rng=0)])
    recs, text = _run(forced, _digit())
    assert recs[0]["details"]["algorithm"] == "winograd" and "winograd F(2x2, 3x3): 16 products" in text


def _explain_cli(*argv):
    args = _parser().parse_args(["explain", *map(str, argv)])
    return args.func(args)


def test_out_never_overwrites_a_file_jimunet_did_not_write(tmp_path, capsys):
    np.save(tmp_path / "d.npy", _digit())
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "input.png").write_bytes(b"my holiday photo")
    (pics / "layer-00-Conv2D.png").write_bytes(b"my drawing")
    assert _explain_cli(tmp_path / "d.npy", "--out", pics) == 2
    err = capsys.readouterr().err
    assert "is not a directory jimunet explain wrote" in err and "none of your files is overwritten" in err
    assert sorted(p.name for p in pics.iterdir()) == ["input.png", "layer-00-Conv2D.png"]
    assert (pics / "input.png").read_bytes() == b"my holiday photo"
    assert (pics / "layer-00-Conv2D.png").read_bytes() == b"my drawing"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")  # a directory of the user's, whatever is in it
    assert _explain_cli(tmp_path / "d.npy", "--out", other) == 2
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert _explain_cli(tmp_path / "d.npy", "--out", a_file) == 2 and a_file.read_text() == "mine"


def test_out_replaces_its_own_pngs_only(tmp_path, capsys):
    np.save(tmp_path / "d.npy", _digit())
    out = tmp_path / "ex"
    assert _explain_cli(tmp_path / "d.npy", "--out", out) == 0  # new: made
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert "explain.json" in first and "input.png" in first and "layer-00-Conv2D.png" in first
    assert _explain_cli(tmp_path / "d.npy", "--out", out) == 0  # its own: replaced
    assert {p.name for p in out.iterdir()} == set(first)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _explain_cli(tmp_path / "d.npy", "--out", empty) == 0
    # a file put into explain's directory under a name explain did not write there is refused too
    small = tmp_path / "small"
    explain(_small_stack(), _digit(), out_dir=small, file=None)  # 4 layers: layer-00 .. layer-03
    (small / "layer-04-ReLU.png").write_bytes(b"mine")
    capsys.readouterr()
    assert _explain_cli(tmp_path / "d.npy", "--out", small) == 2  # mnist_cnn writes layer-04-ReLU.png
    assert "holds layer-04-ReLU.png, which jimunet explain did not write" in capsys.readouterr().err
    assert (small / "layer-04-ReLU.png").read_bytes() == b"mine"


def test_out_on_a_full_disk_keeps_the_previous_pngs_and_names_the_file(tmp_path, monkeypatch, capsys):
    from full_disk import full_disk

    np.save(tmp_path / "d.npy", _digit())
    out = tmp_path / "ex"
    assert _explain_cli(tmp_path / "d.npy", "--out", out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full_disk(monkeypatch, out, 2000, only="layer-03-Conv2D.png")
    from jimunet.app import cli
    capsys.readouterr()
    assert cli.main(["explain", str(tmp_path / "d.npy"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jimunet explain: error: cannot write {out / 'layer-03-Conv2D.png'}: No space left on device"]
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys() and after["layer-03-Conv2D.png"] == before["layer-03-Conv2D.png"]
