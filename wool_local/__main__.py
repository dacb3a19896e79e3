"""``python -m wool_local``: the ``wool-local`` command."""

import sys

from .cli import main

sys.exit(main())
