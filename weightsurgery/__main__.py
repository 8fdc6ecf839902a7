"""``python -m weightsurgery``: the command line."""

import sys

from weightsurgery.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
