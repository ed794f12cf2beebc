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

import inspect
import math
import threading
from contextlib import contextmanager

import numpy as np

from .._messages import shown
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


def from_config(config: dict, where: str = "layer"):
    """Build a layer from ``{"class": name, "config": {...}}``.

    The description is untrusted (it may come from a file): anything but an object naming a
    registered layer, with a ``config`` object of arguments that layer takes, is a ValueError
    naming ``where``, the layer and the argument; the constructor then validates the values.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a layer description must be an object with 'class' and 'config', got "
                         f"{json_kind(config)}")
    name = config.get("class")
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        shown = repr(name) if isinstance(name, str) and len(name) <= 80 else json_kind(name)
        raise ValueError(f"{where}: unknown layer {shown}; known layers: {', '.join(sorted(_REGISTRY))}")
    unknown_keys = sorted(set(config) - {"class", "config"})
    if unknown_keys:
        raise ValueError(f"{where} ({name}): unexpected field(s) {unknown_keys}; a layer description has "
                         "'class' and 'config'")
    args = config.get("config", {})
    if not isinstance(args, dict):
        raise ValueError(f"{where} ({name}): 'config' must be an object of constructor arguments, got {json_kind(args)}")
    params = inspect.signature(cls.__init__).parameters
    takes = [p for p in list(params)[1:] if params[p].kind in (params[p].POSITIONAL_OR_KEYWORD, params[p].KEYWORD_ONLY)]
    extra = sorted(str(k)[:40] for k in args if k not in takes)
    if extra:
        raise ValueError(f"{where} ({name}): unknown argument(s) {extra}; {name} takes "
                         f"{', '.join(takes) or 'no arguments'}")
    missing = [p for p in takes if params[p].default is params[p].empty and p not in args]
    if missing:
        raise ValueError(f"{where} ({name}): missing argument(s) {missing}")
    try:
        return cls(**args)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    except (TypeError, OverflowError, AttributeError) as e:  # a value of a type the constructor does not expect
        raise ValueError(f"{where} ({name}): invalid arguments {_short(args)} ({e})") from None


def json_kind(v) -> str:
    """A value's JSON kind for messages (never the value itself, which may be huge)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


_short = shown  # a value in a message: its repr, cut short, never an object's address


# -- argument checks shared by the layers' constructors ----------------------------------
# One message form: "<Layer>: <argument> must be <what is expected>, got <value>".

def check_bool(layer: str, name: str, v) -> bool:
    """``v`` as a bool; ValueError unless it is one (a file's ``"false"`` must not mean True)."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{layer}: {name} must be true or false, got {_short(v)}")
    return bool(v)


_F32_MAX = float(np.finfo(np.float32).max)


def check_number(layer: str, name: str, v, low=-_F32_MAX, high=_F32_MAX, low_open=False, high_open=False) -> float:
    """``v`` as a float in the interval given (by default: finite in float32, the weights' usual
    precision); ValueError naming ``layer`` and ``name`` otherwise."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    if ok:
        try:
            f = float(v)
        except OverflowError:
            ok = False
        else:
            ok = math.isfinite(f) and (f > low if low_open else f >= low) and (f < high if high_open else f <= high)
    if not ok:
        raise ValueError(f"{layer}: {name} must be a finite number in {interval}, got {_short(v)}")
    return f


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

    #: True for elementwise activations (``ReLU``, ``GELU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``).
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

    def buffer_problem(self, name: str, value) -> str | None:
        """Why ``value`` cannot be this layer's buffer ``name`` (None when it can). ``load_state_dict``
        and ``jn.load`` ask before anything is assigned, ``save`` before anything is written; NaN
        and infinities are refused for every parameter and buffer before this is asked."""
        return None

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

    #: Values one parameter may hold (2**40: 4 TiB in float32); more is refused by name, not
    #: left to fail inside NumPy. A file is bounded far lower by ``jn.load``'s ``max_bytes``.
    MAX_PARAMETER_SIZE = 2 ** 40

    def _new_parameter(self, init, shape, rng, dtype, name) -> Parameter:
        """``Parameter(init(shape, rng, dtype), name)``, or a placeholder while a file is loaded."""
        size = math.prod(shape)
        if size > self.MAX_PARAMETER_SIZE:
            raise ValueError(f"{type(self).__name__}: its {name} would be of shape {tuple(shape)}, {size:,} values; "
                             f"at most {self.MAX_PARAMETER_SIZE:,} are possible")
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


def check_dtype_arg(dtype, layer: str = "") -> np.dtype:
    """``dtype`` as a NumPy dtype: float32 or float64 (what ``jn.load`` reads back)."""
    where = f"{layer}: " if layer else ""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{where}dtype must be a floating-point type (float32 or float64), got "
                         f"{_short(dtype)}") from None
    if dt.kind != "f" or dt.itemsize not in (4, 8) or dt.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
        raise ValueError(f"{where}dtype must be a floating-point type (float32 or float64), got {dt}")
    return dt


def check_weight_header(name, shape, dtype, expected_shape, where="load_state_dict: ") -> None:
    """ValueError unless an array of ``shape`` and ``dtype`` can be the weight ``name``."""
    if shape is None or dtype is None:
        raise ValueError(f"{where}{name} should be an array, got {type(shape).__name__}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or dtype.itemsize not in (4, 8) or dtype.fields is not None:
        raise ValueError(f"{where}{name} has dtype {dtype}; weights must be float32 or float64")
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(f"{where}{name} has shape {tuple(shape)} in the file, {tuple(expected_shape)} in the model")
