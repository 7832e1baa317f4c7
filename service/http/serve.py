"""``pytc-serve``: the REST service under uvicorn, configured by ``PYTC_*`` (flags override).

One process: the API, the job manager threads and, without ``PYTC_SCHEDULER``, the scheduler of an
embedded local Dask cluster whose workers are child processes. SIGTERM/SIGINT stop it cleanly
(running jobs are queued again); after ``kill -9`` a restart picks every unfinished job up.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytc-serve", description="The pytc REST service.")
    parser.add_argument("--host", help="listen address (default: $PYTC_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: $PYTC_PORT, else 8000)")
    parser.add_argument("--state-dir", type=Path, help="job database folder (default: $PYTC_STATE_DIR)")
    parser.add_argument(
        "--scheduler", help="Dask scheduler address (default: $PYTC_SCHEDULER, else embedded)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", default=None, help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytc-serve`` console script."""
    import uvicorn

    from service.http.app import create_app
    from service.settings import Settings

    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {key: value for key, value in vars(args).items() if value is not None}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,  # event streams would hold a shutdown until it
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
