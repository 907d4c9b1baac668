"""``python -m cvplgraph.cli``: the command line."""

import sys

from cvplgraph.cli import main

sys.exit(main())
