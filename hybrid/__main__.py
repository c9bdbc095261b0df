"""``python -m hybrid`` runs the CLI."""

from __future__ import annotations

import sys

from hybrid.cli import main

sys.exit(main())
