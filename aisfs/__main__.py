"""``python -m aisfs``: the same as the ``aisfs`` command."""

import sys

from .cli import main

sys.exit(main())
