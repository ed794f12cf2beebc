"""``ONNXError``, in a module of its own so that the importer's modules need not import the package."""
from __future__ import annotations


class ONNXError(ValueError):
    """An ONNX file jimunet cannot read or run (corrupt, unsupported op or attribute, bad shapes)."""
