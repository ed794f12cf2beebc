"""MPI jobs with a faulty process: a rank paused (SIGSTOP), a recipe the processes cannot run.

A paused rank must not make the others spin (a blocking MPI call polls at full speed): they
wait sleeping, and after ``--mpi-timeout`` / ``JIMUNET_MPI_TIMEOUT`` seconds of silence the
job ends with a message naming the silent rank. The jobs run under the ``mpi`` fixture of
``test_distributed`` (own session, every process killed at the end, however the test ends);
a paused process is also continued, so nothing stays stopped.
"""
import json
import os
import signal
import sys
import textwrap
import time

import pytest

from jimunet.distributed import DistributedError, timeout_from_env
from test_distributed import JOB_TIMEOUT, _jimunet, _proc_stat, _rank_pid, _wait_for_epoch, mpi  # noqa: F401

CPU_BOUND = 0.25  # of one core: a spinning rank uses 0.6-1.0 (measured 0.95), a sleeping one 0.005

_LOOP = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import jimunet as jn
    comm = jn.distributed.init()
    print(f"rank {comm.rank} pid {os.getpid()}", flush=True)
    buf = np.ones(1000, np.float32)
    try:
        while True:
            buf[:] = 1
            comm.allreduce_(buf)
            time.sleep(0.005)
    except jn.distributed.DistributedTimeout as e:
        print(f"timeout: {e}", file=sys.stderr, flush=True)
        comm.abort(3)
""")


def _cpu_seconds(pid: int) -> float:
    st = _proc_stat(str(pid))
    assert st is not None, f"process {pid} is gone"
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _gone(pid: int, within: float = 30.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        st = _proc_stat(str(pid))
        if st is None or st[0] == "Z":
            return True
        time.sleep(0.2)
    return False


def _pids(p, n):
    pids = {}
    end = time.monotonic() + JOB_TIMEOUT
    while len(pids) < n:
        assert time.monotonic() < end and p.poll() is None, "the job did not start"
        line = p.stdout.readline()
        if line.startswith("rank "):
            _, rank, _, pid = line.split()
            pids[int(rank)] = int(pid)
    return pids


def _continue(pid):
    try:
        os.kill(pid, signal.SIGCONT)
    except OSError:
        pass


@pytest.mark.parametrize("n", [2, 3])
def test_a_paused_rank_costs_the_others_no_cpu_and_ends_the_job_naming_it(mpi, tmp_path, n):
    (tmp_path / "loop.py").write_text(_LOOP)
    p = mpi.start_script(n, [tmp_path / "loop.py"], JIMUNET_MPI_TIMEOUT="6")
    pids = _pids(p, n)
    time.sleep(0.5)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        time.sleep(1.0)  # the others are waiting by now
        c0, t0 = _cpu_seconds(pids[0]), time.monotonic()
        time.sleep(3.0)
        share = (_cpu_seconds(pids[0]) - c0) / (time.monotonic() - t0)
        assert share < CPU_BOUND, f"rank 0 used {share:.0%} of a core while waiting for the paused rank 1"
        out, err = p.communicate(timeout=120)  # the 6 s limit, the roll call, the abort
    finally:
        _continue(pids[1])
    assert p.returncode != 0, (out, err)
    # the ranks and prterun share one pipe: the line may follow a stray byte of an MPI banner
    lines = [s[s.index("timeout: "):] for s in err.splitlines() if "timeout: " in s]
    assert lines and "waited" in lines[0] and "for rank 1, which did not answer" in lines[0], err[-3000:]
    assert "ranks" not in lines[0].split("waited")[1].split("which")[0], lines  # rank 2 answered: only 1 named
    assert all(_gone(pid) for pid in pids.values()), "a process of the job is still there"


def test_train_ends_the_job_when_a_rank_is_paused_and_the_run_resumes(mpi, tmp_path):
    run = tmp_path / "run"
    p = mpi.start((2, ["--distributed", "--self-test", "--no-report", "--epochs", "10000", "--mpi-timeout", "5",
                       "--out", run]))
    _wait_for_epoch(p, run, 2)
    victim = _rank_pid(mpi.token, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGSTOP)
    try:
        out, err = p.communicate(timeout=120)
    finally:
        _continue(victim)
    assert p.returncode != 0
    line = [s for s in err.splitlines() if "jimunet train [rank 0 of 2]: error: " in s]  # ranks share one pipe
    assert line and "for rank 1, which did not answer" in line[0] and "--mpi-timeout" in line[0], err[-3000:]
    assert "Traceback" not in err and "DistributedTimeout" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert _gone(victim)
    done = json.loads((run / "metrics.json").read_text())["epochs_completed"]
    r = _jimunet("train", "--resume", run, "--epochs", done + 1, "--threads", "1", timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr


def test_a_batch_smaller_than_the_job_is_a_usage_error_that_leaves_nothing(mpi, tmp_path):
    r = mpi.run((3, ["--distributed", "--self-test", "--no-report", "--batch-size", "2", "--out", tmp_path / "run"]),
                timeout=JOB_TIMEOUT)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    errors = [s for s in r.stderr.splitlines() if ": error: " in s]
    assert len(errors) == 1 and ("jimunet train [rank 0 of 3]: error: --batch-size 2 is smaller than the 3 "
                                 "processes") in errors[0], r.stderr[-3000:]  # ranks share one pipe
    assert "ValueError" not in r.stderr and "MPI_ABORT" not in r.stderr
    assert not (tmp_path / "run").exists()
    r = mpi.run((3, ["--distributed", "--self-test", "--no-report", "--batch-size", "2"]), timeout=JOB_TIMEOUT)
    assert r.returncode == 2 and not (tmp_path / "runs").exists(), r.stderr[-3000:]  # the default directory neither


def test_the_time_limit_is_read_and_checked(monkeypatch, tmp_path):
    monkeypatch.delenv("JIMUNET_MPI_TIMEOUT", raising=False)
    assert timeout_from_env() == 300
    monkeypatch.setenv("JIMUNET_MPI_TIMEOUT", "2.5")
    assert timeout_from_env() == 2.5
    monkeypatch.setenv("JIMUNET_MPI_TIMEOUT", "0")
    assert timeout_from_env() is None  # no limit
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("JIMUNET_MPI_TIMEOUT", bad)
        with pytest.raises(DistributedError, match="JIMUNET_MPI_TIMEOUT must be a number of seconds >= 0"):
            timeout_from_env()
    r = _jimunet("train", "--self-test", "--mpi-timeout", "5", "--out", tmp_path / "run")
    assert r.returncode == 2 and "--mpi-timeout limits how long" in r.stderr and "add --distributed" in r.stderr
    assert not (tmp_path / "run").exists()
    r = _jimunet("train", "--distributed", "--mpi-timeout", "-3", "--out", tmp_path / "run")
    assert r.returncode == 2 and "must be a number >= 0, got -3" in r.stderr


def test_a_bad_time_limit_in_the_environment_is_a_usage_error(tmp_path):
    pytest.importorskip("mpi4py")
    r = _jimunet("train", "--distributed", "--self-test", "--out", tmp_path / "run",
                 env={"JIMUNET_MPI_TIMEOUT": "soon", "OMPI_ALLOW_RUN_AS_ROOT": "1",
                      "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    assert r.returncode == 2 and "JIMUNET_MPI_TIMEOUT must be a number of seconds >= 0" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
