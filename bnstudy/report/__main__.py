"""`python -m bnstudy.report SWEEP_DIR`: runs `bnstudy.report.cli.main`."""

import sys

from bnstudy.report.cli import main

sys.exit(main())
