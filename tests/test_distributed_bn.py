"""BatchNorm in data-parallel training: N processes train the network one process trains.

Before (issue #21), each process normalised with the statistics of its own share of the
batch: after two steps of ``jimunet train --model resnet`` on 2 processes a running mean
differed 16-fold and conv weights by 4.5%, while the log said the weights equalled one
process's. Now a BatchNorm layer that computes one process's share of a batch gets the
statistics of the whole batch (``jimunet.parallel.batch_sync``, ``distributed.BatchSync``):

- "exact": it all-gathers its input (forward) and output gradient (backward) and runs one
  process's arithmetic on the whole batch; with graph models split into stages (``jn.Model``
  runs its per-sample nodes on each process's blocks, the Dense head on the whole batch),
  ``mnist_resnet`` trains BIT-IDENTICAL weights and running statistics on 2 and 3
  processes, also where BLAS rounds by shape (``blas_rounding.py``).
- "allreduce": the processes add their per-channel sums (rank order, so every process gets
  the same numbers): one process's weights up to float rounding. In float32 that rounding
  is mostly BatchNorm's own: one process adds a channel's 15,680 values (20 images of
  28×28) in its blocks of long rows, two processes each add their half, and the four steps
  of training amplify the difference. Measured after 4 steps, in units of max(|largest
  weight of the tensor|, 0.1): float32 2.5e-4 (resnet; its BatchNorm biases), 1.4e-6
  (Sequential); float64 4.3e-15. The resnet run is ill-conditioned in float32: its second
  step's gradients differ by 1-2% between float32 and float64, so the float32 run of one
  process is itself 2.5e-4 away from the float64 run (2.3e-5 when BatchNorm summed row after
  row, as one process and the all-reduce then both did, and the two runs differed by 2.3e-5
  too). The tests allow ``TOL32`` = 1e-3 and ``TOL64`` = 1e-10;
  without the exchange the same runs differ by 0.012 to 0.36 (a Dense bias before a
  BatchNorm has no gradient but weight decay and stays near 0, hence the 0.1 floor of the
  scale).

The MPI jobs reuse ``test_distributed.py``'s launcher: each in its own session, every
process killed when the test ends, however it ends.
"""
import json

import numpy as np
import pytest

import jimunet as jn
from jimunet.parallel import batch_sync, synced_batch
from jimunet.random import batch_shard
from test_distributed import TESTS, _api_runs, _assert_identical_weights, _jimunet, _single, _weights, mpi  # noqa: F401

TOL32, TOL64 = 1e-3, 1e-10  # "allreduce", float32 and float64: of max(largest |weight|, FLOOR); see above
FLOOR = 0.1


# -- in one process ------------------------------------------------------------------------

def _small_resnet(dtype=np.float32):
    return jn.models.mnist_resnet(rng=np.random.default_rng(3), stem=4, blocks=((8, 2), (8, 1)), dtype=dtype)


def test_a_graph_splits_where_one_tensor_carries_everything():
    model = jn.models.mnist_resnet(rng=0)
    k = model.per_sample_stages()
    steps = model.graph_steps()
    assert k == len(steps) - 1 and type(steps[k][1]).__name__ == "Dense"  # all but the head
    assert model.stages_output_shape((28, 28, 1), slice(0, k)) == (64,)
    x = np.random.default_rng(0).random((6, 28, 28, 1)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((6, 10)).astype(np.float32)
    whole = model.forward(x, training=True)
    model.zero_grad()
    dx = model.backward(g)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    feats = model.forward(x, training=True, stages=slice(0, k))
    np.testing.assert_array_equal(model.forward(feats, training=True, stages=slice(k, None)), whole)
    df = model.backward(g, stages=slice(k, None))
    np.testing.assert_array_equal(model.backward(df, stages=slice(0, k)), dx)
    for a, b in zip(grads, model.parameters()):
        np.testing.assert_array_equal(b.grad, a)
    with pytest.raises(ValueError, match="stages 0:5 do not start and end where one tensor"):
        model.forward(x, stages=slice(0, 5))  # inside a residual block: two tensors cross
    fresh = jn.models.mnist_resnet(rng=0)
    cuts = []
    for n in range(len(steps) + 1):  # between the residual blocks (and inside the stem and head)
        try:
            h = fresh.forward(fresh.forward(x, stages=slice(0, n)), stages=slice(n, None))
        except ValueError:
            continue
        cuts.append(n)
        np.testing.assert_array_equal(h, fresh.forward(x))
    assert cuts == [0, 1, 2, 3, 11, 12, 20, 21, 27, 28, 29, 30]


class _WholeBatch:
    """An exact exchange for one process standing in for rank ``rank``: ``gather`` returns the
    whole batch's arrays, given in advance (what the all-gathers would bring)."""
    exact = True

    def __init__(self, shares, rank, arrays):
        self.shares, self.rows, self.total = shares, shares[rank], shares[-1].stop
        self.arrays = list(arrays)

    def gather(self, x):
        whole = self.arrays.pop(0)
        np.testing.assert_array_equal(whole[self.rows], x)  # this process's share of it
        return whole


@pytest.mark.parametrize("shape", [(9, 5, 5, 3), (9, 3)])
def test_batchnorm_on_a_share_gets_the_whole_batch_statistics(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    one = jn.layers.BatchNorm(3)
    y = one.forward(x, training=True)
    dx = one.backward(dy)
    shares = [slice(0, 4), slice(4, 9)]
    for rank, rows in enumerate(shares):
        bn = jn.layers.BatchNorm(3)
        with batch_shard(rows.start, rows.stop, 9), synced_batch(_WholeBatch(shares, rank, [x, dy])):
            assert batch_sync(rows.stop - rows.start) is not None and batch_sync(9) is None
            np.testing.assert_array_equal(bn.forward(x[rows], training=True), y[rows])
        np.testing.assert_array_equal(bn.backward(dy[rows]), dx[rows])
        for got, expected in zip(bn.parameters() + bn.buffers(), one.parameters() + one.buffers()):
            np.testing.assert_array_equal(got.data, expected.data)
            np.testing.assert_array_equal(got.grad, expected.grad)  # the whole batch's, on every process


def test_without_the_exchange_a_share_has_its_own_statistics():
    # the old behaviour, which the tests above and below would catch
    x = np.random.default_rng(0).normal(3, 2, (8, 5, 5, 3)).astype(np.float32)
    one, share = jn.layers.BatchNorm(3), jn.layers.BatchNorm(3)
    one.forward(x, training=True)
    with batch_shard(0, 4, 8):
        share.forward(x[:4], training=True)
    assert not np.array_equal(share.running_mean.data, one.running_mean.data)


def test_graph_models_take_the_exact_reduction():
    from jimunet.training import Trainer

    class Ranks:
        rank, size, local_size = 0, 3, 3
    model = jn.models.mnist_resnet(rng=0)
    opt = jn.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=64, comm=Ranks())
    assert trainer.reduction == "exact"


# -- MPI jobs ------------------------------------------------------------------------------

SCRIPT = '''
import os, sys
import numpy as np
import jimunet as jn
from jimunet.training import Trainer
from jimunet.training.strategies import AllReduceStep, ExactBlockStep

sys.path.insert(0, os.environ["JIMUNET_TESTS"])
from blas_rounding import rounding_by_shape


class Unsynced:  # the old behaviour: each process normalises with its own share of the batch
    def run(self, trainer, xb, yb):
        return self._run(trainer, xb, yb)


class UnsyncedExact(Unsynced, ExactBlockStep):
    pass


class UnsyncedAllReduce(Unsynced, AllReduceStep):
    pass


if os.environ.get("ROUND") == "1":
    np.matmul = rounding_by_shape(np.matmul)
jn.set_num_threads(1)
dtype = np.dtype(os.environ.get("DTYPE", "float32"))
mode = sys.argv[1]
rng = np.random.default_rng(3)
L = jn.layers
if os.environ["MODEL"] == "resnet":  # stem, a block with a projection shortcut, an identity block
    model = jn.models.mnist_resnet(rng=rng, stem=4, blocks=((8, 2), (8, 1)), dtype=dtype)
else:  # BatchNorm in the per-sample layers (NHWC) and in the head (N, features)
    model = jn.Sequential([L.Conv2D(1, 6, 3, use_bias=False, rng=rng, dtype=dtype), L.BatchNorm(6, dtype=dtype),
                           L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(14 * 14 * 6, 16, rng=rng, dtype=dtype),
                           L.BatchNorm(16, dtype=dtype), L.ReLU(), L.Dense(16, 10, rng=rng, dtype=dtype)])
opt = jn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
comm = jn.distributed.init() if mode != "one" else None
strategy = {"exact-unsynced": UnsyncedExact, "allreduce-unsynced": UnsyncedAllReduce}.get(mode)
trainer = Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=int(os.environ["BATCH"]), rng=1,
                  progress=False, log=False, comm=comm, reduction=mode if mode in ("exact", "allreduce") else "auto",
                  strategy=strategy(comm) if strategy else None)
assert mode not in ("exact", "allreduce") or trainer.reduction == mode
trainer.sync_from_rank0()
data = np.random.default_rng(0)
x = data.random((46, 28, 28, 1)).astype(dtype)
y = data.integers(0, 10, 46)
trainer.fit(x, y, epochs=2)
if comm is None or comm.rank == 0:
    np.savez(sys.argv[2], loss=np.array(trainer.history.step_loss), **trainer.model.state_dict())
'''


def _runs(mpi, tmp_path, n, mode, model, batch=20, **env):  # noqa: F811
    return _api_runs(mpi, tmp_path, SCRIPT, n, mode, MODEL=model, BATCH=str(batch), JIMUNET_TESTS=TESTS, **env)


def _worst(one, many) -> float:
    """The largest difference of a tensor, in units of max(its largest |value|, FLOOR)."""
    return max(float(np.abs(many[k].astype(np.float64) - one[k]).max()) / max(float(np.abs(one[k]).max()), FLOOR)
               for k in one.files)


@pytest.mark.parametrize("n, model, batch", [(2, "resnet", 20), (3, "resnet", 20), (3, "resnet", 13),
                                             (3, "sequential", 20)])
def test_batchnorm_models_train_bit_identical_weights_where_blas_rounds_by_shape(mpi, tmp_path, n, model, batch):
    one, many = _runs(mpi, tmp_path, n, "exact", model, batch, ROUND="1")
    assert len(one["loss"]) == 2 * (46 // batch)
    assert any(k.endswith("running_mean") for k in one.files)
    for k in one.files:  # the loss, every weight and every BatchNorm buffer
        np.testing.assert_array_equal(many[k], one[k], err_msg=k)


@pytest.mark.parametrize("n, model", [(2, "resnet"), (3, "sequential")])
def test_batchnorm_models_train_the_weights_of_one_process_to_float_rounding_with_allreduce(mpi, tmp_path, n, model):
    one, many = _runs(mpi, tmp_path, n, "allreduce", model)
    assert _worst(one, many) <= TOL32


def test_float64_allreduce_matches_one_process_to_1e_10(mpi, tmp_path):
    one, many = _runs(mpi, tmp_path, 3, "allreduce", "resnet", DTYPE="float64")
    assert _worst(one, many) <= TOL64


def test_without_the_exchange_both_reductions_fail_these_checks(mpi, tmp_path):
    one, many = _runs(mpi, tmp_path, 2, "exact-unsynced", "resnet", ROUND="1")
    assert not np.array_equal(many["1.running_mean"], one["1.running_mean"])
    assert _worst(one, many) > 10 * TOL32
    one, many = _runs(mpi, tmp_path, 2, "allreduce-unsynced", "resnet")
    assert _worst(one, many) > 10 * TOL32


def test_the_resnet_recipe_on_two_processes_is_what_the_log_says(mpi, tmp_path):
    # the command: jimunet train --model resnet --self-test --epochs 1 --shift 0 [--distributed]
    args = ["--model", "resnet", "--epochs", "1", "--shift", "0", "--seed", "5"]
    one = _single(tmp_path, "one", *args)
    r = mpi.run((2, ["--distributed", "--self-test", "--no-report", "--out", "many", *args]), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "many" / "train.log").read_text()
    assert "exact reduction" in log and "BatchNorm layers' batch statistics" in log
    assert "the weights are bit-identical to one process's" in log and "float rounding" not in log
    _assert_identical_weights(_weights(tmp_path / "many" / "model.npz"), _weights(one / "model.npz"))
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, tmp_path / "many"))
    assert m2["step_loss"] == m1["step_loss"]


NAN_SCRIPT = '''
import numpy as np
import jimunet as jn
from jimunet.training import Trainer, TrainingDiverged

L = jn.layers
model = jn.Sequential([L.Dense(2, 2, rng=0), L.BatchNorm(2), L.Dense(2, 3, rng=0)])
model.layers[0].weight.data[...] = np.eye(2)  # BatchNorm needs dX here: its backward exchanges sums
model.layers[2].weight.data[...] = 0
model.layers[2].weight.data[0, 0] = 1e38  # class 0's logit: 1e38 x the normalised first feature
opt = jn.optim.SGD(model.parameters(), lr=0.01)
comm = jn.distributed.init()
trainer = Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=20, rng=1, progress=False, log=False,
                  comm=comm, reduction="allreduce", shuffle=False)
trainer.sync_from_rank0()
x = np.zeros((20, 2), np.float32)
x[-1, 0] = 1.0  # one outlier, in the last rank's slice: x̂ = sqrt(19), logit inf, loss NaN there only
try:
    trainer.fit(x, np.ones(20, np.int64), epochs=1)
except TrainingDiverged as e:
    print(f"rank {comm.rank}: {e}", flush=True)
'''


def test_a_loss_that_overflows_on_one_rank_ends_every_rank_with_allreduce(mpi, tmp_path):
    # The rank whose loss is NaN skips backward; the others' BatchNorm backward would wait for
    # it in an exchange forever (measured: hung until killed). Now the ranks agree first.
    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT)
    p = mpi.start_script(2, [script])
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    for rank in (0, 1):
        assert f"rank {rank}: training diverged at step 0" in out and "on 1 of 2 processes" in out, out
