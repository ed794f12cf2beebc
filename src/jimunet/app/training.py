"""``train_mnist``: the TensorFlow sample's recipe (``jimunet train``) on top of the ``Trainer``.

Data split and scaling, a run directory with ``model.npz``, ``best.npz``, ``checkpoint.npz``,
``metrics.json`` and ``train.log`` (written by the callbacks of ``run_callbacks``), resuming,
Ctrl-C/SIGTERM handling and data-parallel runs over MPI.
"""
from __future__ import annotations

import math
import os
import platform
import shlex
import signal
import time
from dataclasses import dataclass

import numpy as np

from .._version import __version__
from ..backend import check_device
from ..data import Normalize
from ..distributed import BlockLayout
from ..layers import BatchNorm
from ..parallel import set_num_threads, split
from ..serialization import CheckpointError
from ..training import CallbackList, History, StopBetweenSteps, Trainer, TrainingDiverged, TrainingInterrupted, evaluate
from ..training.checkpoint import read_checkpoint_meta
from ..training.strategies import select_strategy
from .recipes import (RESUMABLE_FIELDS, ConfigError, MNISTConfig, build, describe_recipe, make_augment, prepare_model,
                      recipe_callbacks)
from .rundir import RunDir, RunLog, StopSignals, new_run_dir, portable_config
from .run_callbacks import ReportAtEnd, RunFiles, RunSummary
from .modelinfo import predictor_for
from .traindata import MNISTData, check_data, load_data, part_args, part_size

__all__ = ["train_mnist", "TrainResult", "load_run_config", "MNISTData", "distributed_problem"]

@dataclass
class TrainResult:
    """What ``train_mnist`` returns."""

    run_dir: str
    model: object
    history: History
    test_accuracy: float
    test_error: float
    confusion: np.ndarray
    metrics: dict


def train_mnist(config: MNISTConfig | dict | None = None, *, resume=None, callbacks=(), data=None,
                echo: bool = True, comm=None) -> TrainResult:
    """Train the TF sample's network on MNIST with its recipe, writing a run directory.

    Args:
        config: ``MNISTConfig`` (or a dict of its fields); default: the sample's settings.
            With ``resume``, default: the checkpoint's configuration; a given one must match
            it except in ``epochs``, ``data_dir``, ``threads``, ``progress``, ``report``,
            ``download`` (``epochs`` may grow to train longer). The checkpoint's paths are
            never used: ``data_dir`` is the given one (else ``$JIMUNET_DATA``, else the default).
        resume: a run directory holding ``checkpoint.npz``: continue it, wherever it has been
            moved and from any working directory. Resumed training ends bit-identical to an
            uninterrupted run on the same machine (any thread count).
        callbacks: extra ``Callback`` objects (after the one that writes the run directory).
        data: ``((x_train, y_train), (x_test, y_test))`` in ``load_mnist``'s format
            (uint8 pixels), instead of loading MNIST.
        echo: print the log lines (they always go to ``train.log``).
        comm: a ``jimunet.distributed.Communicator``: train data-parallel with every process
            of the MPI job (each calls ``train_mnist`` with the same arguments). Rank 0 takes
            the configuration (and the checkpoint, when resuming), gives it to the others, and
            alone writes the run directory; the others write nothing and return a
            ``TrainResult`` without test results (``run_dir`` None). The weights are those of
            a single process: bit-identical with ``config.reduction`` "exact" (the default
            for both recipes), up to float rounding with "allreduce" (``Trainer``).

    Run directory (``config.out``, default ``runs/<YYYYmmdd-HHMMSS>``):
        ``run.json`` (marker and status), ``checkpoint.npz`` after every epoch (and the initial
        state), ``best.npz`` (lowest validation error), ``model.npz`` (final weights),
        ``metrics.json``, ``train.log``. It must be new, empty or a jimunet run directory, and
        is locked while the run lasts (``jimunet.app.rundir``). Ctrl-C and SIGTERM stop the
        run at the end of the step in progress (when called from the main thread).

    Returns:
        ``TrainResult(run_dir, model, history, test_accuracy, test_error, confusion, metrics)``.

    Raises:
        ConfigError: impossible settings; ``RunDirError`` (a ConfigError): the directory is
            not jimunet's, already holds a run, or is in use (``RunDirBusy``).
        FileNotFoundError / CheckpointError: bad ``resume``.
        TrainingDiverged: NaN/inf loss (checkpoint.npz keeps the last good epoch).
        TrainingInterrupted: Ctrl-C or SIGTERM (``signum``); checkpoint.npz holds the last
            completed epoch.
        MNISTUnavailableError: MNIST could not be loaded.
    """
    if isinstance(config, dict):
        config = MNISTConfig.from_dict(config)
    if comm is not None and comm.rank != 0:
        return _train_mnist_worker(config, list(callbacks), data, comm)
    config = _settle_config(config, resume)
    stops = StopSignals()
    with RunDir.claim(config.out, resume=resume is not None) as run, stops.installed():
        log = RunLog(run.file("train.log"), echo=echo)
        try:
            return _train_mnist(config, run, resume is not None, list(callbacks), data, log, stops, comm)
        finally:
            log.close()


def _settle_config(config, resume) -> MNISTConfig:
    """The run's validated configuration, ``out`` its run directory (the resumed one, when resuming)."""
    if resume is None:
        config = (config or MNISTConfig()).validate()
        check_device(config.device)  # before a run directory is made for nothing
        check_data(config)
        return config.replace(out=config.out or new_run_dir())
    run_dir = os.fspath(resume)
    saved = _read_checkpoint_config(run_dir)
    if config is None:
        config = saved
    if saved.data == "folder" and (config.data == "folder" or config.data_kind != "folder"):
        raise ConfigError(f"{run_dir} trained on an image folder, and its files hold no paths: give the folder "
                          f"again (jimunet train --resume {run_dir} --data FOLDER)")
    diff = [f"{k} (checkpoint {getattr(saved, k)!r}, given {getattr(config, k)!r})"
            for k in saved.to_dict() if k not in RESUMABLE_FIELDS and not _same_setting(k, saved, config)]
    if diff:
        raise ConfigError(f"cannot resume {run_dir} with different settings: {'; '.join(diff)}")
    if config.out is not None and not _same_dir(config.out, run_dir):
        raise ConfigError(f"resume writes into the run directory it resumes ({run_dir}), not {config.out}")
    config = config.replace(out=run_dir, flip=saved.flip if config.flip is None else config.flip,
                            crop=saved.crop if config.crop is None else config.crop).validate()
    check_data(config)
    check_device(config.device)
    return config


def _same_setting(k: str, saved: MNISTConfig, given: MNISTConfig) -> bool:
    if k == "data":
        return saved.data_kind == given.data_kind
    if k in ("flip", "crop") and getattr(given, k) is None:  # "the data's default": the checkpoint settled it
        return True
    return getattr(saved, k) == getattr(given, k)


def _same_dir(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _make_trainer(cfg, data, comm, **kwargs) -> Trainer:
    """The recipe's ``Trainer`` for ``data`` on ``cfg.device``, with ``cfg.threads`` threads."""
    _apply_threads(cfg.threads, 1 if comm is None else comm.local_size)
    meta = data.meta or {}
    n = part_size(data.train)
    model, loss_fn, optimizer, schedule = build(cfg, train_size=n, input_shape=meta.get("input_shape", (28, 28, 1)),
                                                num_classes=len(meta.get("class_names", range(10))))
    prepare_model(cfg, model, data.train, data.normalize)
    model.to(cfg.device)  # DeviceError (a ValueError) says what to install or check
    kwargs["callbacks"] = [*recipe_callbacks(cfg, model, optimizer, n), *kwargs.get("callbacks", ())]
    return Trainer(model, loss_fn, optimizer, batch_size=cfg.batch_size, schedule=schedule, shuffle=cfg.shuffle,
                   rng=np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(1)[0]),
                   eval_batch_size=cfg.eval_batch_size, comm=comm, augment=make_augment(cfg),
                   reduction=cfg.reduction, **kwargs)


def _apply_threads(threads, processes_here: int = 1) -> None:
    if threads is not None:
        set_num_threads(int(threads))
    elif processes_here > 1:  # processes on one host share its cores
        set_num_threads(max(1, (os.cpu_count() or 1) // processes_here))


def distributed_problem(cfg: MNISTConfig, comm) -> str | None:
    """Why the processes of ``comm`` cannot train ``cfg`` together (None when they can), found without
    writing anything: a batch smaller than the number of processes, a device other than the CPU, a
    reduction the model does not allow."""
    if cfg.batch_size < comm.size:
        return (f"--batch-size {cfg.batch_size} is smaller than the {comm.size} processes of the job; each process "
                f"needs at least one image of every batch: use --batch-size {comm.size} or more, or fewer processes")
    if cfg.device != "cpu":
        return f"distributed training runs on the CPU (NumPy arrays), not on --device {cfg.device}"
    model = build(cfg, train_size=cfg.train_size or cfg.batch_size)[0]
    try:
        select_strategy(model, cfg.batch_size, comm, cfg.reduction)
    except ValueError as e:
        return str(e).removeprefix("Trainer: ")
    return None


def _train_mnist_worker(config, callbacks, data, comm) -> TrainResult:
    """``train_mnist`` on a rank other than 0: rank 0's recipe and state, no files, no output."""
    own = config or MNISTConfig()
    limit, comm.timeout = comm.timeout, None  # rank 0 may be downloading MNIST meanwhile: no time limit
    try:
        recipe = comm.broadcast_json()
    finally:
        comm.timeout = limit
    cfg = MNISTConfig.from_dict(recipe).replace(data_dir=own.data_dir, threads=own.threads, download=own.download)
    if cfg.data == "folder":  # the run's files hold no paths: every process names the folder
        cfg = cfg.replace(data=own.data)
    data = load_data(cfg, data)
    trainer = _make_trainer(cfg, data, comm, progress=False, log=False, callbacks=[StopBetweenSteps(), *callbacks])
    trainer.sync_from_rank0()
    stops = StopSignals()
    # Only rank 0 validates and tests (its numbers are the run's): the others would compute
    # the same ones, on the same weights, for nothing.
    try:
        with stops.installed(), stops.deferred(to=trainer.request_stop):
            trainer.fit(*part_args(data.train), cfg.epochs, **_normalize(data))
    except TrainingInterrupted as e:
        e.all_ranks = trainer.stop_agreed
        raise
    return TrainResult(None, trainer.model, trainer.history, None, None, None, None)


def _train_mnist(cfg, run, resuming, callbacks, data, log, stops, comm=None) -> TrainResult:
    t_start = time.perf_counter()
    log(f"{'resuming' if resuming else 'starting'} run {run.path}  (jimunet {__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()})")
    if run.removed:
        log(f"removed {len(run.removed)} temporary file{'s' if len(run.removed) > 1 else ''} left by a write that "
            f"was cut short: {', '.join(run.removed)}")
    data = load_data(cfg, data, _saved_normalize(run) if resuming else None)
    cfg = cfg.with_data_defaults(data.meta["input_shape"][-1])
    cfg_dict = portable_config(cfg.to_dict())
    if comm is not None:  # the recipe, once MNIST is here: ranks on this host find it in the cache
        comm.broadcast_json(cfg_dict)
    sizes = {k: part_size(getattr(data, k)) for k in ("train", "validation", "test")}
    files = RunFiles(run, cfg_dict, sizes, data.source, {**data.meta, **_test_views_meta(cfg)})
    trainer = _make_trainer(cfg, data, comm, progress=cfg.progress, log=log,
                            callbacks=[files, StopBetweenSteps(), *callbacks])
    if cfg.device != "cpu":
        log(f"device {trainer.model.device}")
    if resuming:
        trainer.load_checkpoint(run.file("checkpoint.npz"))
        if trainer.epoch > cfg.epochs:
            raise ConfigError(f"the checkpoint already has {trainer.epoch} epochs; epochs must be >= that, "
                              f"got {cfg.epochs}")
        log(f"resumed from checkpoint.npz: {trainer.epoch} epochs ({trainer.step} steps) done")
    trainer.sync_from_rank0()
    _log_plan(trainer, cfg, data, log)

    def test_on(model):  # best.npz, tested as _fit_and_test tests model.npz
        return _test(model, cfg, data)

    run_end = CallbackList([files, RunSummary(run.path, log, t_start, test_on,
                                       _predictor(trainer.model, cfg).describe() if cfg.test_flip else ""),
                            *([ReportAtEnd(run.path, log, cfg.data_dir)] if cfg.report else [])])
    test = _fit_and_test(trainer, cfg, data, run, log, stops, run_end)
    run_end.call("on_run_end", trainer, test)
    return TrainResult(run.path, trainer.model, trainer.history, test.accuracy, test.error, test.confusion,
                       files.final_metrics)


def _log_plan(trainer, cfg, data, log) -> None:
    """The log lines saying what will be trained, on what, and how."""
    n_params = sum(p.size for p in trainer.model.parameters())
    source = "" if data.source == "MNIST" else f" ({data.source})"
    n = part_size(data.train)
    shape = tuple(data.meta["input_shape"])
    # MNIST keeps the log line of its recipes (the README's transcripts); other data name their input
    model = f"mnist_{cfg.model}" if shape == (28, 28, 1) and cfg.model in ("cnn", "resnet") else \
        f"{cfg.model} for {'x'.join(map(str, shape))} images"
    log(f"model {model}: {n_params:,} parameters; data: {n} train / {part_size(data.validation)} "
        f"validation / {part_size(data.test)} test{source}")
    log(describe_recipe(cfg, trainer.steps_in_epoch(n, trainer.epoch)))
    if trainer.comm is not None:
        log(_describe_distributed(trainer, cfg.batch_size, shape, n_params))


def _fit_and_test(trainer, cfg, data, run, log, stops, run_end):
    """Train, test and write the final files; a divergence or a stop is recorded, then re-raised."""
    try:
        with stops.deferred(to=trainer.request_stop):  # Ctrl-C and SIGTERM wait for the end of the step
            # an empty validation Dataset: none (arrays, empty or not, go as they always went)
            validation = part_args(data.validation) if part_size(data.validation) or data.normalize is None \
                else (None, None)
            trainer.fit(*part_args(data.train), cfg.epochs, *validation, **_normalize(data))
        test = _test(trainer.model, cfg, data)
        run_end.call("on_test_end", trainer, test)
        return test
    except TrainingDiverged as e:
        e.checkpoint = run.file("checkpoint.npz")
        done = trainer.history.epochs[-1]["epoch"] if trainer.history.epochs else 0
        e.args = (f"{e}. Stopped; {e.checkpoint} keeps the last good state "
                  f"({f'after epoch {done}' if done else 'the initial weights'}).",)
        log(f"error: {e}", echo=False)  # the caller reports the exception itself
        run_end.call("on_run_stopped", trainer, "diverged")
        raise
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM, in an epoch or while testing and saving
        stop = e if isinstance(e, TrainingInterrupted) else \
            TrainingInterrupted("", trainer.epoch, trainer.step, signum=getattr(e, "signum", signal.SIGINT))
        _explain_interruption(stop, run, cfg.epochs)
        stop.all_ranks = trainer.stop_agreed  # distributed: every process stops at this step
        log(stop.message)
        run_end.call("on_run_stopped", trainer, "interrupted")
        if stop is e:
            raise
        raise stop from None


def _test_views_meta(cfg) -> dict:
    """The model files' record of how the run tests (``modelinfo``: ``predictor`` does the same)."""
    return {**({"test_flip": True} if cfg.test_flip else {}),
            **({"test_shift": cfg.test_shift} if cfg.test_shift else {})}


def _predictor(model, cfg):
    """``model`` as the run tests it: alone, or averaged over mirror images (and shifts)."""
    return predictor_for(model, cfg.test_flip, cfg.test_shift)


def _test(model, cfg, data):
    """``model`` evaluated on the run's test images (as ``_predictor`` gives it)."""
    return evaluate(_predictor(model, cfg), *part_args(data.test), cfg.eval_batch_size,
                    num_classes=len(data.meta["class_names"]),
                    **_normalize(data))


def _normalize(data) -> dict:
    """``fit``'s and ``evaluate``'s ``normalize`` for Datasets of pixels (nothing for arrays of inputs)."""
    return {} if data.normalize is None else {"normalize": data.normalize}


def _batchnorm_gather_mb(model, input_shape, k: int, batch: int) -> float:
    """MB a step's BatchNorm layers among the first ``k`` stages all-gather (input, then gradient)."""
    layers = [layer for _, layer, _ in model.graph_steps()] if hasattr(model, "graph_steps") else model.layers
    rows = model.summary(input_shape).rows
    return sum(2 * batch * math.prod(r["output_shape"]) * 4 / 1e6
               for layer, r in zip(layers[:k], rows[:k]) if isinstance(layer, BatchNorm))


def _describe_distributed(trainer, batch, input_shape, n_params) -> str:
    """The log line saying how the processes of a distributed run share each step."""
    comm = trainer.comm
    alone = "" if comm.size > 1 else " (a job of one: start N with mpiexec -n N python -m jimunet train --distributed)"
    procs = f"{comm.size} MPI process{'es' if comm.size > 1 else ''}"
    if trainer.reduction == "exact":
        layout = BlockLayout(batch, comm.size)
        share = sorted({s.stop - s.start for s in layout.samples})
        model = trainer.model
        k = model.per_sample_stages()
        feats = batch * math.prod(model.stages_output_shape(input_shape, slice(0, k))) * 4 / 1e6
        bn = _batchnorm_gather_mb(model, input_shape, k, batch)
        bn = f", all-gathers of {bn:.2f} MB for the BatchNorm layers' batch statistics" if bn else ""
        return (f"distributed: {procs}, exact reduction: each runs the first {k} layers on "
                f"{'-'.join(map(str, share))} images (whole blocks) of every batch of {batch} and the rest of the "
                f"network on the whole batch; per step one all-gather of {feats:.2f} MB of activations{bn} and one "
                f"of the per-block weight-gradient sums: the weights are bit-identical to one process's; rank 0 "
                f"writes the run directory{alone}")
    share = sorted({s.stop - s.start for s in split(batch, comm.size)})  # each rank's comm.shard
    bn = any(isinstance(layer, BatchNorm) for layer in trainer.model.layers)
    bn = " and BatchNorm's per-channel sums" if bn else ""
    return (f"distributed: {procs}, each computing {'-'.join(map(str, share))} images of every batch of {batch}; "
            f"one all-reduce of the gradients ({4 * n_params / 1e6:.1f} MB){bn} per step: the weights equal one "
            f"process's up to float rounding; rank 0 writes the run directory{alone}")


def _explain_interruption(e: TrainingInterrupted, run, epochs: int) -> None:
    """Fill in ``e``'s run directory, the epochs kept, and a message that says how to resume."""
    checkpoint = run.file("checkpoint.npz")
    done = _checkpoint_epochs(checkpoint)
    e.run_dir, e.epochs_completed = run.path, done
    how = "interrupted" if e.signum == signal.SIGINT else f"stopped by {signal.Signals(e.signum).name}"
    if done < epochs:
        when, lost = f"during epoch {done + 1}", "the partial epoch is discarded"
    else:
        when, lost = "after the last epoch", "the test evaluation and model.npz are still to do"
    e.message = (f"{how} {when}; {checkpoint} holds the state after {done} complete epochs ({lost}). "
                 f"Resume with:\n    jimunet train --resume {shlex.quote(run.path)}")


def _checkpoint_epochs(path) -> int:
    try:
        return int(read_checkpoint_meta(path)["state"]["epoch"])
    except Exception:  # pragma: no cover - the file is written atomically
        return 0


def _saved_normalize(run):
    """The normalisation the run computed when it started (None: MNIST's, or a run from before it was saved)."""
    meta = read_checkpoint_meta(run.file("checkpoint.npz")).get("metadata", {})
    try:
        return Normalize.from_dict(meta["normalize"]) if isinstance(meta, dict) and "normalize" in meta else None
    except ValueError:
        return None


def _read_checkpoint_config(run_dir) -> MNISTConfig:
    path = os.path.join(os.fspath(run_dir), "checkpoint.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    meta = read_checkpoint_meta(path)
    try:
        # Paths in the file are not used (they are no longer written): where the data lives is
        # the user's say (--data-dir, $JIMUNET_DATA, the default), and a run lives where it is.
        # The device too is this machine's choice (--device): a GPU run resumes on a CPU.
        return MNISTConfig.from_dict({**portable_config(meta["metadata"]["config"]), "device": "cpu"})
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: holds no usable jimunet train configuration ({e})") from None


def load_run_config(run_dir) -> MNISTConfig:
    """The configuration stored in ``run_dir/checkpoint.npz`` (to resume with changes).

    Its ``out`` and ``data_dir`` are None: a run directory holds no paths (see ``jimunet.app.rundir``);
    its ``device`` is ``"cpu"``, whatever device the run used so far.
    """
    return _read_checkpoint_config(run_dir)
