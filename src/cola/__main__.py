"""`python -m cola`: the `cola` command line."""

import sys

from cola.cli import main

sys.exit(main())
