"""`python -m pacctl`: the same as the `pacctl` command."""

import sys

from pacctl.cli import main

sys.exit(main())
