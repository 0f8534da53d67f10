"""``python -m fastcka ...``: the same as the ``fastcka`` console command."""

import sys

from fastcka.cli import main

sys.exit(main())
