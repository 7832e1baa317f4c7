"""``python -m service.demo`` (``make demo``)."""

import sys

from service.demo import main

sys.exit(main())
