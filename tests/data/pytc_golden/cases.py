"""The golden cases of ``cases.yaml``: shared by ``make_golden.py`` (upstream PyTC) and the test
(``pytc run --pytc-config``), so that both run each case from the same files and overrides."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "pytc_configs" / "configs"


@dataclass(frozen=True)
class Case:
    name: str
    files: tuple[Path, ...]  # base, then the experiment if any
    overrides: tuple[str, ...]  # trailing KEY VALUE ..., as PyTC's main.py takes them
    upstream: bool  # PyTC's own config files (else a hand-made file beside this one)
    own: tuple[str, ...] = ()  # the case's overrides beyond the common ones (docs/pytc.md's column)
    drawn: bool = False  # ``weights: drawn``: float weights from draw_state, not stored

    @property
    def label(self) -> tuple[str, str]:
        """(base, experiment) as docs/pytc.md names them."""
        root = CONFIGS if self.upstream else HERE
        names = [str(f.relative_to(root)) for f in self.files]
        return names[0], names[1] if len(names) > 1 else "-"


def common_overrides() -> list[str]:
    """The overrides every upstream pair is given (``common:``), as KEY VALUE ..."""
    spec = yaml.safe_load((HERE / "cases.yaml").read_text())
    return [str(v) for pair in spec["common"] for v in pair]


def load_cases() -> list[Case]:
    spec = yaml.safe_load((HERE / "cases.yaml").read_text())
    common = common_overrides()
    cases = []
    for entry in spec["cases"]:
        upstream = not (HERE / entry["base"]).exists()  # else a hand-made file beside this one
        root = CONFIGS if upstream else HERE
        files = tuple(root / entry[k] for k in ("base", "experiment") if k in entry)
        own = ["MODEL.FILTERS", str(entry["filters"])] if "filters" in entry else []
        own += [str(v) for pair in entry.get("overrides", []) for v in pair]
        # a key the case overrides itself replaces the common one (yacs refuses a str where the
        # config holds a list, e.g. barcode's INFERENCE.IMAGE_NAME)
        mine = set(own[::2])
        pairs = zip(common[::2], common[1::2], strict=True)
        kept = [item for pair in pairs if pair[0] not in mine for item in pair]
        overrides = [*kept, *own] if upstream else own
        drawn = entry.get("weights", "stored") == "drawn"
        cases.append(Case(entry["name"], files, tuple(overrides), upstream, tuple(own), drawn))
    return cases


def draw_state(shapes: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    """Float weights for ``weights: drawn`` cases, from each key alone (seed: crc32 of the key), so
    that golden.npz need not hold them (SwinUNETR's smallest is 5.1 M values): PyTorch's default
    bound ``1 / sqrt(fan_in)`` for tensors of 2+ dimensions (``fan_in``: all but the first),
    norm statistics and 1-D scales as ``make_golden.randomise_norms`` draws them, other 1-D tensors
    (biases) within +-0.2; float16 values, as stored weights are. ``shapes``: key -> (shape, dtype)."""
    state = {}
    for key, (shape, dtype) in shapes.items():
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var" or (len(shape) == 1 and leaf == "weight"):
            low, high = 0.5, 1.5
        elif leaf == "running_mean":
            low, high = -0.3, 0.3
        elif len(shape) <= 1:
            low, high = -0.2, 0.2
        else:
            bound = 1.0 / float(np.sqrt(np.prod(shape[1:])))
            low, high = -bound, bound
        state[key] = rng.uniform(low, high, shape).astype(np.float16).astype(dtype)
    return state


def unstore(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``store``'s inverse: each case's state dict under ``<case>/state/``, drawn weights drawn
    again (``drawn/<owner>``: their keys, shapes and dtypes as JSON)."""
    arrays = {k: v for k, v in stored.items() if not k.startswith(("weights/", "drawn/"))}
    for key in [k for k in stored if k.endswith("/weights") and not k.startswith(("weights/", "drawn/"))]:
        name, owner = key.split("/")[0], str(stored[key])
        del arrays[key]
        prefix = f"weights/{owner}/"
        for k, v in stored.items():
            if k.startswith(prefix):
                full = v.astype(np.float32) if v.dtype == np.float16 else v
                arrays[f"{name}/state/{k[len(prefix) :]}"] = full
        if f"drawn/{owner}" in stored:
            shapes = {
                k: (tuple(shape), dtype) for k, shape, dtype in json.loads(str(stored[f"drawn/{owner}"]))
            }
            arrays.update({f"{name}/state/{k}": v for k, v in draw_state(shapes).items()})
    return arrays
