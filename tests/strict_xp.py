"""A strict stand-in for CuPy, so that the device code runs (and its host/device mix-ups fail)
in CI, where there is neither a GPU nor CuPy.

``backend.use_device_module(strict_xp)`` installs it as the array module of the ``"cuda"``
devices; then ``model.to("cuda")``, ``jn.asarray(x, device="cuda")``, ``xp_of``,
``to_numpy`` ... give and take ``strict_xp.ndarray`` objects where a GPU would give CuPy
arrays. The numbers are NumPy's (float64 results equal the CPU's); what it checks is the
boundary between host and device, the way CuPy draws it (docs.cupy.dev, "Conversion to/from
NumPy arrays": ``cupy.ndarray`` and ``numpy.ndarray`` are not implicitly convertible to each
other):

* ``np.asarray(a)``, ``np.array(a)``, ``np.ascontiguousarray(a)`` of a device array, and so
  every NumPy routine that converts its argument without dispatching on it, raise CuPy's
  ``TypeError: Implicit conversion to a NumPy array is not allowed. Please use `.get()` to
  construct a NumPy array explicitly.``
  The explicit ways out are CuPy's: ``a.get()``, ``strict_xp.asnumpy(a)``; the way in is
  ``strict_xp.asarray``/``array`` (or ``a.set(host)``).
* A ufunc or operator that combines a device array with a NumPy array (``dev + host``,
  ``host * dev``, ``np.add(dev, host, out=dev)``, a NumPy ``out=``) raises ``TypeError:
  Unsupported type <class 'numpy.ndarray'>``, as CuPy's ufuncs do; Python and NumPy scalars
  are accepted, as in CuPy. The module's other routines (``strict_xp.concatenate``, ``where``,
  ``stack`` ...) and NumPy's own functions called on device arrays (which dispatch to them
  through ``__array_function__``, as they dispatch to CuPy) refuse NumPy arrays the same way;
  only ``asarray``/``array``/``asanyarray`` take them.
* ``dev[...] = host`` with a non-scalar NumPy array and a basic index raises CuPy's
  ``ValueError: non-scalar numpy.ndarray cannot be used for fill``; NumPy arrays used as
  indices are accepted (CuPy copies them to the device).
* Reductions and integer indexing return 0-d device arrays, not NumPy scalars, as CuPy's
  do; ``float()``, ``int()``, ``bool()``, ``.item()`` and ``.tolist()`` on them are allowed
  (in CuPy they are explicit, synchronising copies).
* Arrays remember their (pretend) GPU: there are ``device_count`` of them (1 unless a test
  raises it); results land on the current one (``cuda.Device(n)`` as a context), and
  ``asarray`` copies another GPU's array to the current one, as CuPy does.
* ``host_reads`` counts the values read back to the host (``get``, ``asnumpy``, ``float()``,
  ``int()``, ``bool()``, ``.item()`` ...): on a GPU each one waits for the device, so a test
  can bound them per training step.
* Stricter than CuPy: pickling a device array raises (``jimunet`` promises that files hold
  host NumPy arrays; CuPy would pickle it and make a file that needs a GPU to load), and
  ``as_strided`` views are read-only.

Why a wrapper, not an ``ndarray`` subclass: NumPy converts a subclass to a plain ndarray
without calling its ``__array__`` (``np.asarray(sub)`` is a free view), and its C routines,
BLAS and ``np.savez`` take subclasses as they are, so a subclass cannot refuse the implicit
conversions that are the whole point. ``ndarray`` here holds a private NumPy array; NumPy
dispatches to it through ``__array_ufunc__``/``__array_function__`` exactly as it
dispatches to ``cupy.ndarray``.

What it does not check: that CuPy has every function the code calls, speed, or CuPy's own
numerics (its random numbers, summation orders). tests/test_gpu.py does that on a real GPU.
"""
from __future__ import annotations

import contextlib
import numbers
import sys
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

__all__ = ["installed", "ndarray", "asarray", "array", "asnumpy", "get_array_module", "cuda", "random", "lib",
           "IMPLICIT_CONVERSION", "device_count"]

IMPLICIT_CONVERSION = ("Implicit conversion to a NumPy array is not allowed. "
                       "Please use `.get()` to construct a NumPy array explicitly.")
_SCALARS = (numbers.Number, np.generic)


def _unsupported(obj):
    return TypeError(f"Unsupported type {type(obj)}")


class _Device:
    """``a.device``: ``.id`` is the index of the (pretend) GPU, as ``cupy.cuda.Device``."""

    _current = 0

    def __init__(self, index=None):
        self.id = _Device._current if index is None else int(index)
        self._previous = []

    def __enter__(self):
        if not 0 <= self.id < device_count:
            raise RuntimeError(f"strict_xp: no device {self.id} (device_count = {device_count})")
        self._previous.append(_Device._current)
        _Device._current = self.id
        return self

    def __exit__(self, *exc):
        _Device._current = self._previous.pop()
        return False

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


device_count = 1  # what cuda.runtime.getDeviceCount() answers; a test may raise it
host_reads = 0    # values copied from the device to the host so far (on a GPU, each one waits for it)


def _read():
    global host_reads
    host_reads += 1


class ndarray(NDArrayOperatorsMixin):
    """An array "on the device": NumPy underneath, refusing implicit conversion (see the module)."""

    __slots__ = ("_a", "_device")
    __hash__ = None

    def __init__(self, host: np.ndarray, device: int | None = None):
        # internal: wraps an existing NumPy array (no copy); use asarray/array to make one
        object.__setattr__(self, "_a", host)
        object.__setattr__(self, "_device", _Device._current if device is None else device)

    # -- the boundary --------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_CONVERSION)

    def get(self, stream=None, order="C", out=None, blocking=True):
        """A NumPy copy on the host (the explicit way out, as ``cupy.ndarray.get``)."""
        _read()
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy the host array ``arr`` into this array (``cupy.ndarray.set``)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError("Shape or dtype mismatch")
        self._a[...] = arr

    @property
    def device(self):
        return _Device(self._device)

    def __reduce__(self):
        raise TypeError("strict_xp: a device array cannot be pickled; files hold host NumPy arrays "
                        "(convert with backend.to_numpy first)")

    def __copy__(self):
        return ndarray(self._a.copy(), self._device)

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy(), self._device)

    # -- NumPy's protocols -----------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "at":  # ufunc.at(a, indices, b): the indices may be host arrays
            a, idx, *rest = inputs
            args = (_device_operand(a), _unwrap_index(idx), *(_device_operand(r) for r in rest))
        else:
            args = tuple(_device_operand(x) for x in inputs)
        out = kwargs.get("out")
        if out is not None:
            for o in out:
                if not isinstance(o, ndarray):
                    raise _unsupported(o)
            kwargs["out"] = tuple(o._a for o in out)
        if "where" in kwargs and not isinstance(kwargs["where"], bool):
            kwargs["where"] = _device_operand(kwargs["where"])
        result = getattr(ufunc, method)(*args, **kwargs)
        if method == "at":
            return None
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        # CuPy answers NumPy's functions with its own of the same name; so does this module.
        return _call(func, args, kwargs)

    # -- Python's protocols ------------------------------------------------------------------
    def __getattr__(self, name):
        if name.startswith("__") or name in ("data", "ctypes"):  # no __array_interface__, host memory ...
            raise AttributeError(f"strict_xp.ndarray: {name} (device memory is not the host's)")
        attr = getattr(self._a, name)
        if name in ("item", "tolist", "tobytes"):
            _read()
        if callable(attr):
            def method(*args, **kwargs):
                return _call(attr, args, kwargs, self)
            method.__name__ = name
            return method
        return _wrap(attr, (self,))

    def __setattr__(self, name, value):
        if name in ("shape", "strides", "dtype"):
            setattr(self._a, name, value)
        else:
            raise AttributeError(f"strict_xp.ndarray has no settable attribute {name!r}")

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap_index(index)], (self,))

    def __setitem__(self, index, value):
        if isinstance(value, np.ndarray) and value.ndim and not _advanced(index):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a[_unwrap_index(index)] = _unwrap_value(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for row in self._a:
            yield _wrap(row, (self,))

    def __bool__(self):
        _read()
        return bool(self._a)

    def __float__(self):
        _read()
        return float(self._a)

    def __int__(self):
        _read()
        return int(self._a)

    def __index__(self):
        _read()
        return self._a.__index__()

    def __complex__(self):
        _read()
        return complex(self._a)

    def __format__(self, spec):
        _read()
        return format(self._a, spec) if self._a.ndim == 0 else format(str(self), spec)

    def __repr__(self):
        _read()
        return repr(self._a).replace("array(", "strict_xp.array(", 1)

    def __str__(self):
        _read()
        return str(self._a)


def _advanced(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (ndarray, np.ndarray, list)) for p in parts)


def _unwrap_index(index):
    if isinstance(index, tuple):
        return tuple(_unwrap_index(i) for i in index)
    return index._a if isinstance(index, ndarray) else index


def _unwrap_value(value):
    if isinstance(value, ndarray):
        return value._a
    return value


def _device_operand(x):
    """The NumPy array under a ufunc operand; TypeError for a host array, as CuPy."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _SCALARS) and not isinstance(x, np.ndarray):
        return x
    raise _unsupported(x)


def _unwrap_arg(x):
    """A routine's argument: device arrays unwrapped, host arrays refused (also inside lists)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise _unsupported(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap_arg(i) for i in x)
    return x


def _wrap(x, sources=()):
    """Results as device arrays: a view stays on its source's GPU, new arrays are made on the
    current one (as CuPy allocates them)."""
    if isinstance(x, np.ndarray):
        for s in sources:
            if np.may_share_memory(x, s._a):
                return ndarray(x, s._device)
        return ndarray(x)
    if isinstance(x, np.generic):  # CuPy's reductions and integer indexing give 0-d arrays
        return ndarray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(i, sources) for i in x)
    if isinstance(x, list) and any(isinstance(i, np.ndarray) for i in x):
        return [_wrap(i, sources) for i in x]
    return x


def _device_args(args, found):
    for a in args:
        if isinstance(a, ndarray):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            _device_args(a, found)
    return found


def _call(func, args, kwargs, self=None):
    sources = _device_args(((self,) if self is not None else ()) + tuple(args) + tuple(kwargs.values()), [])
    args = tuple(_unwrap_arg(a) for a in args)
    kwargs = {k: _unwrap_arg(v) for k, v in kwargs.items()}
    return _wrap(func(*args, **kwargs), sources)


class _Ufunc:
    """``strict_xp.add`` etc.: the NumPy ufunc, with CuPy's rule on operands."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def _apply(self, method, args, kwargs):
        if not any(isinstance(a, ndarray) for a in args) and kwargs.get("out") is None:
            # no device operand (only scalars): the result is still a device array
            args = tuple(_device_operand(a) for a in args)
            return _wrap(getattr(self._ufunc, method)(*args, **kwargs))
        if "out" in kwargs and not isinstance(kwargs["out"], tuple):
            kwargs["out"] = (kwargs["out"],)
        first = next((a for a in args if isinstance(a, ndarray)), None)
        first = kwargs["out"][0] if first is None else first
        return ndarray.__array_ufunc__(first, self._ufunc, method, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._apply("__call__", args, kwargs)

    def __getattr__(self, name):
        attr = getattr(self._ufunc, name)
        if name in ("reduce", "accumulate", "reduceat", "outer", "at"):
            return lambda *args, **kwargs: self._apply(name, args, kwargs)
        return attr


class _Namespace(types.SimpleNamespace):
    """A NumPy namespace whose functions take and give device arrays (CuPy's API)."""

    def __init__(self, module, **overrides):
        super().__init__(**overrides)
        object.__setattr__(self, "_module", module)

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if isinstance(attr, np.ufunc):
            wrapped = _Ufunc(attr)
        elif isinstance(attr, types.ModuleType):
            wrapped = _Namespace(attr)
        elif callable(attr) and not isinstance(attr, type):
            def wrapped(*args, _f=attr, **kwargs):
                return _call(_f, args, kwargs)
            wrapped.__name__ = name
        else:  # dtypes, constants, classes: NumPy's own, as in CuPy (cupy.float32 is numpy.float32)
            return attr
        setattr(self, name, wrapped)
        return wrapped


# -- the cupy namespace -------------------------------------------------------------------------

def asarray(a, dtype=None, order=None, copy=None):
    """A device array of ``a`` (host arrays and lists are copied in; device arrays kept)."""
    if isinstance(a, ndarray):
        if copy or a._device != _Device._current:  # another device's array is copied here, as in CuPy
            return ndarray(a._a.astype(dtype or a.dtype, order=order or "K", copy=True))
        return a if dtype is None or np.dtype(dtype) == a.dtype else ndarray(a._a.astype(dtype))
    return ndarray(np.array(_unwrap_nested(a), dtype=dtype, order=order or "K", copy=True))


def _unwrap_nested(a):
    if isinstance(a, ndarray):
        return a._a
    if isinstance(a, (list, tuple)):
        return type(a)(_unwrap_nested(i) for i in a)
    return a


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0):
    return ndarray(np.array(_unwrap_nested(obj), dtype=dtype, copy=True if copy is None else copy, order=order,
                            ndmin=ndmin))


asanyarray = asarray


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """A host NumPy array of ``a`` (the explicit way out, as ``cupy.asnumpy``)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)  # counted in get
    return np.asarray(a, order=order)


def get_array_module(*args):
    """This module when any argument is a device array, else ``numpy`` (``cupy.get_array_module``)."""
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


@contextlib.contextmanager
def installed():
    """Within it, ``jimunet``'s ``"cuda"`` devices are this module (``backend.use_device_module``)."""
    from jimunet import backend
    previous = backend.use_device_module(sys.modules[__name__])
    try:
        yield sys.modules[__name__]
    finally:
        backend.use_device_module(previous)


class _Runtime:
    @staticmethod
    def getDeviceCount():
        return device_count


cuda = types.SimpleNamespace(Device=_Device, runtime=_Runtime())


class _Generator:
    """``cupy.random.default_rng(seed)``: NumPy's PCG64 numbers, as device arrays."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        attr = getattr(self._rng, name)
        return (lambda *args, **kwargs: _call(attr, args, kwargs)) if callable(attr) else attr


def _as_strided(x, shape=None, strides=None):
    if not isinstance(x, ndarray):
        raise _unsupported(x)
    return ndarray(np.lib.stride_tricks.as_strided(x._a, shape=shape, strides=strides, writeable=False))


def _sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    if not isinstance(x, ndarray):
        raise _unsupported(x)
    return ndarray(np.lib.stride_tricks.sliding_window_view(x._a, window_shape, axis=axis, writeable=writeable))


random = _Namespace(np.random, default_rng=_Generator)
lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=_as_strided,
                                                                sliding_window_view=_sliding_window_view))
_namespace = _Namespace(np)


def __getattr__(name):
    """Every other name of NumPy's namespace, taking and giving device arrays."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_namespace, name)
