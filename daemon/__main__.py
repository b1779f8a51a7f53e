"""`python -m daemon` is `turnup`."""

from daemon.cli import main

raise SystemExit(main())
