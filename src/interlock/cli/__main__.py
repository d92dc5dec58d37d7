"""``python -m interlock.cli``."""

import sys

from interlock.cli.main import main

sys.exit(main())
