"""``pytc-serve``: the REST service under uvicorn, configured by ``PYTC_*`` (flags override).

One process: the API, the job manager threads and, without ``PYTC_SCHEDULER``, the scheduler of an
embedded local Dask cluster whose workers are child processes. SIGTERM/SIGINT stop it cleanly
(running jobs are queued again); after ``kill -9`` a restart picks every unfinished job up.

The command line is parsed before anything heavy is imported: ``--help`` and ``--version`` answer
at once, where the app (FastAPI, the engines' documents, Dask) takes seconds to import. Settings
and the job database are checked before uvicorn starts, so that a wrong value or a database this
version cannot use ends in one line naming it, not in a traceback from the app's start-up.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.version import add_version_flag

if TYPE_CHECKING:
    from pydantic import ValidationError

EXIT_OK, EXIT_SETTINGS = 0, 2
LOG_LEVELS = ("debug", "info", "warning", "error")

EPILOG = """\
settings: each flag above has a PYTC_* variable (PYTC_HOST, PYTC_PORT, PYTC_STATE_DIR, ...); a flag
given wins. Also read from the environment:
  PYTC_DATA_ROOTS    `:`-separated folders every path of a job must resolve inside
                     (default: the current directory)
  PYTC_API_TOKENS    `,`-separated bearer tokens; when set, every /v1 call needs
                     `Authorization: Bearer <token>`, and each token sees its own jobs only
                     (default: unset, an open API)
  PYTC_ADMIN_TOKENS  `,`-separated tokens that see and cancel every job (default: none)
  PYTC_MAX_CONCURRENT_JOBS, PYTC_LOCAL_WORKERS   jobs run at once (default 2); workers of the
                     embedded cluster (default 1)

the API: http://HOST:PORT/docs (interactive) and /redoc describe every call; `pytc submit JOB.yaml
--wait` (with PYTC_URL and PYTC_TOKEN) is its client. Jobs live in PYTC_STATE_DIR/jobs.sqlite3 and
survive a restart of the service.

exit codes:
  0  stopped by SIGTERM or Ctrl-C (running jobs are queued again and go on at the next start)
  2  an invalid setting, or a job database this version cannot use or that is damaged
     (the message names it and says what to do)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytc-serve",
        description="The pytc REST service: jobs submitted over HTTP, run on Dask.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_flag(parser)
    parser.add_argument("--host", help="listen address (default: $PYTC_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: $PYTC_PORT, else 8000)")
    parser.add_argument(
        "--state-dir", type=Path, help="job database folder (default: $PYTC_STATE_DIR, else ./.pytc)"
    )
    parser.add_argument(
        "--scheduler", help="Dask scheduler address (default: $PYTC_SCHEDULER, else an embedded cluster)"
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="(default: $PYTC_LOG_LEVEL, else info)")
    parser.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log every request (default: $PYTC_ACCESS_LOG)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytc-serve`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)  # before any import below: --help stays instant
    except SystemExit as stop:  # --help, --version, or a usage error (argparse exits 2)
        return stop.code if isinstance(stop.code, int) else EXIT_SETTINGS

    from pydantic import ValidationError

    from service.errors import JobDatabaseError
    from service.settings import Settings
    from service.store.sqlite import Database

    overrides: dict[str, Any] = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        return _settings_failure(err, overrides)
    if settings.log_level.lower() not in LOG_LEVELS:  # the flag has choices, the variable does not
        print(f"pytc-serve: error: PYTC_LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, "
              f"got {settings.log_level!r}", file=sys.stderr)  # fmt: skip
        return EXIT_SETTINGS
    try:
        database = Database(settings.database_path)  # brought to this version's schema, or refused
        try:
            database.check()  # every page reads back: a damaged file is named now, not by a 500 later
        finally:
            database.close()
    except JobDatabaseError as err:
        print(f"pytc-serve: error: {err}", file=sys.stderr)
        return EXIT_SETTINGS
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    from service.http.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,  # event streams would hold a shutdown until it
    )
    return EXIT_OK


def _settings_failure(err: ValidationError, flags: dict[str, Any]) -> int:
    """One line per wrong setting, named as it was given: the flag, else the variable."""
    for problem in err.errors(include_url=False):
        name = str(problem["loc"][0]) if problem["loc"] else ""
        where = f"--{name.replace('_', '-')}" if name in flags else f"PYTC_{name.upper()}"
        message = problem["msg"].removeprefix("Value error, ")
        print(f"pytc-serve: error: {where}: {message}, got {problem.get('input')!r}", file=sys.stderr)
    return EXIT_SETTINGS


if __name__ == "__main__":
    raise SystemExit(main())
