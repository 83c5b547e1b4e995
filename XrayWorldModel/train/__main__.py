"""``python -m XrayWorldModel.train --config ... [key=value ...]`` (also under torchrun)."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
