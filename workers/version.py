"""The installed package's version, and the ``--version`` flag every console script carries.

Here, at the bottom of the packages that have commands (``pytc-worker`` lives in :mod:`workers`,
``pytc`` and ``pytc-serve`` in :mod:`service`), so that the three print the same line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

DISTRIBUTION = "pytc-service"


def package_version() -> str:
    """The installed distribution's version; ``0+unknown`` in a source tree that was never installed."""
    # Imported here: importlib.metadata costs 0.1 s, which only --version and the output records pay.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def version_line() -> str:
    """What ``--version`` prints: ``pytc-service 0.1.0``."""
    return f"{DISTRIBUTION} {package_version()}"


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_line` and exit 0. Unlike argparse's own ``version``
    action, the version is looked up only when the flag is given, so building a parser stays free."""

    def __init__(
        self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None
    ) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help=help or "print the version (pytc-service X.Y.Z) and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(version_line())
        parser.exit()


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=VersionAction)
