"""Headless Chromium for tests: Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs
them where missing: the ``browser`` target), driven by Selenium with both paths given, so nothing
is downloaded."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
T = TypeVar("T")
SAVED: list[Path] = []  # every screenshot of this run, listed at its end (tests/integration/conftest.py)


@contextlib.contextmanager
def chromium(downloads: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium; a missing browser is an error naming the install step, never a skip."""
    binary = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    driver_path = DRIVER if Path(DRIVER).exists() else shutil.which("chromedriver")
    assert binary and driver_path, (
        "no chromium/chromedriver: run `make browser` (apt-get install chromium chromium-driver)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--enable-unsafe-swiftshader", f"--user-data-dir={downloads / 'profile'}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(probe: Callable[[], T], timeout_s: float = 60.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = probe()
            if last:
                return last
        time.sleep(0.25)
    raise TimeoutError(f"waited {timeout_s} s for {what or probe}: last {last!r}")


def screenshot(driver: webdriver.Chrome, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    SAVED.append(path)
    return path
