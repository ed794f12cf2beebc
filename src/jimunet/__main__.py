"""``python -m jimunet ...``: the same command line as ``jimunet ...`` (see ``jimunet.app.cli``)."""
import sys

from .app.cli import main

sys.exit(main())
