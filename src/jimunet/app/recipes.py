"""The MNIST recipe of TensorFlow's sample ``convolutional.py``, as a configuration.

``MNISTConfig()`` holds exactly the sample's settings (the defaults of ``jimunet train``);
``build(config)`` turns one into the network, loss, optimizer and learning-rate schedule;
``fake_data`` is the sample's self-test data.

Example:
    >>> from jimunet.app.recipes import MNISTConfig, build
    >>> cfg = MNISTConfig(epochs=1, train_size=3000)
    >>> model, loss_fn, optimizer, schedule = build(cfg, train_size=3000)
    >>> [g["weight_decay"] for g in optimizer.param_groups]
    [0.0, 0.0005]
    >>> schedule(0), round(schedule(3000 // 64 + 1), 6)   # decays once per epoch (staircase)
    (0.01, 0.0095)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import init, losses, models, optim
from ..backend import DeviceError, parse_device, to_numpy
from ..data.augment import Compose, RandomCrop, RandomFlip, RandomShift
from ..data.batching import transform_batch
from ..data.dataset import is_dataset
from ..layers import BatchNorm, Conv2D, Dense
from ..training.callbacks import Callback
from ..training.evaluation import FlipAverage
from ..training.lookahead import Lookahead
from ..training.strategies import REDUCTIONS

IMAGE_SIZE = 28
NUM_CLASSES = 10
MNIST_TRAIN = 60000

# Fields that may change when a run is resumed; every other field shapes the trajectory of
# training (data, order, initialisation, optimisation) and must match the checkpoint's.
RESUMABLE_FIELDS = frozenset({"epochs", "data_dir", "out", "threads", "progress", "report", "download", "device",
                              "reduction", "test_flip", "test_shift"})

DATASETS = ("mnist", "fashion-mnist", "cifar10")  # by name; any other ``data`` is a folder's path
TRAIN_IMAGES = {"mnist": MNIST_TRAIN, "fashion-mnist": 60000, "cifar10": 50000}
COLOR_CROP = 4  # colour images: random crops of the image padded by 4 zero pixels, and flips


class ConfigError(ValueError):
    """A configuration value that cannot work (the CLI reports it as a usage error)."""


@dataclass
class MNISTConfig:
    """Settings of an MNIST training run; the defaults are the TensorFlow sample's.

    Attributes:
        epochs: passes over the training set (sample: 10).
        batch_size: images per SGD step (sample: 64).
        lr: initial learning rate (sample: 0.01), decayed by ``lr_decay`` once per epoch,
            staircase, counted in images seen (``lr·decay^floor(step·batch/train_size)``).
        lr_decay: the decay factor (sample: 0.95).
        momentum: SGD momentum (sample: 0.9).
        weight_decay: L2 factor on the fully connected layers only (sample: 5e-4 on
            ``l2(fc1_w)+l2(fc1_b)+l2(fc2_w)+l2(fc2_b)``, ``l2 = sum(x²)/2``); applied as SGD
            weight decay on those parameters (the same gradient).
        dropout: drop probability before the last layer (sample: keep_prob 0.5).
        seed: seeds the initial weights, the dropout masks and (through a separate stream)
            the per-epoch shuffling (sample: 66478).
        validation_size: the first this many training images are held out (sample: 5000).
        train_size: train on the first N of the remaining images (None: all 55,000).
        test_size: evaluate on the first N test images (None: all 10,000).
        shuffle: reshuffle the training set every epoch; False walks through it in the
            sample's fixed order (offset ``(step·batch) % (train_size-batch)``).
        self_test: use the sample's fake data (256 train, 64 validation, 64 test images)
            instead of MNIST; needs no download and must reach 0% test error.
        eval_batch_size: images per forward pass when evaluating (memory bound only).
        data_dir: MNIST cache directory (None: ``load_mnist``'s default).
        out: run directory (None: ``runs/<YYYYmmdd-HHMMSS>`` under the working directory).
        threads: passed to ``jimunet.set_num_threads`` when that exists.
        progress: show a progress bar (None: only when stderr is a terminal).
        report: write the ``jimunet report`` report at the end when available.
        download: let ``load_mnist`` download missing files.
        model: ``"cnn"`` (the TF sample's network and schedule), ``"resnet"``
            (``models.mnist_resnet``: SGD with Nesterov momentum, cosine decay of ``lr`` to 0
            over the run, weight decay on conv and Dense weights, no dropout; use
            ``RESNET_DEFAULTS`` for its measured settings), ``"cifar"`` (``models.cifar_resnet``
            with a one-cycle; ``CIFAR_DEFAULTS``) or ``"airbench"`` (``models.cifar_airbench``
            with airbench's optimisation; ``AIRBENCH_DEFAULTS``, and ``CIFAR10_DEFAULTS`` for
            ``--model cifar`` on colour images).
        shift: random-shift augmentation of the training images, up to this many pixels
            (``data.augment.RandomShift``; 0: none).
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (needs CuPy and an NVIDIA GPU); a run
            may resume on another device (checkpoints hold host arrays).
        reduction: how the processes of a distributed run combine their work (``Trainer``'s
            ``reduction``): ``"auto"``, ``"exact"`` or ``"allreduce"``; ignored by one process.
        data: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or the path of an image folder
            (``jimunet.data.load``). A run directory stores a folder as ``"folder"`` (it holds
            no paths): resuming one needs its path again.
        flip: random horizontal flips of the training images (None: the data's default,
            True for colour images).
        crop: random crops of the training images padded by this many zero pixels (None: the
            data's default, 4 for colour images, else 0).
        label_smoothing: the loss's label smoothing ε (``SoftmaxCrossEntropy``; 0: none, as the
            MNIST recipes; ``--model cifar``: 0.2).
        test_flip: test (and save the model to be used) with each image's class scores averaged
            with those of its mirror image (``training.FlipAverage``; ``--model cifar`` on
            anything but MNIST).
            Training is the same either way, so a resumed run may change it.
        test_shift: with ``test_flip``, also average the views moved by this many pixels
            diagonally both ways, and their mirror images (``FlipAverage(shift=...)``; the
            Fashion-MNIST recipe: 1, chosen on the validation images).
        activation: ``"relu"`` or ``"gelu"`` (``layers.GELU``), for ``model="airbench"`` only
            (``models.cifar_airbench(activation=...)``).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    lr_decay: float = 0.95
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.5
    seed: int = 66478
    validation_size: int = 5000
    train_size: int | None = None
    test_size: int | None = None
    shuffle: bool = True
    self_test: bool = False
    eval_batch_size: int = 100
    data_dir: str | None = None
    out: str | None = None
    threads: int | None = None
    progress: bool | None = None
    report: bool = True
    download: bool = True
    model: str = "cnn"
    shift: int = 0
    device: str = "cpu"
    reduction: str = "auto"
    data: str = "mnist"
    flip: bool | None = None
    crop: int | None = None
    label_smoothing: float = 0.0
    test_flip: bool = False
    test_shift: int = 0
    activation: str = "relu"

    @property
    def data_kind(self) -> str:
        """``data``'s name, ``"folder"`` for a path."""
        return self.data if self.data in DATASETS else "folder"

    def with_data_defaults(self, channels: int) -> "MNISTConfig":
        """``flip`` and ``crop`` settled for images of ``channels`` channels (see the Attributes);
        MNIST's stay None (none of either), as in the configurations stored before they existed."""
        if self.data == "mnist" or self.self_test:
            return self
        color = channels == 3
        return self.replace(flip=color if self.flip is None else self.flip,
                            crop=(COLOR_CROP if color else 0) if self.crop is None else self.crop)

    def validate(self) -> "MNISTConfig":
        """Raise ``ConfigError`` naming the first impossible value; return self."""
        def positive_int(name, allow_none=False, allow_zero=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (0 if allow_zero else 1):
                raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, "
                                  f"got {v!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            positive_int(name)
        positive_int("shift", allow_zero=True)
        positive_int("crop", allow_none=True, allow_zero=True)
        if self.flip is not None and not isinstance(self.flip, (bool, np.bool_)):
            raise ConfigError(f"flip must be True, False or None, got {self.flip!r}")
        if not isinstance(self.test_flip, (bool, np.bool_)):
            raise ConfigError(f"test_flip must be True or False, got {self.test_flip!r}")
        positive_int("test_shift", allow_zero=True)
        if self.test_shift > FlipAverage.MAX_SHIFT or (self.test_shift and not self.test_flip):
            raise ConfigError(f"test_shift must be 0 to {FlipAverage.MAX_SHIFT} pixels, and needs test_flip, got "
                              f"{self.test_shift} (test_flip {self.test_flip})")
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"data must be one of {', '.join(DATASETS)} or an image folder's path, got {self.data!r}")
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.activation not in models.AIRBENCH_ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(models.AIRBENCH_ACTIVATIONS)}, "
                              f"got {self.activation!r}")
        if self.activation != "relu" and self.model != "airbench":
            raise ConfigError(f"activation {self.activation!r} is for the airbench network (--model airbench, or "
                              f"--model cifar on colour images); the {self.model!r} network has ReLUs")
        if self.shift > IMAGE_SIZE // 2:
            raise ConfigError(f"shift must be <= {IMAGE_SIZE // 2} pixels, got {self.shift}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")
        try:
            parse_device(self.device)
        except DeviceError as e:
            raise ConfigError(str(e)) from None
        positive_int("validation_size", allow_zero=True)
        positive_int("seed", allow_zero=True)
        for name in ("train_size", "test_size", "threads"):
            positive_int(name, allow_none=True)
        for name in ("lr", "lr_decay", "momentum", "weight_decay", "dropout"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.floating)) or isinstance(v, bool) or not np.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("momentum and weight_decay must be >= 0")
        if not isinstance(self.label_smoothing, (int, float, np.floating)) or isinstance(self.label_smoothing, bool) \
                or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.self_test:  # the sample's fixed fake data set: more images cannot be had
            for name, have in (("train_size", SELF_TEST_TRAIN), ("test_size", SELF_TEST_EVAL)):
                v = getattr(self, name)
                if v is not None and v > have:
                    raise ConfigError(f"the self-test trains on {SELF_TEST_TRAIN} fake images and tests on "
                                      f"{SELF_TEST_EVAL}, so {name}{' (--train-size)' if name == 'train_size' else ''} "
                                      f"must be <= {have}, "
                                      f"got {v}")
        total = TRAIN_IMAGES.get(self.data)  # a folder's size is known once it is read
        if self.self_test or total is None:
            return self
        if self.validation_size >= total:
            raise ConfigError(f"validation_size must be < {total}, got {self.validation_size}")
        if self.train_size is not None and self.train_size > total - self.validation_size:
            raise ConfigError(f"train_size must be <= {total - self.validation_size} (the training images "
                              f"left after the {self.validation_size} validation images), got {self.train_size}")
        return self

    def to_dict(self) -> dict:
        """The fields as a dict; ``data``, ``flip`` and ``crop`` only when they are not MNIST's (None,
        "mnist"), so that an MNIST run's files read as they did before those fields existed."""
        d = dataclasses.asdict(self)
        for k, absent in _NEW_FIELDS.items():
            if d[k] == absent:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MNISTConfig":
        """Build from a dict (e.g. a checkpoint's); unknown keys raise ``ConfigError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    def replace(self, **changes) -> "MNISTConfig":
        return dataclasses.replace(self, **changes)


MODELS = ("cnn", "resnet", "cifar", "airbench")
# the fields added with other data sets, and the value that leaves them out of a run's files
_NEW_FIELDS = {"data": "mnist", "flip": None, "crop": None, "label_smoothing": 0.0, "test_flip": False,
               "test_shift": 0, "activation": "relu"}

# ``jimunet train --model resnet``: settings picked by measurement (see BENCHMARKS.md).
RESNET_DEFAULTS = {"model": "resnet", "epochs": 10, "batch_size": 128, "lr": 0.2, "momentum": 0.9,
                   "weight_decay": 5e-4, "dropout": 0.0, "lr_decay": 1.0, "shift": 2}

# ``jimunet train --data fashion-mnist --model resnet``: the MNIST recipe with horizontal flips.
FASHION_EPOCHS = 10
FASHION_RESNET_DEFAULTS = {**RESNET_DEFAULTS, "epochs": FASHION_EPOCHS, "flip": True}


# ``jimunet train --model cifar`` on MNIST and Fashion-MNIST (the first CIFAR-10 recipe, 84.31% there
# in 10 epochs): ``models.cifar_resnet`` with Page's ResNet-9 ingredients (batch 512, lr 0.4
# one-cycle; here batch 256 with the lr scaled linearly), label smoothing 0.2 (airbench); crops and
# flips come with colour data. Chosen from the papers; tested with flips by measurement (on the
# same weights: +0.95 points on CIFAR-10, +0.14 on Fashion-MNIST; BENCHMARKS.md).
CIFAR_DEFAULTS = {"model": "cifar", "epochs": 10, "batch_size": 256, "lr": 0.2, "momentum": 0.9,
                  "weight_decay": 5e-4, "dropout": 0.0, "lr_decay": 1.0, "label_smoothing": 0.2, "test_flip": True}
CIFAR_WARMUP = 0.2  # the share of the run over which lr rises linearly from 0 to ``lr``

# ``jimunet train --data fashion-mnist --model cifar``: the ResNet-9 recipe's network and schedule on
# Fashion-MNIST for 15 epochs, with the clothes' augmentation (shifts and flips), tested over 6 views
# (flips and 1-px shifts, chosen on the validation images); measured in BENCHMARKS.md ("Fashion-MNIST").
FASHION_CIFAR_EPOCHS = 15
FASHION_CIFAR_DEFAULTS = {**CIFAR_DEFAULTS, "epochs": FASHION_CIFAR_EPOCHS, "shift": 2, "flip": True,
                          "test_shift": 1}


# ``jimunet train --data cifar10 --model cifar`` (and ``--model airbench`` on any data): Keller
# Jordan's airbench93 (arXiv 2404.00498; ``models.cifar_airbench``) in this framework's terms. Its
# hyper-parameters are per 1024 images of a summed loss with "decoupled" momentum; for the mean
# loss: lr = 11.5 / (1 + 1/(1 - 0.85)) = 1.5 at batch 1024, and weight decay 0.0153 / 11.5 of the
# learning rate. lr rises from 0.2·lr to lr over the first 23% of the steps, then falls to
# 0.07·lr; BatchNorm biases train 64× faster; a lookahead average every 5 steps. Its
# augmentation: 2-px translations and flips (here zero-padded crops and random flips, where
# airbench reflects and alternates them). Measured in BENCHMARKS.md ("CIFAR-10: airbench").
AIRBENCH_DEFAULTS = {"model": "airbench", "epochs": 11, "batch_size": 1024, "lr": 1.5, "momentum": 0.85,
                     "weight_decay": 0.0153 / 11.5, "dropout": 0.0, "lr_decay": 1.0, "label_smoothing": 0.2,
                     "crop": 2, "flip": True, "test_flip": True, "test_shift": 1, "validation_size": 0}
# ``--model cifar`` on colour images: airbench93's recipe over 15 epochs instead of its 11, with
# GELU as airbench has it. On the JPEG copy (quality 75, 4:2:0 colour) the 11-epoch network is
# short of training: 15 epochs gave 89.23% (mean of 3 seeds) against 88.56%; GELU for ReLU gave
# the PyTorch port +0.41 points over 3 seeds (BENCHMARKS.md, "15 epochs" and "Variants on a GPU").
# ``--model airbench`` stays as measured first: 11 epochs, ReLU.
CIFAR10_EPOCHS = 15
CIFAR10_DEFAULTS = {**AIRBENCH_DEFAULTS, "epochs": CIFAR10_EPOCHS, "activation": "gelu"}
AIRBENCH_SCHEDULE = (0.23, 0.2, 0.07)  # warm-up share of the steps; lr at the start and at the end, × lr
AIRBENCH_BIAS_LR = 64.0  # BatchNorm biases' lr_scale (their weight decay stays that of the others)
AIRBENCH_HEAD_SCALE = 9.0  # airbench multiplies its logits by 1/9; here its Dense weights are 9× smaller
AIRBENCH_WHITEN_IMAGES = 5000  # the training images (a random choice) whose patches set the whitening layer
AIRBENCH_WHITEN_BIAS_EPOCHS = 3  # the whitening layer's bias trains for this many epochs, then stays
LOOKAHEAD_EVERY = 5
_WHITEN_STREAM = 0x57  # the whitening sample's random stream, apart from the weights' and the shuffling's


def recipe_defaults(model: str | None, data: str) -> dict:
    """The settings ``jimunet train --model MODEL --data DATA`` starts from (flags override them).

    Shifts (edge-padded) are for grayscale digits and clothes; colour images get crops and flips
    instead (``MNISTConfig.with_data_defaults``). ``--model cifar`` is the CIFAR recipe for the
    data: airbench on CIFAR-10 and folders of pictures, the narrow ResNet-9 (measured there) on
    MNIST and Fashion-MNIST.
    """
    if model == "airbench":
        return dict(AIRBENCH_DEFAULTS)
    if model == "cifar":
        if data == "mnist":  # a digit's mirror image is no digit: tested as it is
            return {**CIFAR_DEFAULTS, "test_flip": False}
        if data == "fashion-mnist":
            return dict(FASHION_CIFAR_DEFAULTS)
        return dict(CIFAR10_DEFAULTS)
    if model != "resnet":
        return {}
    if data == "fashion-mnist":
        return dict(FASHION_RESNET_DEFAULTS)
    if data == "mnist":
        return dict(RESNET_DEFAULTS)
    return {k: v for k, v in RESNET_DEFAULTS.items() if k != "shift"}

SELF_TEST_TRAIN, SELF_TEST_EVAL = 256, 64  # the TF sample's fake data: train, validation and test sizes


def fake_data(num_images: int):
    """The TF sample's self-test data: image ``i`` is constant ``(i % 2) - 0.5``, label ``i % 2``.

    Returns ``(x float32 (num_images, 28, 28, 1), y int64 (num_images,))``, already in the
    model's input range (no further preprocessing).
    """
    labels = np.arange(num_images, dtype=np.int64) % 2
    data = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    data[...] = (labels - 0.5).astype(np.float32)[:, None, None, None]
    return data, labels


def per_sample(schedule: optim.Schedule, batch_size: int) -> optim.Schedule:
    """A schedule of the SGD step evaluated at ``step·batch_size`` (TF's ``global_step·BATCH_SIZE``)."""
    return optim.Schedule(lambda step: schedule(step * batch_size),
                          {"name": "per_sample", "batch_size": batch_size, "schedule": schedule.config})


def build(config: MNISTConfig, train_size: int, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 1),
          num_classes: int = NUM_CLASSES):
    """The sample's network, loss, optimizer and schedule for ``train_size`` training images
    of ``input_shape`` in ``num_classes`` classes.

    Returns ``(model, loss_fn, optimizer, schedule)``: ``mnist_cnn(rng=seed)``; mean softmax
    cross-entropy; SGD with momentum and two param groups — conv parameters without weight
    decay, Dense parameters with ``weight_decay`` (the sample's L2 term on fc1/fc2 only);
    ``lr·decay^floor(step·batch/train_size)`` as a function of the step.
    """
    if config.model == "airbench":
        return _build_airbench(config, train_size, tuple(input_shape), num_classes)
    if config.model in ("resnet", "cifar"):
        return _build_resnet(config, train_size, tuple(input_shape), num_classes)
    model = models.mnist_cnn(rng=int(config.seed), dropout=config.dropout, input_shape=tuple(input_shape),
                             num_classes=num_classes)
    dense = [p for layer in model.layers if isinstance(layer, Dense) for p in layer.parameters()]
    dense_ids = {id(p) for p in dense}
    other = [p for p in model.parameters() if id(p) not in dense_ids]
    optimizer = optim.SGD([{"params": other, "weight_decay": 0.0},
                           {"params": dense, "weight_decay": config.weight_decay}],
                          lr=config.lr, momentum=config.momentum)
    decay = optim.exponential_decay(config.lr, decay_steps=train_size, rate=config.lr_decay, staircase=True)
    return model, losses.SoftmaxCrossEntropy(), optimizer, per_sample(decay, config.batch_size)


def _build_resnet(config: MNISTConfig, train_size: int, input_shape, num_classes: int):
    """``mnist_resnet(rng=seed)`` (``cifar``: ``cifar_resnet``); SGD with Nesterov momentum and
    weight decay on the conv and Dense weights (not on BatchNorm's γ/β or biases); ``lr`` decays
    along a half cosine to 0 over ``epochs`` epochs (``cifar``: rises linearly from 0 over the
    first ``CIFAR_WARMUP`` of the steps, then falls linearly to 0, a one-cycle)."""
    net = models.cifar_resnet if config.model == "cifar" else models.mnist_resnet
    model = net(rng=int(config.seed), input_shape=input_shape, num_classes=num_classes)
    decayed = [layer.weight for layer in model.layers if isinstance(layer, (Conv2D, Dense))]
    ids = {id(p) for p in decayed}
    other = [p for p in model.parameters() if id(p) not in ids]
    optimizer = optim.SGD([{"params": decayed, "weight_decay": config.weight_decay},
                           {"params": other, "weight_decay": 0.0}],
                          lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    total = total_steps(config, train_size)
    if config.model == "cifar":
        peak = max(1, round(CIFAR_WARMUP * total))
        schedule = optim.piecewise_linear([0, peak, max(total, peak + 1)], [0.0, config.lr, 0.0])
    else:
        schedule = optim.cosine_decay(config.lr, total_steps=total)
    return model, _loss(config), optimizer, schedule


def total_steps(config: MNISTConfig, train_size: int) -> int:
    """The SGD steps of the whole run (what the schedules span)."""
    b = config.batch_size
    steps = max(1, train_size // b) if config.shuffle else max(1, -(-train_size // b))
    return config.epochs * steps


def _build_airbench(config: MNISTConfig, train_size: int, input_shape, num_classes: int):
    """``cifar_airbench(rng=seed)`` and airbench's optimisation (``AIRBENCH_DEFAULTS``): SGD with
    Nesterov momentum in four groups: conv weights; the whitening bias (frozen after
    ``AIRBENCH_WHITEN_BIAS_EPOCHS`` by ``recipe_callbacks``); BatchNorm biases at
    ``AIRBENCH_BIAS_LR``× the learning rate; the Dense weights at 1/81 of it with 81× the decay
    coefficient (airbench's 1/9 logit scale). The whitening weights and BatchNorm's scales are
    in no group: they stay as set (``prepare_model``) and 1."""
    model = models.cifar_airbench(rng=int(config.seed), input_shape=input_shape, num_classes=num_classes,
                                  activation=config.activation)
    whiten, head = model.layers[0], model.layers[-1]
    convs = [layer.weight for layer in model.layers if isinstance(layer, Conv2D) and layer is not whiten]
    biases = [layer.bias for layer in model.layers if isinstance(layer, BatchNorm)]
    wd, h2 = config.weight_decay, AIRBENCH_HEAD_SCALE ** 2
    optimizer = optim.SGD([{"params": convs, "weight_decay": wd},
                           {"params": [whiten.bias], "weight_decay": wd},
                           {"params": biases, "weight_decay": wd / AIRBENCH_BIAS_LR, "lr_scale": AIRBENCH_BIAS_LR},
                           {"params": [head.weight], "weight_decay": wd * h2, "lr_scale": 1 / h2}],
                          lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    total = total_steps(config, train_size)
    share, start, end = AIRBENCH_SCHEDULE
    peak = max(1, int(share * total))
    schedule = optim.piecewise_linear([0, peak, max(total, peak + 1)],
                                      [start * config.lr, config.lr, end * config.lr])
    return model, _loss(config), optimizer, schedule


class FreezeGroup(Callback):
    """Set param group ``group``'s ``lr_scale`` to 0 from epoch ``after + 1`` on: its parameters
    stop changing (airbench trains its whitening bias for the first 3 epochs only)."""

    def __init__(self, optimizer, group: int, after: int):
        self.optimizer, self.group, self.after = optimizer, group, after

    def on_epoch_begin(self, trainer, epoch: int):
        if epoch > self.after:
            self.optimizer.param_groups[self.group]["lr_scale"] = 0.0


def recipe_callbacks(config: MNISTConfig, model, optimizer, train_size: int) -> list:
    """The ``Trainer`` callbacks the recipe trains with (airbench: its lookahead and the
    whitening bias's freeze)."""
    if config.model != "airbench":
        return []
    whiten_bias = model.layers[0].bias
    group = next(i for i, g in enumerate(optimizer.param_groups) if any(p is whiten_bias for p in g["params"]))
    return [Lookahead(model, total_steps(config, train_size), every=LOOKAHEAD_EVERY),
            FreezeGroup(optimizer, group, AIRBENCH_WHITEN_BIAS_EPOCHS)]


def prepare_model(config: MNISTConfig, model, train, normalize) -> None:
    """What the recipe sets from the training data before the first step (airbench: the whitening
    layer, from the patches of ``AIRBENCH_WHITEN_IMAGES`` training images, normalised: a random
    choice drawn with the run's seed, as a folder lists its images class by class)."""
    if config.model != "airbench":
        return
    n_all = len(train) if is_dataset(train) else len(train[0])
    n = min(n_all, AIRBENCH_WHITEN_IMAGES)
    chosen = np.sort(np.random.default_rng([config.seed, _WHITEN_STREAM]).choice(n_all, n, replace=False))
    if is_dataset(train):
        x = transform_batch(train.get_batch(chosen)[0], normalize=normalize)
    else:  # (inputs, labels) arrays, already model inputs
        x = np.asarray(train[0][chosen], dtype=np.float32)
    whiten = model.layers[0]
    whiten.weight.assign(init.patch_whitening(to_numpy(x), whiten.kernel_size[0]).astype(whiten.weight.data.dtype))


def _loss(config: MNISTConfig):
    # no argument at ε = 0: the MNIST recipes' loss object exactly as before the option existed
    if config.label_smoothing:
        return losses.SoftmaxCrossEntropy(label_smoothing=config.label_smoothing)
    return losses.SoftmaxCrossEntropy()


def describe_recipe(config: MNISTConfig, steps: int) -> str:
    """One line naming the optimisation settings (for the run log)."""
    c = config
    head = f"recipe: {c.epochs} epoch{'s' if c.epochs != 1 else ''} x {steps} steps of {c.batch_size}, "
    order = f"seed {c.seed}, {'shuffled' if c.shuffle else 'fixed order'}"
    shift = (f", random shifts up to {c.shift} px" if c.shift else "") + \
        (f", random crops (padding {c.crop} px)" if c.crop else "") + (", horizontal flips" if c.flip else "") + \
        (", tested with flips" if c.test_flip else "") + (f" and {c.test_shift}-px shifts" if c.test_shift else "")
    if c.model == "airbench":
        share, start, end = AIRBENCH_SCHEDULE
        return (head + f"SGD lr {start * c.lr:g} -> {c.lr} (first {share:.0%} of steps) -> {end * c.lr:g} linearly, "
                f"Nesterov momentum {c.momentum}, weight decay {c.weight_decay:.3g} (BatchNorm biases: "
                f"{AIRBENCH_BIAS_LR:g}x lr), lookahead every {LOOKAHEAD_EVERY} steps, whitened first layer, "
                + ("GELU, " if c.activation == "gelu" else "") + f"label smoothing {c.label_smoothing}{shift}, {order}")
    if c.model == "cifar":
        return (head + f"SGD lr 0 -> {c.lr} (first {CIFAR_WARMUP:.0%} of steps) -> 0 linearly, Nesterov momentum "
                f"{c.momentum}, weight decay {c.weight_decay} on conv/dense weights, label smoothing "
                f"{c.label_smoothing}{shift}, {order}")
    if c.model == "resnet":
        return (head + f"SGD lr {c.lr} cosine-decayed to 0, Nesterov momentum {c.momentum}, weight decay "
                f"{c.weight_decay} on conv/dense weights{shift}, {order}")
    return (head + f"SGD lr {c.lr} x {c.lr_decay}/epoch, momentum {c.momentum}, L2 {c.weight_decay} on fc, "
            f"dropout {c.dropout}{shift}, {order}")


def make_augment(config: MNISTConfig):
    """The training-batch augmentation of ``config`` (None without one), seeded from its seed
    through its own stream (independent of the weights' and the shuffling's): shift, then
    crop, then flip, each drawing from its own child of that stream."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(2)[1])
    if not (config.crop or config.flip):
        return RandomShift(config.shift, rng=rng) if config.shift else None  # the MNIST recipes' draws
    augs = [RandomShift(config.shift, rng=rng)] if config.shift else []
    children = np.random.SeedSequence(config.seed).spawn(3)[2].spawn(2)
    if config.crop:
        augs.append(RandomCrop(config.crop, rng=np.random.default_rng(children[0])))
    if config.flip:
        augs.append(RandomFlip(rng=np.random.default_rng(children[1])))
    return augs[0] if len(augs) == 1 else Compose(augs)
