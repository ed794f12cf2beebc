# TEMP-SHIM (issue 20 merge): remove
"""Moved to ``jimunet.app.cli`` (one module per command); these names are re-exported until the merge."""
from .app.cli import build_parser, main  # noqa: F401
from .app.cli.errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, check_classifier,  # noqa: F401
                             model_path_error)
from .app.cli.errors import UserError as UsageError  # noqa: F401
from .app.cli.errors import interrupted_exit as _interrupted_exit  # noqa: F401
from .app.cli.errors import load_model as _load_model  # noqa: F401
from .app.cli.evaluate import format_confusion  # noqa: F401
