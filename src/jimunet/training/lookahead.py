"""``Lookahead``: an averaged copy of the weights that training is pulled back to every few steps.

Keller Jordan's airbench (arXiv 2404.00498) keeps such a copy: every ``every`` steps the copy
moves toward the weights by ``1 - decay`` and the weights are set to the copy, with ``decay``
growing over the run as ``base·(step/total)^power``; the run ends on the copy. Early on
(``decay`` ≈ 0) the copy simply follows the weights; late in the run it averages out the
noise of the last steps, which the learning rate alone does only as it reaches zero.
"""
from __future__ import annotations

from ..backend import to_numpy, xp_of
from .callbacks import Callback

__all__ = ["Lookahead"]


class Lookahead(Callback):
    """Pull ``model``'s weights and buffers to a running average every ``every`` steps.

    After step ``n`` (1-based) with ``n % every == 0``: ``avg += (1 - d)·(w - avg)`` and
    ``w = avg`` for every parameter and buffer (BatchNorm's statistics too), with
    ``d = base·(n/total_steps)^power``; after step ``total_steps``, ``w = avg`` once more,
    so the run ends on the average. The average is part of the trainer's checkpoints, so a
    resumed run continues bit for bit.

    Args:
        model: the network being trained.
        total_steps: the run's planned steps (the schedule's length).
        every: steps between updates (airbench: 5).
        base, power: the decay schedule (airbench: ``0.95**5`` and 3).

    Example:
        >>> import numpy as np, jimunet as jn
        >>> m = jn.Sequential([jn.layers.Dense(2, 1, rng=0)])
        >>> la = Lookahead(m, total_steps=4, every=2, base=1.0, power=0)
        >>> la.on_train_begin(None); w0 = m.parameters()[0].data.copy()
        >>> m.parameters()[0].data += 1.0
        >>> la.on_step_end(None, 1, 0.0)   # d = 1: the weights go back to the average
        >>> bool((m.parameters()[0].data == w0).all())
        True
    """

    def __init__(self, model, total_steps: int, every: int = 5, base: float = 0.95 ** 5, power: float = 3.0):
        for name, v, low in (("total_steps", total_steps, 1), ("every", every, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"Lookahead: {name} must be an integer >= {low}, got {v!r}")
        if not 0.0 <= float(base) <= 1.0 or not float(power) >= 0.0:
            raise ValueError(f"Lookahead: base must lie in [0, 1] and power be >= 0, got {base!r}, {power!r}")
        self.model, self.total, self.every = model, total_steps, every
        self.base, self.power = float(base), float(power)
        self.average = None

    def _arrays(self):
        return [p.data for p in self.model.parameters() + self.model.buffers()]

    def decay(self, step: int) -> float:
        """The average's decay after 1-based step ``step``."""
        return self.base * (min(step, self.total) / self.total) ** self.power

    def on_train_begin(self, trainer):
        if self.average is None:
            self.average = [a.copy() for a in self._arrays()]

    def on_step_end(self, trainer, step: int, loss: float):
        n = step + 1
        if n % self.every == 0:
            self._pull(self.decay(n))
        if n == self.total:
            self._pull(1.0)

    def _pull(self, decay: float) -> None:
        for avg, w in zip(self.average, self._arrays()):
            if decay != 1.0:
                avg += (1.0 - decay) * (w - avg)
            w[...] = avg

    def state_dict(self) -> dict:
        if self.average is None:
            return {}
        return {"average": [to_numpy(a).copy() for a in self.average]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("average") if isinstance(state, dict) else None
        arrays = self._arrays()
        if not isinstance(saved, list) or len(saved) != len(arrays) or \
                any(getattr(s, "shape", None) != a.shape for s, a in zip(saved, arrays)):
            raise ValueError(f"Lookahead.load_state_dict: expected {len(arrays)} arrays shaped like the model's "
                             "parameters and buffers")
        average = [xp_of(a).asarray(s, dtype=a.dtype).copy() for s, a in zip(saved, arrays)]
        if not all(bool(xp_of(v).isfinite(v).all()) for v in average):
            raise ValueError("Lookahead.load_state_dict: the average contains NaN or infinite values")
        self.average = average
