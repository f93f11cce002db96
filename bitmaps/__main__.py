"""``python -m bitmaps`` (and ``torchrun -m bitmaps``) run the CLI."""

import sys

from bitmaps.cli import main

sys.exit(main())
