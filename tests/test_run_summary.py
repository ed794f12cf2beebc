"""The end of ``jimunet train``: the test error of each saved model, named, and the times as the report shows them."""
import json
import re

import numpy as np

import jimunet as jn
from jimunet.app.recipes import MNISTConfig
from jimunet.app.training import train_mnist
from jimunet.data.images import preprocess


def test_the_end_of_a_run_gives_model_npz_and_best_npz_their_own_test_errors(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (400, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 400)  # noise: errors move
    # 2,000 test images: on 200 the two weights' errors coincided (93.00%) with some BLAS rounding
    x_test, y_test = rng.integers(0, 256, (2000, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 2000)
    run = tmp_path / "run"
    r = train_mnist(MNISTConfig(epochs=4, validation_size=100, out=str(run), report=False, progress=False),
                    data=((x, y), (x_test, y_test)), echo=False)
    log = (run / "train.log").read_text()
    best_epoch = r.history.best_epoch
    assert best_epoch != 4  # this seed's run, so that best.npz and model.npz differ (else one line says so)
    m = re.search(r"test error ([\d.]+)% \(accuracy [\d.]+%, 2000 images\): model\.npz, the weights after the "
                  r"last epoch \(4\)\n", log)
    assert m and float(m.group(1)) == round(r.test_error, 2), log
    m = re.search(rf"test error of best\.npz, the weights of epoch {best_epoch} \(the lowest validation error, "
                  rf"[\d.]+%\): ([\d.]+)% \(accuracy [\d.]+%\)\n", log)
    best = jn.evaluate(jn.load(run / "best.npz"), preprocess(x_test), y_test)
    assert m and float(m.group(1)) == round(best.error, 2) and best.error != r.test_error, log
    # the training time printed is the report's (metrics.json's wall_time_s), named as such
    wall = json.loads((run / "metrics.json").read_text())["wall_time_s"]
    assert f"(training time {wall:.1f} s, the report's figure: the epochs alone, all sessions; " in log


def test_a_resumed_run_without_best_npz_says_so_and_finishes(tmp_path):
    run = tmp_path / "run"
    cfg = dict(self_test=True, out=str(run), report=False, progress=False)
    train_mnist(MNISTConfig(epochs=1, **cfg), echo=False)
    (run / "best.npz").unlink()  # e.g. a copy of the directory without it
    train_mnist(MNISTConfig(epochs=2, **cfg), resume=run, echo=False)
    log = (run / "train.log").read_text()
    assert "test error of best.npz" not in log.split("resumed from")[1]
    assert re.search(r"best\.npz, the weights of epoch \d \(the lowest validation error, 0\.00%\): "
                     r"not tested \(no such file: .*best\.npz\)\n", log), log
