"""``python -m service ...`` is the ``pytc`` command (see :mod:`service.entry` for why it is thin)."""

import sys

from service.entry import pytc

if __name__ == "__main__":
    sys.exit(pytc())
