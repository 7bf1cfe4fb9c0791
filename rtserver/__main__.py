"""``python -m rtserver``: the same as the ``rtserver`` command."""

from rtserver.cli import main

raise SystemExit(main())
