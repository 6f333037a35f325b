import sys

from pacd.cli import main

sys.exit(main())
