"""Checkpoint files of a ``Trainer``: ``state_dict()`` and JSON metadata in one ``.npz``, no pickles."""
from __future__ import annotations

from .. import __version__
from ..serialization import CheckpointError, load_npz, pack, referenced_arrays, save_npz, unpack

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta"]

CHECKPOINT_FORMAT = "jimunet-checkpoint"


def save_checkpoint(trainer, path, metadata: dict | None = None) -> None:
    """Write ``trainer.state_dict()`` (plus JSON ``metadata``) to ``path`` atomically."""
    arrays = {}
    tree = pack(trainer.state_dict(), arrays)
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
        raise CheckpointError(f"{path}: does not fit this model/optimizer ({type(e).__name__}: {e})") from None
    return meta.get("metadata", {})


def read_checkpoint_meta(path) -> dict:
    """The JSON part of a checkpoint file (counters in ``["state"]``, ``["metadata"]``), no arrays."""
    _, meta = load_npz(path, kind=CHECKPOINT_FORMAT)
    return meta
