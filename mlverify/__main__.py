"""``python -m mlverify verify ...``: the same as the ``mlverify`` command."""

import sys

from .cli import main

sys.exit(main())
