"""``python -m seekrec.cli``: the ``seekrec`` command (torchrun and the demo's child processes use it)."""

import sys

from seekrec.cli import main

sys.exit(main())
