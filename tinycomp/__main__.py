"""`python -m tinycomp ...` is the `tinycomp` command."""

import sys

from .cli import main

sys.exit(main())
