"""`python -m sweep ...` is the `sweep` command."""

import sys

from sweep.command.cli import main

sys.exit(main())
