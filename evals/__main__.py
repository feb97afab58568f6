"""`python -m evals run|compare|report ...` (the same as `hybrid-chat eval ...`)."""

from evals.cli import main

raise SystemExit(main())
