"""`python -m transformers_merv.cli`: the `merv` command."""

import sys

from . import main


sys.exit(main())
