"""``python -m Xray2XrayWeb [options]``: what ``xray2xray web`` runs (same options)."""
import sys

from .app import main

sys.exit(main())
