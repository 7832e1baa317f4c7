"""``pytc run --pytc-config`` against PyTorch Connectomics v1's own ``Trainer.test``, for every case
of ``tests/data/pytc_golden/cases.yaml``: each PyTC v1 config pair that converts, plus two hand-made
``unet_3d`` experiments.

``golden.npz`` holds, for each case, PyTC's output on a small volume with a randomly initialised
model of the config's architecture (norm statistics drawn at random too), made once with upstream
PyTC on a CPU (``make_golden.py`` says how). Here the same volume, the same weights saved as PyTC
saves them, the same config files and the same trailing ``KEY VALUE`` overrides go through our
``pytc run``: uint8 outputs must be PyTC's bit for bit, float outputs within 1e-5. The outcome of
each case is also the "golden Trainer.test" column of docs/pytc.md's table, checked row by row.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
import torch

from service.cli import main
from volumes.box import Box
from volumes.open import open_volume

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "pytc_golden"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "pytc.md"


def _cases_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pytc_golden_cases", GOLDEN / "cases.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


CASES = {case.name: case for case in _cases_module().load_cases()}


def load_golden() -> dict[str, np.ndarray]:
    """Every case's input, state dict (``<case>/state/<key>``, float32) and PyTC's output."""
    with np.load(GOLDEN / "golden.npz") as stored:
        return _cases_module().unstore({key: stored[key] for key in stored.files})


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden()


def pytc_root(root: Path, golden: dict[str, np.ndarray], case: str) -> Path:
    """The folder PyTC ran the case in: ``data/im.h5`` and ``checkpoint_00001.pth.tar``."""
    (root / "data").mkdir(parents=True)
    with h5py.File(root / "data" / "im.h5", "w") as f:
        f.create_dataset("main", data=golden["image"])
    prefix = f"{case}/state/"
    state = {k[len(prefix) :]: torch.from_numpy(v) for k, v in golden.items() if k.startswith(prefix)}
    assert state, case
    torch.save(
        {"iteration": 1, "state_dict": state, "optimizer": {}, "lr_scheduler": {}},
        root / "checkpoint_00001.pth.tar",
    )
    return root


def outcome(ours: np.ndarray, theirs: np.ndarray) -> str:
    """The table's words: ``equal`` (uint8 bit for bit, float within 1e-5), else the largest
    difference and how many values differ."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (ours.shape, theirs.shape)
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    tolerance = 0.0 if theirs.dtype == np.uint8 else 1e-5
    if diff.max() <= tolerance:
        return "equal"
    return f"max difference {diff.max():g} ({int((diff > tolerance).sum())} values)"


def documented() -> dict[tuple[str, str], tuple[str, str]]:
    """docs/pytc.md's golden table: (base, experiment) -> (overrides, golden Trainer.test)."""
    rows = {}
    lines = DOCS.read_text().split("## Same output as PyTC", 1)[1].split("\n## ", 1)[0].splitlines()
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].endswith(".yaml`"):
            rows[(cells[0].strip("`"), cells[1].strip("`"))] = (cells[3], cells[4])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_pytc_run_equals_pytcs_trainer_test(
    tmp_path: Path,
    golden: dict[str, np.ndarray],
    name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no PYTC_CHANNELS_LAST=0: the converted job asks for PyTC's contiguous layout itself
    monkeypatch.delenv("PYTC_CHANNELS_LAST", raising=False)
    case = CASES[name]
    root = pytc_root(tmp_path, golden, name)
    argv = ["run", "--pytc-config", *map(str, case.files), *case.overrides, "--inference"]
    argv += ["--checkpoint", "checkpoint_00001.pth.tar", "--data-root", str(root), "--quiet"]
    assert main(argv) == 0
    printed = Path(capsys.readouterr().out.strip())  # out/result.zarr, out/<volume>.zarr (DO_SINGLY)
    assert printed.parent == root / "out" and printed.suffix == ".zarr", printed
    written = open_volume(printed, "vol0")
    got = outcome(written.read(Box.of_shape(written.shape)), golden[f"{name}/output"])
    assert got == documented()[case.label][1], (case.label, got)


def test_the_golden_table_is_the_cases(golden: dict[str, np.ndarray]) -> None:
    """One row per case, naming the case's own overrides (beyond the common ones); a golden for
    each case."""
    rows = documented()
    assert set(rows) == {case.label for case in CASES.values()}
    for case in CASES.values():
        assert f"{case.name}/output" in golden, case.name
        own = case.own
        expected = "common" + "".join(f", `{k} {v}`" for k, v in zip(own[::2], own[1::2], strict=True))
        assert rows[case.label][0] == (expected if case.upstream else "-"), case.label
