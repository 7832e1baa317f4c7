"""A watershed segmentation job through ``pytc run`` (the embedded Dask cluster, the kind's stages):
the labels are the blockwise decoder's, equal to the whole-volume one with a halo that covers it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from scipy import ndimage

from volumes.labels.decoders import Decoder
from volumes.labels.whole import decode_in_memory, sequential

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_pytc_run_binary_watershed(tmp_path: Path) -> None:
    field = ndimage.gaussian_filter(np.random.default_rng(3).random((16, 48, 48)), (1, 2, 2))
    pred = ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)[None]
    zarr.open_group(tmp_path / "pred.zarr", mode="w").create_array("p", data=pred, chunks=(1, 8, 16, 16))
    doc = {
        "kind": "segmentation",
        "input": {"path": "pred.zarr", "dataset": "p"},
        "decoder": {
            "name": "binary_watershed",
            "thres1": 0.7,
            "thres2": 0.45,
            "thres_small": 8,
            "seed_thres": 4,
        },
        "output": {"path": "seg.zarr", "dataset": "seg", "chunks": [8, 16, 16]},
        "compute": {"block_shape": [8, 16, 16], "halo": [16, 48, 48]},
    }
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "service", "run", "seg.yaml", "--data-root", str(tmp_path)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    decoder = Decoder("binary_watershed", (0.7, 0.45), 8, "background", 26, None, 4, (16, 48, 48))
    got = zarr.open_array(tmp_path / "seg.zarr" / "seg" / "0", mode="r")[:]  # level 0 of the label image
    np.testing.assert_array_equal(got, sequential(decode_in_memory(pred, decoder)))
    assert got.max() > 3
