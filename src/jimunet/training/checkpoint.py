"""A ``Trainer``'s state (``trainer_state``, ``load_trainer_state``) and its checkpoint files:
that state and JSON metadata in one ``.npz``, no pickles."""
from __future__ import annotations

import numpy as np

from .._version import __version__
from ..backend import to_numpy
from ..serialization import CheckpointError, load_npz, pack, referenced_arrays, save_npz, unpack
from .callbacks import CallbackList

__all__ = ["CHECKPOINT_FORMAT", "trainer_state", "load_trainer_state", "save_checkpoint", "load_checkpoint",
           "read_checkpoint_meta"]

CHECKPOINT_FORMAT = "jimunet-checkpoint"


def trainer_state(trainer) -> dict:
    """``Trainer.state_dict()``: weights, optimizer, RNG streams, counters, history, and the
    given callbacks' states (under ``"callbacks"``, only when one has any)."""
    t = trainer
    rng = {"shuffle": t.rng.bit_generator.state, "model": t.model.rng_states()}
    if hasattr(t.augment, "state"):
        rng["augment"] = t.augment.state()
    state = {"model": {k: to_numpy(v).copy() for k, v in t.model.state_dict().items()},
             "optimizer": t.optimizer.state_dict(), "rng": rng,
             "epoch": t.epoch, "step": t.step, "history": t.history.state_dict(),
             "batch_size": t.batch_size, "shuffle": t.shuffle}
    extra = CallbackList(t.callbacks).state_dict()
    if extra:
        state["callbacks"] = extra
    return state


def load_trainer_state(trainer, state: dict) -> None:
    """``Trainer.load_state_dict``; ValueError when the batch size or shuffling differ."""
    t = trainer
    if int(state["batch_size"]) != t.batch_size or bool(state["shuffle"]) != t.shuffle:
        raise ValueError(f"the checkpoint was made with batch_size={state['batch_size']}, "
                         f"shuffle={state['shuffle']}; this trainer has batch_size={t.batch_size}, "
                         f"shuffle={t.shuffle}")
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.rng.bit_generator.state = state["rng"]["shuffle"]
    t.model.set_rng_states(state["rng"]["model"])
    if hasattr(t.augment, "set_state") and "augment" in state["rng"]:
        t.augment.set_state(state["rng"]["augment"])
    t.epoch, t.step = int(state["epoch"]), int(state["step"])
    t.history.load_state_dict(state["history"])
    CallbackList(t.callbacks).load_state_dict(state.get("callbacks", {}))


def save_checkpoint(trainer, path, metadata: dict | None = None) -> None:
    """Write ``trainer.state_dict()`` (plus JSON ``metadata``) to ``path`` atomically.

    Raises ValueError, writing nothing (an earlier checkpoint stays as it was), when the state
    is one ``load_checkpoint`` would refuse: NaN or infinite weights, buffers or optimizer
    state, or a buffer its layer refuses (``Network.state_problem``)."""
    problem = trainer.model.state_problem()
    arrays = {}
    tree = pack(trainer.state_dict(), arrays)
    if problem is None:
        bad = next((k for k, a in arrays.items() if k.startswith("optimizer/") and a.dtype.kind == "f"
                    and not np.isfinite(a).all()), None)
        problem = bad and f"the optimizer state {bad[len('optimizer/'):]} contains NaN or infinite values"
    if problem:
        raise ValueError(f"cannot save the checkpoint {path}: {problem}; it could not be loaded (did training "
                         "diverge? a lower learning rate may help)")
    meta = {"format": CHECKPOINT_FORMAT, "version": 1, "jimunet": __version__,
            "architecture": trainer.model.get_config(), "state": tree, "metadata": metadata or {}}
    save_npz(path, arrays, meta)


def load_checkpoint(trainer, path) -> dict:
    """Restore a ``save_checkpoint`` file into ``trainer``; returns its metadata.

    Raises ``CheckpointError`` for a corrupt file or one that does not fit this trainer.
    """
    arrays, meta = load_npz(path, kind=CHECKPOINT_FORMAT, expected=referenced_arrays)
    try:
        trainer.load_state_dict(unpack(meta["state"], arrays))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: does not fit this model/optimizer ({_reason(e)})") from None
    return meta.get("metadata", {})


def _reason(e: BaseException) -> str:
    """What went wrong, in words: a missing entry is named as such, never by exception class."""
    if isinstance(e, KeyError):
        return f"it lacks the entry {e.args[0]!r}" if e.args else "an entry is missing"
    return str(e) or "malformed"


def read_checkpoint_meta(path) -> dict:
    """The JSON part of a checkpoint file (counters in ``["state"]``, ``["metadata"]``), no arrays."""
    _, meta = load_npz(path, kind=CHECKPOINT_FORMAT)
    return meta
