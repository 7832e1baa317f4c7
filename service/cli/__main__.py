"""``python -m service.cli`` is ``pytc``."""

import sys

from service.cli import main

sys.exit(main())
