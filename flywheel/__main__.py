"""`python -m flywheel ...`: the same as the `flywheel` console script."""

import sys

from flywheel.cli import main

sys.exit(main())
