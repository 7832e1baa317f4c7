"""A PyTC 2D architecture through ``pytc run``: windows of z = 1 over a 3D volume, each slice run
through the 2D network as PyTC runs it (the window's z axis squeezed before the forward and
restored after), blended by the same exact engine as every 3D job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
import zarr

from models.pytc.registry import ARCHITECTURES
from service.cli import main
from tests.helpers import reference_blend
from volumes.box import Box
from volumes.open import open_volume
from workers.inference.job import WindowSpec

PATCH, STRIDE = (1, 33, 33), (1, 16, 16)
CONFIG: dict[str, Any] = {
    "in_channel": 1, "out_channel": 3, "filters": [16, 16, 32, 32], "act_mode": "leaky_relu",
    "norm_mode": "gn", "pad_mode": "replicate", "block_type": "residual",
}  # fmt: skip


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = (np.random.default_rng(0).random((5, 40, 44)) * 255).astype(np.uint8)
    zarr.open_group(tmp_path / "em.zarr", mode="w").create_array("raw", data=data, chunks=(2, 16, 16))
    torch.manual_seed(3)
    model = ARCHITECTURES["unet_2d"](CONFIG)
    state = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    torch.save(
        {"iteration": 100, "state_dict": state}, tmp_path / "checkpoint_00100.pth.tar"
    )  # as PyTC saves
    return tmp_path


@pytest.mark.slow
def test_unet_2d_runs_slice_by_slice_as_pytc(root: Path) -> None:
    doc = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"architecture": "unet_2d", "config": CONFIG, "checkpoint": "checkpoint_00100.pth.tar"},
        "window": {"patch_size": list(PATCH), "stride": list(STRIDE), "blending": "gaussian",
                   "batch_size": 4},
        "output": {"path": "out.zarr", "dataset": "pred", "heads": [3], "activation": ["sigmoid"],
                   "chunks": [2, 16, 16]},
        "compute": {"block_shape": [2, 16, 16]},
    }  # fmt: skip
    (root / "job.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", str(root / "job.yaml"), "--data-root", str(root), "--quiet"]) == 0
    volume = open_volume(root / "out.zarr", "pred")
    out = volume.read(Box.of_shape(volume.shape))

    model = ARCHITECTURES["unet_2d"](CONFIG)
    state = torch.load(root / "checkpoint_00100.pth.tar", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.eval()

    def pytc_2d(batch: np.ndarray) -> np.ndarray:  # PyTC: squeeze z, a 2D forward, restore z
        with torch.no_grad():
            y = torch.sigmoid(model(torch.from_numpy(batch)[:, :, 0]))
        return y[:, :, None].numpy()

    data = zarr.open_array(root / "em.zarr" / "raw")[:].astype(np.float32) / 255
    expected = reference_blend(data, (0, 0, 0), data.shape, WindowSpec(PATCH, STRIDE, "gaussian"), pytc_2d, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
