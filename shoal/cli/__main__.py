"""``python -m shoal.cli``: the ``shoal`` command (what ``LocalCluster`` runs)."""

import sys

from shoal.cli import main

sys.exit(main())
