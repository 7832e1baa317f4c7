"""The browser tests' screenshots: their paths (under each test's tmp folder) are listed at the end
of the run, so a ``make test`` log says where to look, captured output or not."""

from __future__ import annotations

import sys
from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    browser = sys.modules.get("tests.integration.browser")
    saved = getattr(browser, "SAVED", [])
    if saved:
        terminalreporter.section("screenshots kept")
        for path in saved:
            terminalreporter.write_line(str(path))
