"""``python -m kongacme``: the ``kongacme`` command (same as ``python -m kongacme.cli``)."""

import sys

from kongacme.cli import main

if __name__ == "__main__":
    sys.exit(main())
