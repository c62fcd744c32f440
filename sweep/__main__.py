"""`python -m sweep ...` is the `sweep` command."""

import sys

from sweep.command.entry import main

sys.exit(main())
