import sys

from cvplgraph.cli import main

sys.exit(main())
