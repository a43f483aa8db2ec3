"""`python -m pgdurable` runs the `pgdurable` command."""

import sys

from pgdurable.cli import main

sys.exit(main())
