"""What every ``pytc`` command shares: exit codes, printing a spec error, argument types."""

from __future__ import annotations

import argparse
import sys

from service.errors import SpecError

EXIT_OK, EXIT_FAILED, EXIT_SPEC, EXIT_INTERRUPTED = 0, 1, 2, 130


def spec_failure(err: SpecError) -> int:
    """Every problem of an invalid job, one per line naming its field; exit 2."""
    for field, reason in err.errors:
        print(f"error: {field}: {reason}" if field else f"error: {reason}", file=sys.stderr)
    return EXIT_SPEC


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value
