"""`python -m cola.cli`: the `cola` command line, as `python -m cola`."""

import sys

from cola.cli import main

sys.exit(main())
