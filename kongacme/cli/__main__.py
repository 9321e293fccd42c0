"""``python -m kongacme.cli``: the ``kongacme`` command."""

import sys

from kongacme.cli import main

sys.exit(main())
