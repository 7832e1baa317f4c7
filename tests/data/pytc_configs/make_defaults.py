"""Regenerate ``service/pytc/defaults_v1.yaml``: PyTC v1's default configuration tree, as yacs holds it.

Run in a scratch venv holding ``yacs`` and ``pyyaml`` (not this project's), from the root of
PyTC's v1.0 tree (``git -C <mirror> archive v1.0 | tar -x -C /tmp/pytc-v1``)::

    python make_defaults.py > <this repository>/service/pytc/defaults_v1.yaml

It imports ``connectomics/config/defaults.py`` alone (not the package, which needs torch), calls
``get_cfg_defaults()`` and dumps the tree. Tuples become lists: yacs lets the two replace each other.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

HEADER = """\
# PyTorch Connectomics v1 default configuration tree: connectomics/config/defaults.py, branch v1.0,
# commit {commit}, as yacs {yacs} holds it after get_cfg_defaults().
# `pytc convert` merges PyTC configs over it with yacs's rules (service/pytc/config.py).
# Made by tests/data/pytc_configs/make_defaults.py, run with yacs in a scratch venv outside this
# repository on PyTC's own file; tuples are written as lists (yacs lets one replace the other).
# Data, not code: regenerate it, do not edit it.
"""


def plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [plain(v) for v in node]
    return node


def main() -> None:
    import yacs  # type: ignore[import-not-found]
    import yaml

    spec = importlib.util.spec_from_file_location("defaults", "connectomics/config/defaults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    version = getattr(yacs, "__version__", "0.1.8")
    text = yaml.safe_dump(
        plain(module.get_cfg_defaults()), sort_keys=False, default_flow_style=None, width=100
    )
    sys.stdout.write(
        HEADER.format(commit=commit or "7ec3284e3eb59142dc0af637b761697a1c420985", yacs=version) + text
    )


if __name__ == "__main__":
    main()
