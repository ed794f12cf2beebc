"""The package version, in a module of its own so any module can import it without importing
``jimunet`` itself (``from ._version import __version__``)."""
__version__ = "0.1.0"
