"""``python -m minilepton ...``: the same commands as the ``minilepton`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
