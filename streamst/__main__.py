"""`python -m streamst`: the same as the `streamst` command."""
import sys

from streamst.cli import main

sys.exit(main())
