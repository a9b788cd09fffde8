"""`python -m twinnode.cli`: the same as the `twinnode` console script."""
import sys

from twinnode.cli.main import main

sys.exit(main())
