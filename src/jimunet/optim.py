"""Optimizers with ``torch.optim``'s update formulas, param groups and state dicts,
plus learning-rate schedules (TensorFlow's ``exponential_decay`` among them).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._messages import shown
from .backend import device_of, to_device, to_numpy, xp_of
from .parallel import pfor
from .parameter import Parameter


def check_real(owner: str, name: str, value, low: float, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, or a ValueError naming ``name`` and its allowed range.

    NaN and infinity are never allowed: one step would spread them into every weight.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and \
        (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
        raise ValueError(f"{owner}: {name} must be a finite number in {interval}, got {shown(value)}")
    return float(value)


class Optimizer:
    """Base: holds param groups (dicts with ``"params"`` and hyper-parameters) and state.

    Args:
        params: an iterable of ``Parameter`` or of dicts ``{"params": [...], **overrides}``
            (so, e.g., weight decay can apply to some parameters only). Every optimizer takes
            ``lr_scale`` (default 1) in a group: the group's learning rate is that multiple of
            the ``lr`` given and of every ``set_lr`` (a schedule's), e.g. a faster one for
            BatchNorm's biases.
        defaults: hyper-parameters used where a group does not set them.
    """

    # What a parameter's state holds once it has any (see ``step``): "array" (float, the
    # parameter's shape) or "count" (int >= 1); ``load_state_dict`` accepts nothing else.
    # None (a subclass that does not say): any entries, arrays of the parameter's shape.
    state_spec: dict | None = None

    def __init__(self, params, defaults: dict):
        self.defaults = {**defaults, "lr_scale": 1.0}
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        seen = set()
        for g in params:
            if not isinstance(g, dict) or "params" not in g:
                raise ValueError(f"{type(self).__name__}: param groups must be dicts with a 'params' key")
            unknown = set(g) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown hyper-parameters {sorted(unknown)} in a "
                                 f"param group; known: {sorted(self.defaults)}")
            group = {**self.defaults, **g, "params": list(g["params"])}
            group.update(self._checked(group, f" (param group {len(self.param_groups)})" if len(params) > 1 else ""))
            group["lr"] = group["lr"] * group["lr_scale"]
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise ValueError(f"{type(self).__name__}: expected Parameter objects, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter appears in more than one group")
                seen.add(id(p))
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}  # keyed by id(param); see state_dict for the portable form

    def _checked(self, group: dict, where: str = "") -> dict:
        """The group's hyper-parameters, validated and normalised (subclasses add theirs).

        Ranges follow ``torch.optim`` where it is sane; NaN and infinity are refused.
        """
        owner = type(self).__name__ + where
        return {"lr": check_real(owner, "lr (the learning rate)", group["lr"], 0.0),
                "lr_scale": check_real(owner, "lr_scale", group.get("lr_scale", 1.0), 0.0),
                "weight_decay": check_real(owner, "weight_decay", group["weight_decay"], 0.0)}

    def _params(self):
        for g in self.param_groups:
            yield from g["params"]

    def zero_grad(self) -> None:
        for p in self._params():
            p.zero_grad()

    def _state_of(self, p) -> dict:
        """``p``'s state, its arrays on ``p``'s device: after ``model.to(device)`` the
        momentum and moment buffers follow their parameters at the next step."""
        st = self.state.setdefault(id(p), {})
        device = device_of(p.data)
        for k, v in st.items():
            if hasattr(v, "shape") and device_of(v) != device:
                st[k] = to_device(v, device)
        return st

    @property
    def lr(self) -> float:
        """Learning rate of the first group."""
        return self.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every group, times its ``lr_scale`` (what a schedule does each step)."""
        lr = check_real(f"{type(self).__name__}.set_lr", "lr (the learning rate)", lr, 0.0)
        for g in self.param_groups:
            g["lr"] = lr * g["lr_scale"]

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """``{"state": {index: {name: array|number}}, "param_groups": [...]}`` like PyTorch's,
        parameters referred to by their position across groups."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {index[pid]: {k: (to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in s.items()}
                 for pid, s in self.state.items() if pid in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        """Restore what ``state_dict`` returned (for the same parameters in the same order)."""
        params = list(self._params())
        groups = sd.get("param_groups") if isinstance(sd, dict) else None
        if not isinstance(groups, list) or len(groups) != len(self.param_groups) or \
                [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved param groups do not match this "
                             f"optimizer's ({len(self.param_groups)} groups of "
                             f"{[len(g['params']) for g in self.param_groups]} parameters)")
        updates = []  # every group and every state is checked before anything is changed
        for i, (g, saved) in enumerate(zip(self.param_groups, groups)):
            if not isinstance(saved, dict):
                raise ValueError(f"{type(self).__name__}.load_state_dict: param group {i} is a "
                                 f"{type(saved).__name__}, not a dict")
            merged = {**g, **{k: v for k, v in saved.items() if k != "params"}}
            merged.update(self._checked(merged, f".load_state_dict (param group {i})"))
            updates.append(merged)
        saved_state = sd.get("state")
        if not isinstance(saved_state, dict):
            raise ValueError(f"{type(self).__name__}.load_state_dict: 'state' must be a dict from parameter index "
                             f"to that parameter's state, got {type(saved_state).__name__}")
        restored = {}
        for i, s in saved_state.items():
            p = params[self._state_index(i, len(params))]
            restored[id(p)] = self._restore_state(i, s, p)
        for g, merged in zip(self.param_groups, updates):
            g.update({k: v for k, v in merged.items() if k != "params"})
        self.state = restored

    def _state_index(self, i, n: int) -> int:
        try:
            index = int(i)
        except (TypeError, ValueError):
            index = None
        if index is None or (index != i and str(index) != i) or not 0 <= index < n:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state key {i!r} is not the index of one of "
                             f"the {n} parameters")
        return index

    def _restore_state(self, i, s, p) -> dict:
        """One parameter's saved state, checked against ``state_spec``, as arrays like ``p``'s."""
        where = f"{type(self).__name__}.load_state_dict: state of parameter {i}"
        spec = self.state_spec
        if not isinstance(s, dict):
            raise ValueError(f"{where} must be a dict, got {type(s).__name__}")
        if spec is None:
            spec = {k: "array" if getattr(v, "ndim", 0) > 0 else "any" for k, v in s.items()}
        if s and set(s) != set(spec):
            missing, unknown = sorted(set(spec) - set(s)), sorted(set(s) - set(spec))
            raise ValueError(f"{where} must hold exactly {sorted(spec)}" + (f"; missing {missing}" if missing else "")
                             + (f"; unexpected {unknown}" if unknown else ""))
        out = {}
        for k, v in s.items():
            if spec[k] == "any":
                out[k] = v
                continue
            if spec[k] == "count":
                if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 1:
                    raise ValueError(f"{where}: {k!r} must be an integer >= 1, got {shown(v)}")
                out[k] = int(v)
                continue
            kind = np.dtype(v.dtype).kind if hasattr(v, "shape") and hasattr(v, "dtype") else None
            if kind != "f":
                what = f"an array of dtype {v.dtype}" if kind is not None else f"a value of type {type(v).__name__}"
                raise ValueError(f"{where}: {k!r} must be a floating-point array of the parameter's shape "
                                 f"{tuple(p.data.shape)}, got {what}")
            if tuple(v.shape) != tuple(p.data.shape):
                raise ValueError(f"{where}: {k!r} has shape {tuple(v.shape)}, parameter has {tuple(p.data.shape)}")
            xp = xp_of(p.data)
            v = xp.asarray(v, dtype=p.data.dtype).copy()
            if not bool(xp.isfinite(v).all()):
                raise ValueError(f"{where}: {k!r} contains NaN or infinite values")
            out[k] = v
        return out


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly ``torch.optim.SGD``::

        g = grad + weight_decay·p
        buf = g (first step) | momentum·buf + (1-dampening)·g
        g = g + momentum·buf (nesterov) | buf
        p = p - lr·g

    Args:
        params: parameters or param groups.
        lr: learning rate.
        momentum, dampening, weight_decay, nesterov: as in PyTorch.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> p = jn.Parameter(np.ones(2)); p.grad[:] = 1.0
        >>> jn.optim.SGD([p], lr=0.1, momentum=0.9).step(); p.data
        array([0.9, 0.9])
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    state_spec = {"momentum_buffer": "array"}

    def _checked(self, group, where=""):
        owner = type(self).__name__ + where
        out = super()._checked(group, where)
        out["momentum"] = check_real(owner, "momentum", group["momentum"], 0.0)
        out["dampening"] = check_real(owner, "dampening", group["dampening"], 0.0, 1.0)
        if not isinstance(group["nesterov"], bool):
            raise ValueError(f"{owner}: nesterov must be True or False, got {shown(group['nesterov'])}")
        if group["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"{owner}: nesterov momentum needs momentum > 0 and dampening = 0")
        return out

    def step(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                buf, first = None, False
                if g["momentum"] != 0:
                    st = self._state_of(p)
                    buf = st.get("momentum_buffer")
                    first = buf is None
                    if first:
                        buf = st["momentum_buffer"] = xp_of(p.data).empty_like(p.data)
                data, grad = _flat(p.data, p.data, p), _flat(p.grad, p.data, p)
                flat_buf = None if buf is None else _flat(buf, p.data, p)
                pfor(lambda sl: self._update(data[sl], grad[sl], None if buf is None else flat_buf[sl], g, first),
                     p.data.size, p.data.size, like=p.data, blas=False)

    @staticmethod
    def _update(p, grad, buf, g, first):
        """One SGD step on flat views, in place, with the fewest temporaries."""
        lr, mom, damp, wd, nest = g["lr"], g["momentum"], g["dampening"], g["weight_decay"], g["nesterov"]
        d = grad if wd == 0 else grad + wd * p
        if buf is not None:
            if first:
                buf[...] = d
            else:
                buf *= mom
                buf += (1.0 - damp) * d if damp else d
            d = d + mom * buf if nest else buf
        p -= lr * d


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, exactly ``torch.optim.Adam``::

        g = grad + weight_decay·p
        m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g²
        p = p - lr/(1-β1ᵗ) · m / (sqrt(v)/sqrt(1-β2ᵗ) + eps)

    Args:
        params: parameters or param groups.
        lr, betas, eps, weight_decay: as in PyTorch (L2 added to the gradient).

    Example:
        >>> import numpy as np, jimunet as jn
        >>> p = jn.Parameter(np.ones(2)); p.grad[:] = 1.0
        >>> jn.optim.Adam([p], lr=0.1).step(); p.data.round(6)
        array([0.9, 0.9])
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _checked(self, group, where=""):
        owner = type(self).__name__ + where
        out = super()._checked(group, where)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), each in [0, 1), got {shown(betas)}")
        out["betas"] = (check_real(owner, "betas[0]", betas[0], 0.0, 1.0, high_open=True),
                        check_real(owner, "betas[1]", betas[1], 0.0, 1.0, high_open=True))
        # torch allows eps = 0, but then a parameter whose gradient is 0 gets 0/0 = NaN.
        out["eps"] = check_real(owner, "eps", group["eps"], 0.0, low_open=True)
        return out

    def step(self) -> None:
        for g in self.param_groups:
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for p in g["params"]:
                xp = xp_of(p.data)
                d = p.grad if wd == 0 else p.grad + wd * p.data
                st = self._state_of(p)
                if not st:
                    st.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
                st["step"] += 1
                t = st["step"]
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m *= b1
                m += (1 - b1) * d
                v *= b2
                v += (1 - b2) * d * d
                denom = xp.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
                p.data -= (lr / (1 - b1 ** t)) * m / denom

    state_spec = {"step": "count", "exp_avg": "array", "exp_avg_sq": "array"}


def _flat(a, data, p):
    """``a`` (a parameter's data, gradient or state) as a 1-D view in memory order, element for
    element in the order of ``data``'s, so an update of the view is an update of ``a``.

    (``reshape(-1)`` of a Fortran-order array is a copy: the step would be lost silently.)
    """
    flat = a.reshape(-1, order="A")
    if a.strides != data.strides or not xp_of(a).may_share_memory(flat, a):
        raise ValueError(f"SGD: parameter {p.name or ''} of shape {tuple(a.shape)} is not stored contiguously, "
                         f"or its gradient is laid out otherwise than its data; give it a C-order array "
                         f"(np.ascontiguousarray) and a gradient like it (np.zeros_like)")
    return flat


# -- learning-rate schedules: callables mapping the global step (0-based) to a rate ---------

class Schedule:
    """A learning rate as a function of the step; ``config`` describes it in JSON."""

    def __init__(self, fn, config: dict):
        self._fn, self.config = fn, config

    def __call__(self, step: int) -> float:
        return float(self._fn(int(step)))

    def __repr__(self):
        return f"Schedule({self.config})"


def constant_lr(lr: float) -> Schedule:
    """The same rate at every step."""
    return Schedule(lambda step: lr, {"name": "constant", "lr": lr})


def exponential_decay(base: float, decay_steps: int, rate: float, staircase: bool = True) -> Schedule:
    """TensorFlow's ``exponential_decay``: ``base · rate^(step/decay_steps)``, the exponent
    floored when ``staircase`` (the TF MNIST sample decays once per epoch this way)."""
    if decay_steps <= 0:
        raise ValueError(f"exponential_decay: decay_steps must be > 0, got {decay_steps}")

    def fn(step):
        e = step / decay_steps
        return base * rate ** (math.floor(e) if staircase else e)
    return Schedule(fn, {"name": "exponential_decay", "base": base, "decay_steps": decay_steps,
                         "rate": rate, "staircase": staircase})


def step_decay(base: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``base · gamma^floor(step/step_size)`` (PyTorch's StepLR, counted in steps)."""
    return exponential_decay(base, step_size, gamma, staircase=True)


def cosine_decay(base: float, total_steps: int, final: float = 0.0) -> Schedule:
    """Cosine from ``base`` to ``final`` over ``total_steps``, then ``final``."""
    if total_steps <= 0:
        raise ValueError(f"cosine_decay: total_steps must be > 0, got {total_steps}")

    def fn(step):
        t = min(step, total_steps) / total_steps
        return final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))
    return Schedule(fn, {"name": "cosine_decay", "base": base, "total_steps": total_steps, "final": final})


def piecewise_linear(steps, values) -> Schedule:
    """Linear interpolation between ``(steps[i], values[i])``, constant outside them (NumPy's
    ``interp``): ``piecewise_linear([0, 50, 200], [0, 0.4, 0])`` is a one-cycle triangle that
    rises to 0.4 at step 50 and falls to 0 at step 200 (Page's ResNet-9 schedule).

    Example:
        >>> s = piecewise_linear([0, 10, 40], [0.0, 0.4, 0.0])
        >>> s(0), s(5), s(10), round(s(25), 6), s(40), s(99)
        (0.0, 0.2, 0.4, 0.2, 0.0, 0.0)
    """
    xs, ys = [int(s) for s in steps], [float(v) for v in values]
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"piecewise_linear: steps and values must be non-empty and of equal length, got "
                         f"{len(xs)} and {len(ys)}")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"piecewise_linear: steps must increase, got {xs}")
    if not all(math.isfinite(v) and v >= 0 for v in ys):
        raise ValueError(f"piecewise_linear: values must be finite and >= 0, got {ys}")
    return Schedule(lambda step: float(np.interp(step, xs, ys)),
                    {"name": "piecewise_linear", "steps": xs, "values": ys})
