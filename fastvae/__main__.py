"""``python -m fastvae``: the same command line as the ``fastvae`` console script."""

import sys

from fastvae.cli import main

sys.exit(main())
