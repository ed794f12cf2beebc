"""``python -m jimunet ...``: the same command line as ``jimunet ...`` (see ``jimunet.cli``)."""
import sys

from .cli import main

sys.exit(main())
