"""`python -m daemon` is the same as the `daemon` console script."""

from daemon.cli import main

raise SystemExit(main())
