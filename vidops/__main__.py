"""`python -m vidops`, the same as the `vidops` command."""

from vidops.cli import main

raise SystemExit(main())
