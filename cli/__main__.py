"""`python -m keystate.cli` runs the `keystate` command."""

from . import main

raise SystemExit(main())
