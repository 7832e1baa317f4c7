"""``pytc run`` over a TileDataset JSON gives what it gives over a zarr holding the same voxels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from tests.integration.test_pytc_run import TinyNet, job_doc, read_output, run
from volumes.open import open_volume

TILE = 16
MISSING = (5, 1, 2)  # (z, row, column): its file is left out and reads as 0


def write_tiles(root: Path, data: np.ndarray) -> np.ndarray:
    """``data`` as PNG tiles named from [1, 1], and the volume they hold (the missing tile zeroed)."""
    held = data.copy()
    depth, height, width = data.shape
    for z, row, column in np.ndindex(depth, -(-height // TILE), -(-width // TILE)):
        place = (z, slice(row * TILE, (row + 1) * TILE), slice(column * TILE, (column + 1) * TILE))
        if (z, row, column) == MISSING:
            held[place] = 0
            continue
        path = root / "tiles" / f"{z:03d}" / f"{row + 1}_{column + 1}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data[place]).save(path)
    meta = {
        "image": [f"tiles/{z:03d}/{{row}}_{{column}}.png" for z in range(depth)],
        "depth": depth,
        "height": height,
        "width": width,
        "tile_size": TILE,
        "tile_st": [1, 1],
        "tile_ratio": 1,
        "dtype": "uint8",
    }
    (root / "em.json").write_text(json.dumps(meta))
    return held


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = (np.random.default_rng(0).random((14, 40, 44)) * 255).astype(np.uint8)
    held = write_tiles(tmp_path, data)
    zarr.open_group(tmp_path / "em.zarr", mode="w").create_array("raw", data=held, chunks=(8, 16, 16))
    torch.jit.script(TinyNet().eval()).save(str(tmp_path / "net.pt"))
    return tmp_path


def test_run_over_tiles_equals_run_over_the_same_zarr(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pad = {"window.pad_size": [1, 4, 4]}
    assert run(root, job_doc(**pad, **{"output.path": "from_zarr.zarr"}))[0] == 0
    tiles_input = {"input": {"path": "em.json"}, "output.path": "from_tiles.zarr"}
    assert run(root, job_doc(**pad, **tiles_input))[0] == 0
    expected, got = read_output(root / "from_zarr.zarr"), read_output(root / "from_tiles.zarr")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert open_volume(root / "from_tiles.zarr", "pred").attrs["pytc"]["complete"] is True
    code, err = run(root, job_doc(**{"input": {"path": "em.json", "dataset": "raw"}}), capsys)
    assert code == 2 and "error: input.dataset" in err and "'raw'" in err, err
