"""``python -m XrayWorldModel``: the ``xray2xray`` command line without the console script."""
import sys

from .cli import main

sys.exit(main())
