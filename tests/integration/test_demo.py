"""``make demo`` (``python -m service.demo``) end to end with the shipped model: two segmentation
jobs with the demo's inference as their stage, through the real ``pytc run``, and the quality it
prints against the generator's truth, recomputed here and held to thresholds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.demo import main, quality, score


@pytest.mark.slow
def test_demo_segments_mitochondria_and_cells_and_prints_their_quality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTC_STATE_DIR", str(tmp_path / ".pytc"))
    root = tmp_path / "demo"
    assert main(["--dir", str(root)]) == 0
    out = capsys.readouterr().out
    for name in ("mito", "cells"):  # the documents kept for a reader: an inference stage each
        doc = yaml.safe_load((root / f"demo-{name}.yaml").read_text())
        assert doc["kind"] == "segmentation" and doc["inference"]["output"]["path"] == "pred.zarr"
    dice, _ = score(root)
    q = quality(root)
    # The figures of the shipped model (models/weights/demo_unet3d.pth.tar) on the demo volume:
    # Dice 0.974, AP-75 0.989, mitochondria adapted Rand 0.0098, cells 0.0886 (VOI 0.032 + 0.143).
    assert dice >= 0.97
    assert q.mito.ap_75 is not None and q.mito.ap_75 >= 0.95
    assert q.mito.adapted_rand_error is not None and q.mito.adapted_rand_error <= 0.02
    assert q.cells.adapted_rand_error is not None and q.cells.adapted_rand_error <= 0.12
    assert q.cells.voi_split is not None and q.cells.voi_merge is not None
    assert q.cells.voi_split <= 0.1 and q.cells.voi_merge <= 0.25
    assert f"mitochondria foreground Dice {dice:.3f}" in out
    assert re.search(
        rf"AP-75 {q.mito.ap_75:.3f}, AP-50 \S+, adapted Rand error {q.mito.adapted_rand_error:.4f}", out
    )
    assert f"cells: {q.cells.pred_objects} found, {q.cells.gt_objects} true; adapted Rand error " in out
    assert f"VOI split {q.cells.voi_split:.3f} merge {q.cells.voi_merge:.3f}" in out
