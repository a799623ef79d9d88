"""`python -m poolwarden` runs the command line."""

import sys

from poolwarden.cli import main

sys.exit(main())
