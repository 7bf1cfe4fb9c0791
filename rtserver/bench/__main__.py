"""Entry point of ``python -m rtserver.bench``."""

from __future__ import annotations

import sys

from rtserver.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
