"""The commands on models of other data sets: a colour CIFAR-like array set and a generated image folder."""
import json
import os
import re

import numpy as np
import pytest

import jimunet as jn
from jimunet.app.cli import main
from jimunet.app.recipes import MNISTConfig, recipe_defaults, RESNET_DEFAULTS, FASHION_RESNET_DEFAULTS
from jimunet.app.training import train_mnist
from jimunet.data import ArrayDataset, Splits

from test_modelinfo import CIFAR, cifar_like

# jn.data.load reads image folders once helper folder's jimunet.data.folder is merged
HAS_FOLDERS = getattr(jn.data.loaders, "load_folder", None) is not None
needs_loaders = pytest.mark.skipif(not HAS_FOLDERS, reason="image folders land with jimunet.data.folder")


@pytest.fixture(scope="module")
def cifar_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar") / "run"
    cfg = MNISTConfig(data="cifar10", model="resnet", epochs=1, batch_size=16, lr=0.05, dropout=0.0, lr_decay=1.0,
                      validation_size=32, train_size=96, out=str(out), report=False)
    train_mnist(cfg, data=(cifar_like(128), cifar_like(40, seed=1)), echo=False)
    return out / "best.npz"


@pytest.fixture
def fake_cifar10(monkeypatch):
    """``jn.data.load("cifar10")`` answered by a small CIFAR-like array set (the real one cannot be fetched here)."""
    x, y = cifar_like(40, seed=1)
    calls = []

    def load(name, root=None, download=True, progress=None):
        calls.append(name)
        assert name == "cifar10"
        return Splits(ArrayDataset(*cifar_like(64), class_names=CIFAR), ArrayDataset(x, y, class_names=CIFAR),
                      tuple(CIFAR), (32, 32, 3), "test arrays", "cifar10")
    monkeypatch.setattr(jn.data, "load", load, raising=False)
    return calls


def make_folder(root, size=(12, 12), train=16, test=6):
    """``root/train/<red|green|blue>/*.png`` and ``root/test/...``: colour decides the class."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for k, name in enumerate(("blue", "green", "red")):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 80, (*size, 3)).astype(np.uint8)
                a[..., 2 - k] += 150
                Image.fromarray(a).save(root / split / name / f"{i}.png")
    return root


def test_recipe_defaults_follow_the_data():
    assert recipe_defaults(None, "cifar10") == {} and recipe_defaults("resnet", "mnist") == RESNET_DEFAULTS
    assert recipe_defaults("resnet", "fashion-mnist") == {**RESNET_DEFAULTS, "flip": True} == FASHION_RESNET_DEFAULTS
    assert "shift" not in recipe_defaults("resnet", "cifar10")  # colour images: crops and flips instead
    cfg = MNISTConfig(data="some/folder").with_data_defaults(3)
    assert (cfg.crop, cfg.flip) == (4, True)
    assert (MNISTConfig(data="fashion-mnist").with_data_defaults(1).crop, MNISTConfig().with_data_defaults(1).crop) \
        == (0, None)


def test_predict_names_classes_of_a_colour_model(cifar_model, tmp_path, capsys):
    from PIL import Image
    x, _ = cifar_like(2, seed=3)
    Image.fromarray(np.repeat(np.repeat(x[0], 3, 0), 2, 1)).save(tmp_path / "big.png")  # 96x64: fitted to 32x32
    Image.fromarray(x[1][..., 0]).save(tmp_path / "gray.png")  # grayscale: made RGB
    np.save(tmp_path / "two.npy", x)
    assert main(["predict", str(cifar_model), str(tmp_path / "big.png"), str(tmp_path / "gray.png"),
                 str(tmp_path / "two.npy"), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for ln in lines:
        top = re.findall(r"([a-z]+) \([<>]?(\d+\.\d\d)%\)", ln.split(": ", 1)[1])
        assert len(top) == 2 and all(name in CIFAR for name, _ in top)


def test_predict_refuses_an_array_of_another_shape(cifar_model, tmp_path, capsys):
    np.save(tmp_path / "digits.npy", np.zeros((2, 28, 28), np.uint8))
    assert main(["predict", str(cifar_model), str(tmp_path / "digits.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected an array of shape (32, 32, 3) or (N, 32, 32, 3)" in err and len(err.splitlines()) == 1


def test_evaluate_uses_the_models_own_data_set(cifar_model, fake_cifar10, capsys):
    assert main(["evaluate", str(cifar_model)]) == 0
    out = capsys.readouterr().out
    assert fake_cifar10 == ["cifar10"]
    assert "CIFAR-10 test set: 40 images" in out and "rows: true class" in out
    assert "classes: 0 airplane, 1 automobile, 2 bird" in out


def test_evaluate_refuses_data_of_another_shape(cifar_model, monkeypatch, capsys):
    x = np.zeros((10, 28, 28), np.uint8)
    monkeypatch.setattr(jn.datasets, "load_mnist", lambda root=None, **kw: ((x, np.arange(10)), (x, np.arange(10))))
    assert main(["evaluate", str(cifar_model), "--data", "mnist"]) == 2
    assert "MNIST's images are 28x28x1; the model takes 32x32x3 images" in capsys.readouterr().err


def test_the_old_model_still_predicts_digits(tmp_path, capsys):
    import tarfile
    with tarfile.open(os.path.join(os.path.dirname(__file__), "fixtures", "resume_run.tar.xz"), "r:xz") as tar:
        tar.extract("resume_run/best.npz", tmp_path)
    np.save(tmp_path / "d.npy", np.zeros((28, 28), np.uint8))
    assert main(["predict", str(tmp_path / "resume_run" / "best.npz"), str(tmp_path / "d.npy"), "--top", "1"]) == 0
    assert re.fullmatch(r".*d\.npy: \d \([<>]?\d+\.\d\d%\)", capsys.readouterr().out.strip())


@needs_loaders
def test_train_on_a_generated_folder_end_to_end(tmp_path, capsys):
    folder = make_folder(tmp_path / "colours")
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--epochs", "1", "--batch-size", "8", "--out", str(out),
                 "--no-report"]) == 0
    log = capsys.readouterr().out
    assert "data: 44 train / 4 validation / 18 test" in log and "random crops (padding 4 px), horizontal flips" in log
    model = jn.load(out / "best.npz")
    assert model.metadata["class_names"] == ["blue", "green", "red"]
    assert model.metadata["dataset"] == {"name": "folder", "path": str(folder)}
    assert main(["evaluate", str(out / "model.npz")]) == 0
    assert f"folder {folder} test set: 18 images" in capsys.readouterr().out
    assert main(["predict", str(out / "model.npz"), str(folder / "test" / "red" / "0.png")]) == 0
    assert re.match(r".*0\.png: (blue|green|red) \(", capsys.readouterr().out)
    # the run directory holds no paths: resuming needs the folder again
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    assert "give the folder again" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "2", "--data", str(folder), "--no-report"]) == 0



def test_training_on_a_folder_says_what_it_ignored_and_names_the_input(tmp_path, capsys):
    folder = make_folder(tmp_path / "colours", train=4, test=2)
    (folder / "train" / "red" / "notes.txt").write_text("not an image")
    assert main(["train", "--data", str(folder), "--epochs", "1", "--batch-size", "4", "--out",
                 str(tmp_path / "run"), "--no-report"]) == 0
    log = capsys.readouterr().out
    assert "; ignored: 1 not images (.txt 1))" in log, log
    assert "model cnn for 12x12x3 images:" in log, log

# -- report --------------------------------------------------------------------------------------

@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the report draws, by file name (kept open for inspection)."""
    from jimunet.app.report import figures
    kept = {}
    real = figures.save_figure

    def keep(fig, path, dpi=100):
        kept[os.path.basename(path)] = fig
        return real(fig, path, dpi)
    monkeypatch.setattr(figures, "save_figure", keep)
    return kept


def test_report_of_a_colour_model(cifar_model, fake_cifar10, drawn):
    pytest.importorskip("matplotlib")
    from jimunet.app.report import write_report
    run = cifar_model.parent
    out = write_report(run, weights="best.npz")
    data = json.loads((run / "report.json").read_text())
    assert data["data"] == "the CIFAR-10 test set (40 images)" and data["num_classes"] == 10
    html = open(out, encoding="utf-8").read()
    assert "(true airplane, predicted " in html  # test image #0, by class name
    confusion = drawn["report-confusion.png"].axes[0]
    assert [t.get_text() for t in confusion.get_xticklabels()] == CIFAR
    images = [ax.images[0] for ax in drawn["report-mistakes.png"].axes if ax.images]
    assert images and all(im.get_array().shape == (32, 32, 3) for im in images)  # in colour
    assert all(re.match(r"[a-z]+ \u2192 [a-z]+\np = ", ax.get_title())
               for ax in drawn["report-mistakes.png"].axes if ax.images)


def test_report_mistakes_are_white_on_black_like_every_other_view(tmp_path, drawn, monkeypatch):
    """Issue #25: the mistakes figure drew digits black on white (``gray_r``); the feature maps' input
    and the page show them white on black."""
    pytest.importorskip("matplotlib")
    from jimunet.app.report import write_report
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 28, 28, 1)).astype(np.uint8), np.arange(60) % 10
    jn.models.mnist_cnn(rng=0).save(tmp_path / "model.npz")
    write_report(tmp_path, data=(x, y))
    cmaps = {ax.images[0].get_cmap().name for name in ("report-mistakes.png", "report-features-1.png")
             for ax in drawn[name].axes if ax.images and ax.images[0].get_array().ndim == 2
             and ax.images[0].get_array().shape == (28, 28)}
    assert cmaps == {"gray"}


def test_per_class_labels_are_not_crossed_by_the_overall_line(tmp_path, drawn):
    """Issue #25: the dashed overall-accuracy line ran through the value labels of classes near it;
    the labels now sit over it, each on an opaque white box."""
    pytest.importorskip("matplotlib")
    from jimunet.app.report import write_report
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 28, 28, 1)).astype(np.uint8), np.arange(60) % 10
    jn.models.mnist_cnn(rng=0).save(tmp_path / "model.npz")
    write_report(tmp_path, data=(x, y))
    ax = drawn["report-per-class.png"].axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_linestyle() == "--")
    labels = [t for t in ax.texts if re.fullmatch(r"\d+\.\d", t.get_text())]
    assert labels
    for t in labels:
        box = t.get_bbox_patch()
        assert t.get_zorder() > line.get_zorder() and box is not None
        assert box.get_facecolor()[:3] == (1.0, 1.0, 1.0) and box.get_alpha() in (None, 1.0)


# -- explain -------------------------------------------------------------------------------------

def test_explain_a_test_image_of_the_models_data_set(cifar_model, fake_cifar10, capsys):
    assert main(["explain", str(cifar_model), "--index", "3"]) == 0
    out = capsys.readouterr().out
    assert "image    CIFAR-10 test image 3 (true label cat)" in out
    assert "input    32x32x3" in out and "(x - mean) / std per channel" in out
    assert re.search(r"predicted [a-z]+, true label cat: (right|WRONG)", out)
    top = out[out.index("top-3"):].splitlines()[1:4]
    assert all(line.split()[0] in CIFAR for line in top)


def test_explain_a_picture_for_a_colour_model(cifar_model, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image
    x, _ = cifar_like(1, seed=5)
    Image.fromarray(np.repeat(np.repeat(x[0], 2, 0), 2, 1)).save(tmp_path / "pic.png")
    assert main(["explain", str(cifar_model), str(tmp_path / "pic.png"), "--out", str(tmp_path / "walk")]) == 0
    out = capsys.readouterr().out
    assert f"image    {tmp_path / 'pic.png'}" in out and "input    32x32x3" in out
    assert (tmp_path / "walk" / "input.png").is_file()


def test_export_takes_the_input_shape_the_model_records(tmp_path, capsys):
    pytest.importorskip("onnx")
    from jimunet.app.modelinfo import model_metadata
    meta = model_metadata((32, 32, 3), CIFAR, jn.data.Normalize([120, 120, 110], [60, 60, 60]), {"name": "cifar10"})
    jn.models.mnist_cnn(rng=0, input_shape=(32, 32, 3)).save(tmp_path / "m.npz", metadata=meta)
    assert main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 0
    assert "(batch, 32, 32, 3)" in capsys.readouterr().out


def test_a_resumed_run_keeps_the_normalisation_it_computed(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = MNISTConfig(data="cifar10", epochs=1, batch_size=16, validation_size=16, train_size=48, out=str(out),
                      report=False)
    data = (cifar_like(64), cifar_like(20, seed=1))
    train_mnist(cfg, data=data, echo=False)
    first = jn.load(out / "model.npz").metadata["normalize"]

    def refuse(*a, **k):
        raise AssertionError("computed again")
    monkeypatch.setattr(jn.data.Normalize, "estimate", classmethod(refuse))
    result = train_mnist(cfg.replace(epochs=2, out=None), resume=str(out), data=data, echo=False)
    assert [e["epoch"] for e in result.history.epochs] == [1, 2]
    assert jn.load(out / "model.npz").metadata["normalize"] == first


def test_unknown_data_is_refused_before_a_run_directory_is_made(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nosuch"), "--out", str(tmp_path / "run")]) == 2
    assert "expected mnist, fashion-mnist, cifar10 or an image folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_picture_pixels_takes_a_files_bytes(cifar_model):
    import io
    from PIL import Image
    from jimunet.app.modelinfo import model_info
    from jimunet.app.pictures import picture_pixels
    buf = io.BytesIO()
    Image.fromarray(cifar_like(1)[0][0]).save(buf, format="PNG")
    info = model_info(jn.load(cifar_model))
    assert picture_pixels(buf.getvalue(), info).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="upload: not a readable image"):
        picture_pixels(b"not an image", info, "upload")
