"""``python -m pyflashmm``: the command line (see :mod:`pyflashmm.cli`)."""

import sys

from pyflashmm.cli import main

sys.exit(main())
