"""``python -m noise_audit.cli``: the same as the ``noise-audit`` command."""

import sys

from noise_audit.cli import main

sys.exit(main())
