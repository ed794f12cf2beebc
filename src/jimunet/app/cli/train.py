"""``jimunet train``: the MNIST recipe (``train_mnist``) from the command line, alone or with MPI."""
from __future__ import annotations

import os

from ... import distributed
from ...allocator import keep_freed_memory
from ...training import TrainingDiverged, TrainingInterrupted
from ...models import AIRBENCH_ACTIVATIONS
from ..recipes import (AIRBENCH_DEFAULTS, CIFAR10_EPOCHS, DATASETS, FASHION_CIFAR_EPOCHS, FASHION_EPOCHS, MODELS,
                       REDUCTIONS, ConfigError, MNISTConfig, recipe_defaults)
from ..training import distributed_problem, load_run_config, train_mnist
from .errors import EXIT_FAILURE, EXIT_OK, DEVICE_HELP, UserError, add_command, int_at_least, interrupted_exit, \
    non_negative_float, positive_float

_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "seed", "train_size", "validation_size", "data_dir", "threads", "shift", "device",
                "reduction", "data", "test_shift", "activation")


def run(args) -> int:
    """Train with the recipe and the flags given; resume a run with ``--resume``."""
    keep_freed_memory()  # this process only trains: each step reuses the last one's pages
    comm = _distributed(args)
    given = _given_settings(args)
    if args.self_test and args.resume is None and "epochs" not in given:
        given["epochs"] = 1  # the sample's self-test runs one epoch, whichever model
    if args.model is not None:
        given = {**recipe_defaults(args.model, given.get("data", "mnist")), **given}
    if comm is not None:
        _same_command_as_rank0(comm, {**given, "resume": args.resume})
    if comm is not None and comm.rank != 0:
        config = MNISTConfig(**given)  # only rank 0 reads the run directory; it sends the recipe
    elif args.resume is not None:
        if not os.path.isdir(args.resume):
            raise UserError(f"--resume {args.resume}: no such run directory")
        config = load_run_config(args.resume).replace(**given)
    else:
        config = MNISTConfig(**given)
    if comm is not None:
        _refuse_what_cannot_run(args, comm, config)
    try:
        train_mnist(config, resume=args.resume, comm=comm)
    except ConfigError as e:
        raise UserError(str(e)) from None
    except TrainingDiverged as e:  # every rank of a distributed run sees it at the same step: rank 0 says it
        args.all_ranks_stopped = True
        raise UserError(str(e), EXIT_FAILURE, show=comm is None or comm.rank == 0) from None
    except TrainingInterrupted as e:
        args.all_ranks_stopped = getattr(e, "all_ranks", False)
        return interrupted_exit(e)  # the message with the resume command is already printed
    return EXIT_OK


def _refuse_what_cannot_run(args, comm, config) -> None:
    """Stop every rank of a distributed run with rank 0's usage error (a recipe the job's processes
    cannot run, e.g. a batch smaller than the number of processes) before anything is written."""
    problem = None
    if comm.rank == 0:
        try:
            problem = distributed_problem(config.validate(), comm)
        except ConfigError as e:
            problem = str(e)
    problem = comm.broadcast_json(problem)
    if problem:
        args.all_ranks_stopped = True  # every rank stops here: none waits for another
        raise UserError(problem, show=comm.rank == 0)


def _given_settings(args) -> dict:
    """The recipe settings the command line gives (``MNISTConfig`` fields); refuses bad combinations."""
    given = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    if args.no_shuffle:
        given["shuffle"] = False
    if args.self_test:
        given["self_test"] = True
    if args.no_report:
        given["report"] = False
    if args.test_flip:
        given["test_flip"] = True
    if args.out is not None:
        given["out"] = args.out
    if args.resume is not None and args.model is not None:
        raise UserError("--model cannot be combined with --resume (the run keeps its model)")
    if args.reduction is not None and not args.distributed:
        raise UserError("--reduction chooses how the processes of a --distributed run combine their work; "
                        "add --distributed (and start the processes with mpiexec -n N)")
    if args.mpi_timeout is not None and not args.distributed:
        raise UserError("--mpi-timeout limits how long the processes of a --distributed run wait for each other; "
                        "add --distributed (and start the processes with mpiexec -n N)")
    return given


def _distributed(args):
    """The MPI communicator for ``--distributed`` (None without it); refuses a bad launch."""
    if not args.distributed:
        n = distributed.launched_by_mpiexec()
        if n > 1:
            raise UserError(f"started by mpiexec as one of {n} processes but without --distributed, so each "
                            f"would train alone; add --distributed to train one model with all of them")
        return None
    try:
        comm = distributed.init(timeout=args.mpi_timeout)
    except distributed.DistributedError as e:
        raise UserError(f"--distributed: {e}") from None
    args.comm = comm  # an error on one rank ends the whole job (main): the others must not wait
    if comm.size > 1:
        args.prog = f"{args.prog} [rank {comm.rank} of {comm.size}]"
    return comm


def _same_command_as_rank0(comm, given: dict) -> None:
    """Refuse to start when this rank's settings differ from rank 0's (MPMD launches, typos)."""
    per_host = ("data_dir", "threads")  # may differ between machines
    mine = {k: v for k, v in given.items() if k not in per_host}
    theirs = comm.broadcast_json(mine)
    if comm.rank != 0 and theirs != mine:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        shown = "; ".join(f"{k.replace('_', '-')} {mine.get(k)!r} here, {theirs.get(k)!r} on rank 0" for k in diff)
        raise UserError(f"this process was started with other settings than rank 0 ({shown}); every process of "
                        f"a distributed run must get the same command line")


def register(subparsers):
    """Add ``jimunet train`` to ``subparsers``; returns its parser."""
    t = add_command(subparsers, "train", run, help="train a network on MNIST (the TF sample's recipe), "
                    "Fashion-MNIST, CIFAR-10 or a folder of images",
                    description="Train the TensorFlow sample's MNIST network with its recipe: 5,000 validation "
                    "images held out, batch 64, SGD momentum 0.9, lr 0.01 x 0.95 per epoch, L2 5e-4 on the "
                    "fully connected layers, dropout 0.5. --data trains the same recipes on another data set, "
                    "built for its image shape and classes. Writes model.npz, best.npz, checkpoint.npz, "
                    "metrics.json and train.log to the run directory.")
    t.add_argument("--epochs", type=int_at_least(1), default=None, metavar="N", help="epochs (default 10; "
                   "1 with --self-test)")
    t.add_argument("--batch-size", type=int_at_least(1), default=None, metavar="N", help="batch size (default 64)")
    t.add_argument("--lr", type=positive_float, default=None, metavar="LR", help="initial learning rate "
                   "(default 0.01)")
    t.add_argument("--seed", type=int_at_least(0), default=None, metavar="S", help="seed of the initial weights, "
                   "dropout and shuffling (default 66478)")
    t.add_argument("--train-size", type=int_at_least(1), default=None, metavar="N", help="train on the first N of "
                   "the 55,000 training images (default all)")
    t.add_argument("--validation-size", type=int_at_least(0), default=None, metavar="N", help="hold out N "
                   "training images for validation (default 5,000; a folder's: at most a tenth of its images; "
                   "0 with --model airbench and the CIFAR-10 recipe, which train on all of them)")
    t.add_argument("--data", default=None, metavar="DATA", help=f"{', '.join(DATASETS)} (downloaded if missing) or "
                   "the path of an image folder (FOLDER/<class>/*.png|jpg, or FOLDER/train/<class> and "
                   "FOLDER/test/<class>); default mnist. Colour images are trained with random crops (padding 4) "
                   "and horizontal flips, normalised by the training images' per-channel mean and std")
    t.add_argument("--data-dir", default=None, metavar="D", help="the data set's cache directory (default "
                   "$JIMUNET_DATA or ~/.cache/jimunet/<data set>; downloaded if missing)")
    t.add_argument("--out", default=None, metavar="DIR", help="run directory: new, empty or a "
                   "jimunet run without a checkpoint (default runs/<YYYYmmdd-HHMMSS>)")
    t.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its checkpoint.npz")
    t.add_argument("--no-shuffle", action="store_true", help="walk the data in the sample's fixed order instead "
                   "of reshuffling every epoch")
    t.add_argument("--self-test", action="store_true", help="train on the sample's tiny fake data set (no "
                   "download); must reach 0%% test error")
    t.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    t.add_argument("--threads", type=int_at_least(1), default=None, metavar="N", help="worker threads "
                   "(jimunet.set_num_threads)")
    t.add_argument("--model", choices=MODELS, default=None, help="cnn: the TF sample's network and "
                   "recipe (default); resnet: jimunet.models.mnist_resnet with BatchNorm, random shifts, SGD "
                   "Nesterov with cosine decay (its own defaults: 10 epochs, batch 128, lr 0.2, shift 2; with "
                   f"--data fashion-mnist also horizontal flips, {FASHION_EPOCHS} epochs; colour images: crops "
                   "and flips instead of shifts); airbench: jimunet.models.cifar_airbench (Keller Jordan's "
                   "airbench93: a whitened first layer, three conv blocks) with its schedule and lookahead "
                   f"(defaults: {AIRBENCH_DEFAULTS['epochs']} epochs, batch {AIRBENCH_DEFAULTS['batch_size']}, lr "
                   f"{AIRBENCH_DEFAULTS['lr']}, crops of 2 px and flips, --test-flip --test-shift 1); cifar: the "
                   f"CIFAR-10 recipe for the data: airbench over {CIFAR10_EPOCHS} epochs with GELU for colour "
                   "images; on MNIST and Fashion-MNIST "
                   "jimunet.models.cifar_resnet (a narrow ResNet-9), one-cycle lr, label smoothing 0.2 (defaults: "
                   "10 epochs, batch 256, lr 0.2; with --data fashion-mnist: "
                   f"{FASHION_CIFAR_EPOCHS} epochs, shifts of 2 px and flips, --test-flip --test-shift 1)")
    t.add_argument("--test-flip", action="store_true", help="test with each image's class scores averaged with "
                   "its mirror image's, and save the model to be used so (for images whose mirror image is of the "
                   "same class: clothes, photos; not digits)")
    t.add_argument("--test-shift", type=int_at_least(0), default=None, metavar="PX", help="with --test-flip: also "
                   "average the views of each test image moved PX pixels diagonally both ways, and their mirror "
                   "images (6 views)")
    t.add_argument("--activation", choices=tuple(AIRBENCH_ACTIVATIONS), default=None, help="the airbench "
                   "network's activation: gelu (its tanh form; the default of --model cifar on colour images) or relu (the "
                   "default of --model airbench)")
    t.add_argument("--shift", type=int_at_least(0), default=None, metavar="PX", help="augment training images "
                   "by random shifts of up to PX pixels (default 0; 2 with --model resnet)")
    t.add_argument("--device", default=None, metavar="D", help=DEVICE_HELP)
    t.add_argument("--distributed", action="store_true", help="data-parallel training with every process of an "
                   "MPI job: mpiexec -n N python -m jimunet train --distributed ... (pip install 'jimunet[mpi]'); "
                   "--batch-size stays the global batch, rank 0 writes the run directory")
    t.add_argument("--reduction", choices=REDUCTIONS, default=None, help="with --distributed: "
                   "exact: each process takes whole blocks of every batch through the convolutional layers (BatchNorm "
                   "layers gather the whole batch for their statistics) and the fully connected head runs on the "
                   "whole batch everywhere, so the weights are bit-identical "
                   "to one process's (up to 8 processes); allreduce: each process runs the whole network on its "
                   "slice and one all-reduce sums the gradients (any number of processes, equal to one process "
                   "up to float rounding); auto (default): exact where it applies")
    t.add_argument("--mpi-timeout", type=non_negative_float, default=None, metavar="SECONDS",
                   help="with --distributed: end the job, naming the silent process, when the processes have waited "
                   f"this long for one of them (paused, hung); 0: no limit (default ${distributed.TIMEOUT_ENV}, "
                   f"else {distributed.DEFAULT_TIMEOUT_S:g}). Waiting processes sleep, they do not spin")
    return t
