"""Console-script entry points (``pytc``, ``pytc-serve``) that import their command only when run.

Dask's nanny starts each embedded worker with multiprocessing's ``spawn``, which re-imports the
parent's main script in the child. With the script importing :mod:`service.cli` at its top, every
worker of ``pytc run``'s embedded cluster paid 0.4 s (and of ``pytc-serve``'s more) to import a
command it never runs, before it could register; importing it here, inside the call, costs the
worker nothing.

``pytc`` starts with the garbage collector paused; the command says where its start-up ends and
the collector runs again (:func:`service.cli.start_up_done`).
"""

from __future__ import annotations

import gc


def pytc() -> int:
    gc.disable()  # for start-up only: see service.cli.start_up_done
    from service.cli import main

    status = main()
    # Nothing made from here on needs collecting: exempt every object from the collections the
    # interpreter runs while it shuts down (0.3 s of a 0.4 s exit with torch imported).
    gc.freeze()
    return status


def pytc_serve() -> int:
    from service.http.serve import main

    return main()
