"""Write constraints.txt: every package the installed pytc-service needs at run time, pinned to the
version installed in this environment (the one the tests ran in). ``make lock`` runs it; the Docker
image installs with ``-c constraints.txt``.

Only the runtime closure is pinned: the project's dependencies, theirs, and so on (extras followed,
environment markers evaluated here), never the test extra's own packages. torch is pinned without
its local label (``2.13.0``, not ``2.13.0+cpu``) so that the same file serves the CPU and the CUDA
builds, whichever index the image takes torch from.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

PROJECT = "pytc-service"
HEADER = """\
# The versions pytc-service was tested with: every runtime dependency, direct or not, pinned.
# The Docker image installs with `pip install -c constraints.txt`. Regenerate with `make lock`
# (deploy/lock.py) in the environment the tests passed in; pyproject.toml keeps the ranges.
"""


def _wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in extras | {""})


def runtime_closure(project: str = PROJECT) -> dict[NormalizedName, str]:
    """Installed version of every distribution ``project`` needs at run time, by normalized name."""
    pins: dict[NormalizedName, str] = {}
    todo: list[tuple[str, set[str]]] = [(project, set())]
    done: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), frozenset(extras))
        if key in done:
            continue
        done.add(key)
        dist = metadata.distribution(name)
        if key[0] != canonicalize_name(project):
            pins[key[0]] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if _wanted(req, extras):
                todo.append((req.name, set(req.extras)))
    return pins


def constraints_text(pins: dict[NormalizedName, str]) -> str:
    lines = []
    for name, version in sorted(pins.items()):
        if name == "torch":
            version = Version(version).public  # the index decides the build: +cpu, +cu128, ...
        lines.append(f"{name}=={version}")
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the constraints file to write, e.g. constraints.txt")
    args = parser.parse_args(argv)
    try:
        pins = runtime_closure()
    except metadata.PackageNotFoundError as err:
        print(f"error: {err.args[0]} is not installed here; run `make venv` first", file=sys.stderr)
        return 2
    args.out.write_text(constraints_text(pins))
    print(f"{args.out}: {len(pins)} packages pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
