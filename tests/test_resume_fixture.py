"""A run directory written by an older jimunet resumes under this one.

``fixtures/resume_run.tar.xz`` is the run directory of ``jimunet train --model resnet`` on
small synthetic data (``fixtures/resume_run.json``'s ``config``, ``make_resume_fixture.
synthetic_mnist``) as the code
of commit 818601d left it when interrupted after epoch 1; ``resume_run.json`` holds the
SHA-256 of the final weights and checkpoint, and the metrics, of the UNINTERRUPTED run made
by that same code (``fixtures/make_resume_fixture.py`` made both). Resuming the old run
directory with today's code must end where that run ended: the checkpoint format, the
parameter names of a graph model, the optimizer state, the RNG streams (shuffling,
augmentation) and the schedule all carry across versions.

"Where it ended" is bit for bit while the arithmetic rounds as it did then. A deliberate
change of rounding (BatchNorm's sums over fixed blocks of long rows, issue #23) ends the
resumed run a float32 rounding away: the test then checks the run against the old one within
that (the same steps, epochs, learning rates, predictions, losses to 1e-4), and bit for bit
against ``resume_run.json``'s ``"resumed"``, which ``fixtures/record_resumed.py`` recorded
after that change (and refuses to record a run that is not within rounding of the old one).
"""
import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from jimunet.app.training import train_mnist

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _fixture_helpers():
    """``make_resume_fixture``'s hashing helpers (the module imports jimunet only in main())."""
    spec = importlib.util.spec_from_file_location("make_resume_fixture",
                                                  os.path.join(FIXTURES, "make_resume_fixture.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unpack(tmp_path):
    with tarfile.open(os.path.join(FIXTURES, "resume_run.tar.xz"), "r:xz") as tar:
        names = tar.getnames()
        assert all(n.startswith("resume_run/") and ".." not in n for n in names), names
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12, 3.11.4, 3.10.12, 3.9.17
            tar.extractall(tmp_path, filter="data")
        else:
            tar.extractall(tmp_path)
    return tmp_path / "resume_run"


def test_fixture_is_an_interrupted_run_of_the_old_version(tmp_path):
    run = _unpack(tmp_path)
    assert sorted(os.listdir(run)) == ["best.npz", "checkpoint.npz", "metrics.json", "run.json", "train.log"]
    assert json.loads((run / "run.json").read_text()) == {"format": "jimunet-run", "version": 1,
                                                          "status": "interrupted", "jimunet": "0.1.0"}
    with np.load(run / "checkpoint.npz", allow_pickle=False) as z:
        meta = json.loads(z["__meta__"].tobytes())
    assert meta["format"] == "jimunet-checkpoint" and meta["state"]["epoch"] == 1
    assert meta["metadata"]["config"]["out"] is None and meta["metadata"]["config"]["data_dir"] is None
    assert not os.path.isabs(json.loads((run / "metrics.json").read_text())["config"]["out"] or "")


def resume_and_summarise(run) -> dict:
    """Resume ``run`` with today's code; what the old version's uninterrupted run is compared on."""
    helpers = _fixture_helpers()
    with open(os.path.join(FIXTURES, "resume_run.json")) as f:
        names = json.load(f)["checkpoint_arrays"]
    data = helpers.synthetic_mnist()
    data_sha256 = helpers.weights_sha256({"x_train": data[0][0], "y_train": data[0][1], "x_test": data[1][0],
                                          "y_test": data[1][1]})
    result = train_mnist(resume=run, data=data, echo=False)
    checkpoint = helpers.npz_arrays(os.path.join(run, "checkpoint.npz"))
    with open(os.path.join(run, "run.json")) as f:
        status = json.load(f)["status"]
    return {**helpers.summary(str(run)), "blas": helpers.blas(), "data_sha256": data_sha256, "run_dir": result.run_dir,
            "epochs": [e["epoch"] for e in result.history.epochs], "test_accuracy": result.test_accuracy,
            "status": status, "lock_left": os.path.exists(os.path.join(run, ".jimunet.lock")),
            "old_arrays_kept": set(names) <= set(checkpoint),
            "old_arrays_sha256": helpers.weights_sha256(checkpoint, names) if set(names) <= set(checkpoint) else None}


def _kernels(blas):
    return [(b["internal_api"], b["architecture"]) for b in blas]


LOSS_RTOL = 1e-4  # a float32 run's losses after a change of rounding, against the old run's


def far_from_the_old_run(got: dict, expected: dict) -> list:
    """How ``got`` (``resume_and_summarise``) differs from the old version's uninterrupted run
    by more than float rounding: an empty list when it is the same run."""
    old, new = expected["metrics"], got["metrics"]
    problems = [f"{k}: {new.get(k)!r}, the old run {old[k]!r}" for k in old
                if k not in ("step_loss", "epochs") and new.get(k) != old[k]]
    steps = expected["config"]["train_size"] // expected["config"]["batch_size"] * expected["interrupted_after_epoch"]
    if new["step_loss"][:steps] != old["step_loss"][:steps]:
        problems.append("the losses of the old run's own epochs were not kept")
    if len(new["step_loss"]) != len(old["step_loss"]) or not np.allclose(new["step_loss"], old["step_loss"],
                                                                         rtol=LOSS_RTOL, atol=0):
        problems.append(f"step losses {new['step_loss']}, the old run {old['step_loss']}")
    for e_new, e_old in zip(new["epochs"], old["epochs"]):
        for k, v in e_old.items():
            same = np.isclose(e_new[k], v, rtol=LOSS_RTOL, atol=0) if k == "train_loss" else e_new[k] == v
            if not same:
                problems.append(f"epoch {e_old['epoch']} {k}: {e_new[k]!r}, the old run {v!r}")
    if len(new["epochs"]) != len(old["epochs"]):
        problems.append(f"{len(new['epochs'])} epochs, the old run {len(old['epochs'])}")
    return problems


def test_a_run_that_went_elsewhere_is_far_from_the_old_run():
    with open(os.path.join(FIXTURES, "resume_run.json")) as f:
        expected = json.load(f)
    same = {"metrics": json.loads(json.dumps(expected["metrics"]))}
    assert far_from_the_old_run(same, expected) == []
    rounded = json.loads(json.dumps(same))
    rounded["metrics"]["step_loss"][-1] *= 1 + LOSS_RTOL / 10
    assert far_from_the_old_run(rounded, expected) == []
    for change in ("loss", "lr", "prediction", "epoch 1"):
        other = json.loads(json.dumps(same))
        if change == "loss":
            other["metrics"]["step_loss"][-1] *= 1 + LOSS_RTOL * 10
        elif change == "lr":
            other["metrics"]["epochs"][1]["lr"] *= 1.01
        elif change == "prediction":
            other["metrics"]["confusion_matrix"][0][0] += 1
        else:
            other["metrics"]["step_loss"][0] += 1e-12
        assert far_from_the_old_run(other, expected), change


def test_old_run_directory_resumes_where_the_old_version_ended(tmp_path):
    """Bit-identity with the recorded resume holds where the BLAS kernels are the fixture's
    (OpenBLAS picks them by CPU): elsewhere the resume runs in a subprocess told to use them
    (``OPENBLAS_CORETYPE``)."""
    helpers = _fixture_helpers()
    with open(os.path.join(FIXTURES, "resume_run.json")) as f:
        expected = json.load(f)
    run = _unpack(tmp_path / "moved")  # elsewhere than where it was written, as a user would
    if _kernels(helpers.blas()) == _kernels(expected["blas"]):
        got = resume_and_summarise(str(run))
    else:
        env = dict(os.environ, OPENBLAS_CORETYPE=expected["blas"][0]["architecture"])
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(run)], env=env, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        if _kernels(got["blas"]) != _kernels(expected["blas"]):
            pytest.skip(f"the fixture's weights were made with BLAS kernels {_kernels(expected['blas'])}; this "
                        f"machine uses {_kernels(got['blas'])} and cannot be told to use those")
    assert got["data_sha256"] == expected["data_sha256"], "synthetic_mnist() no longer makes the fixture's data"
    assert got["run_dir"] == str(run) and got["epochs"] == [1, 2]
    assert got["status"] == "completed" and not got["lock_left"]
    # the checkpoint may gain arrays; the old ones (weights, momentum, BN statistics) must be there
    assert got["old_arrays_kept"]
    assert far_from_the_old_run(got, expected) == []
    assert got["test_accuracy"] == expected["metrics"]["test_accuracy"]
    resumed = expected["resumed"]  # today's rounding, recorded: every bit
    assert _kernels(resumed["blas"]) == _kernels(expected["blas"])
    assert got["model_sha256"] == resumed["model_sha256"], "final weights differ from the recorded resume's"
    assert got["old_arrays_sha256"] == resumed["checkpoint_sha256"]
    assert got["metrics"]["step_loss"] == resumed["step_loss"] and got["metrics"]["epochs"] == resumed["epochs"]


if __name__ == "__main__":  # the subprocess of test_old_run_directory_resumes_bit_identically
    got = resume_and_summarise(sys.argv[1])
    print(json.dumps({**got, "checkpoint_arrays": None}))
