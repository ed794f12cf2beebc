"""Optimizers with ``torch.optim``'s update formulas, param groups and state dicts,
plus learning-rate schedules (TensorFlow's ``exponential_decay`` among them).
"""
from __future__ import annotations

import math
import numbers

from .backend import to_numpy, xp_of
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
        raise ValueError(f"{owner}: {name} must be a finite number in {interval}, got {value!r}")
    return float(value)


class Optimizer:
    """Base: holds param groups (dicts with ``"params"`` and hyper-parameters) and state.

    Args:
        params: an iterable of ``Parameter`` or of dicts ``{"params": [...], **overrides}``
            (so, e.g., weight decay can apply to some parameters only).
        defaults: hyper-parameters used where a group does not set them.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
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
            unknown = set(g) - set(defaults) - {"params"}
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown hyper-parameters {sorted(unknown)} in a "
                                 f"param group; known: {sorted(defaults)}")
            group = {**self.defaults, **g, "params": list(g["params"])}
            group.update(self._checked(group, f" (param group {len(self.param_groups)})" if len(params) > 1 else ""))
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
                "weight_decay": check_real(owner, "weight_decay", group["weight_decay"], 0.0)}

    def _params(self):
        for g in self.param_groups:
            yield from g["params"]

    def zero_grad(self) -> None:
        for p in self._params():
            p.zero_grad()

    @property
    def lr(self) -> float:
        """Learning rate of the first group."""
        return self.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every group (what a schedule does each step)."""
        lr = check_real(f"{type(self).__name__}.set_lr", "lr (the learning rate)", lr, 0.0)
        for g in self.param_groups:
            g["lr"] = lr

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
        updates = []  # every group is checked before any is changed
        for i, (g, saved) in enumerate(zip(self.param_groups, groups)):
            if not isinstance(saved, dict):
                raise ValueError(f"{type(self).__name__}.load_state_dict: param group {i} is a "
                                 f"{type(saved).__name__}, not a dict")
            merged = {**g, **{k: v for k, v in saved.items() if k != "params"}}
            merged.update(self._checked(merged, f".load_state_dict (param group {i})"))
            updates.append(merged)
        for g, merged in zip(self.param_groups, updates):
            g.update({k: v for k, v in merged.items() if k != "params"})
        self.state = {}
        for i, s in sd.get("state", {}).items():
            p = params[int(i)]
            xp = xp_of(p.data)
            restored = {}
            for k, v in s.items():
                if hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
                    if tuple(v.shape) != tuple(p.data.shape):
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state {k!r} of parameter {i} "
                                         f"has shape {tuple(v.shape)}, parameter has {tuple(p.data.shape)}")
                    v = xp.asarray(v, dtype=p.data.dtype).copy()
                restored[k] = v
            self.state[id(p)] = restored


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

    def _checked(self, group, where=""):
        owner = type(self).__name__ + where
        out = super()._checked(group, where)
        out["momentum"] = check_real(owner, "momentum", group["momentum"], 0.0)
        out["dampening"] = check_real(owner, "dampening", group["dampening"], 0.0, 1.0)
        if not isinstance(group["nesterov"], bool):
            raise ValueError(f"{owner}: nesterov must be True or False, got {group['nesterov']!r}")
        if group["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"{owner}: nesterov momentum needs momentum > 0 and dampening = 0")
        return out

    def step(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                buf, first = None, False
                if g["momentum"] != 0:
                    st = self.state.setdefault(id(p), {})
                    buf = st.get("momentum_buffer")
                    first = buf is None
                    if first:
                        buf = st["momentum_buffer"] = xp_of(p.data).empty_like(p.data)
                pfor(lambda sl: self._update(p.data.reshape(-1)[sl], p.grad.reshape(-1)[sl],
                                             None if buf is None else buf.reshape(-1)[sl], g, first),
                     p.data.size, p.data.size)

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
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), each in [0, 1), got {betas!r}")
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
                st = self.state.setdefault(id(p), {})
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

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)  # also turns the betas JSON made a list back into a tuple
        for st in self.state.values():
            if "step" in st:
                st["step"] = int(st["step"])


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
