"""The ``Layer`` contract shared by every block.

A layer maps ``forward(x, training)`` to an output and ``backward(grad)`` to the gradient
w.r.t. its last input, ADDING parameter gradients into ``Parameter.grad``. It never
mutates its arguments and holds no batch size: shapes come from the data.

Per-call state is explicit: ``forward`` stores what ``backward`` needs in ONE attribute,
``layer.cache``, and ``backward`` reads only that. Everything else on a layer is persistent
(weights, buffers, random streams, kept plans and scratch space) and is shared by every use
of the layer; a graph model that calls one layer at several nodes keeps one cache per node
and puts it back before that node runs (see ``jimunet.graph``).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from ..backend import check_device, device_of
from ..parallel import has_nan
from ..parameter import Parameter
from .symbolic import apply_symbolic, is_symbolic

_REGISTRY: dict[str, type] = {}
_flags = threading.local()  # per-thread modes set by the context managers below


@contextmanager
def _flag(name: str):
    """``name`` is set for this thread within the block (nested blocks restore it)."""
    saved = getattr(_flags, name, False)
    setattr(_flags, name, True)
    try:
        yield
    finally:
        setattr(_flags, name, saved)


def placeholder_parameters():
    """Within this block, new layers get placeholder parameters instead of initial weights.

    ``jimunet.load`` builds the model a file describes this way: shapes and dtypes are
    known at no cost in memory or time (a file may describe a layer of 10^9 weights), no
    random number is drawn, and the file's weights then replace the placeholders.
    """
    return _flag("placeholders")


def building_placeholders() -> bool:
    return getattr(_flags, "placeholders", False)


def data_already_checked():
    """Within this block, layers skip the NaN scan of their input (shape checks remain).

    ``Sequential`` scans its input once and runs its later layers inside this block: their
    inputs are its own intermediate results, and a NaN born inside the network (overflow)
    still reaches the loss.
    """
    return _flag("checked")


def register(cls):
    """Make a layer class reconstructible from its ``get_config()`` (used by ``jn.load``)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def from_config(config: dict):
    """Build a layer from ``{"class": name, "config": {...}}``."""
    try:
        cls = _REGISTRY[config["class"]]
    except (KeyError, TypeError):
        raise ValueError(f"unknown layer description {config!r}; known layers: {sorted(_REGISTRY)}") from None
    return cls(**config.get("config", {}))


class Layer:
    """Base class: ``forward``, ``backward``, ``parameters``, shapes and FLOPs for ``summary``."""

    #: True for layers that compute each sample on its own, in the blocks
    #: ``jimunet.parallel.batch_blocks`` gives, and reduce over the batch only through
    #: ``jimunet.parallel.sum_blocks`` (or, for statistics of the whole batch, through
    #: ``jimunet.parallel.batch_sync``, as ``BatchNorm``): such layers can run on one
    #: process's share of a batch and still give exactly what one process computes
    #: (``jimunet.distributed``).
    per_sample = False

    #: True for layers that merge several inputs: ``forward`` takes a list of arrays and
    #: ``backward`` returns a list of gradients, one per input (``Add``, ``Concatenate``).
    multi_input = False

    #: True for elementwise activations (``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``).
    activation = False

    #: What ``backward`` needs from the last ``forward`` call (None before any call); set by
    #: ``forward``, read by ``backward``, and nothing else on the layer may be per-call.
    #: Its form is the layer's own (an array, a tuple, a small record); a graph model takes
    #: it after each node's forward and puts it back before that node's backward, so a layer
    #: used at several nodes differentiates each call with its own cache.
    cache = None

    def __call__(self, x, training: bool = False):
        # On symbolic tensors (``jn.Input`` and what layers made of it) a call adds a node
        # to a graph instead of computing; see ``jimunet.layers.symbolic``.
        if is_symbolic(x):
            return apply_symbolic(self, x)
        return self.forward(x, training=training)

    def forward(self, x, training: bool = False):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    def parameters(self) -> list:
        """Trainable parameters, weight before bias."""
        return []

    def buffers(self) -> list:
        """State saved with the model but never trained (e.g. BatchNorm's running statistics)."""
        return []

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def to(self, device):
        """Move every parameter (and its gradient) and every buffer to ``device``: ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``; returns self. An optimizer built on these parameters keeps
        working: its state follows them at its next step. Raises DeviceError (a ValueError)
        for a device that cannot be used, saying what to install or check.
        """
        device = check_device(device)
        for p in self.parameters() + self.buffers():
            p.to(device)
        return self

    @property
    def device(self) -> str:
        """Where the parameters are (``"cpu"`` or ``"cuda:N"``); ``"cpu"`` without parameters."""
        params = self.parameters()
        return device_of(params[0].data) if params else "cpu"

    def astype(self, dtype):
        """Cast every parameter (and its gradient) to ``dtype`` in place; returns self."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        return self

    def output_shape(self, input_shape: tuple) -> tuple:
        """Per-sample output shape (no batch axis) for a per-sample ``input_shape``."""
        return tuple(input_shape)

    def flops(self, input_shape: tuple) -> int:
        """Forward floating-point operations for one sample (multiply and add count as 2)."""
        return 0

    def get_config(self) -> dict:
        """Constructor arguments as JSON-able values."""
        return {}

    def describe(self) -> str:
        """Short text used in error messages and summaries."""
        return type(self).__name__ + "()"

    def __repr__(self) -> str:
        return self.describe()

    # -- helpers shared by subclasses -------------------------------------------------

    @staticmethod
    def _new_parameter(init, shape, rng, dtype, name) -> Parameter:
        """``Parameter(init(shape, rng, dtype), name)``, or a placeholder while a file is loaded."""
        if building_placeholders():
            return Parameter.placeholder(shape, dtype, name)
        return Parameter(init(shape, rng, dtype), name)

    def _check_input(self, x, ndim: int | None = None, channels: int | None = None,
                     layout: str = "") -> None:
        """Raise a ValueError naming this layer if ``x`` is not a float array of the right rank.

        NaN is rejected too: it would otherwise propagate silently into every weight.
        """
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            raise ValueError(f"{self.describe()}: expected an array, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise ValueError(f"{self.describe()}: expected a floating-point array (float32 or float64), "
                             f"got dtype {x.dtype}; convert with x.astype('float32')")
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{self.describe()}: expected a {ndim}-D {layout or 'array'}, "
                             f"got shape {tuple(x.shape)}")
        if channels is not None and x.shape[-1] != channels:
            hint = ""
            if x.ndim == 4 and x.shape[1] == channels:
                hint = " (it looks like NCHW; jimunet uses NHWC: x.transpose(0, 2, 3, 1))"
            what = "channels" if x.ndim == 4 else "features"
            raise ValueError(f"{self.describe()}: expected {channels} {what} in the last axis of an "
                             f"{layout or 'array'}, got shape {tuple(x.shape)}{hint}")
        params = self.parameters()
        if params and device_of(x) != device_of(params[0].data):
            raise ValueError(f"{self.describe()}: the input is on {device_of(x)}, the layer's parameters on "
                             f"{device_of(params[0].data)}; move one of them (jn.asarray(x, device=...) or "
                             f"model.to(...))")
        if not getattr(_flags, "checked", False) and has_nan(x):
            raise ValueError(f"{self.describe()}: input contains NaN")

    def _check_grad(self, grad, expected_shape) -> None:
        if tuple(grad.shape) != tuple(expected_shape):
            raise ValueError(f"{self.describe()}: backward expected a gradient of shape "
                             f"{tuple(expected_shape)} (the forward output), got {tuple(grad.shape)}")

    def _no_forward(self):
        return RuntimeError(f"{self.describe()}: backward() called before forward(x, training=...)")


def check_dtype_arg(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"dtype must be a floating-point type (float32 or float64), got {dt}")
    return dt
