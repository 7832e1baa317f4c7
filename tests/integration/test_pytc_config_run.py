"""``pytc run --pytc-config`` and ``pytc convert``: what a converted PyTC experiment writes, what
is refused by its PyTC key, a PyTC config posted to the service, and PyTC's training checkpoints.

The hand-made ``unet_3d`` experiments of ``tests/data/pytc_golden/`` and their golden weights and
PyTC outputs are used here; the comparison with PyTC's ``Trainer.test`` for every golden case is
``test_pytc_golden.py``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from service.cli import main
from tests.integration.test_pytc_golden import load_golden, pytc_root
from volumes.box import Box
from volumes.open import open_volume

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "pytc_golden"
CASES = ("unet3d-gaussian-tta", "unet3d-bump-min")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden()


def _root(tmp_path: Path, golden: dict[str, np.ndarray], case: str) -> Path:
    return pytc_root(tmp_path, golden, case)


def test_convert_writes_the_document_pytc_run_runs(tmp_path: Path, golden: dict[str, np.ndarray]) -> None:
    root = _root(tmp_path, golden, CASES[0])
    out = tmp_path / "job.yaml"
    argv = ["convert", str(GOLDEN / f"{CASES[0]}.yaml"), "INFERENCE.STRIDE", "[3, 8, 8]", "--inference"]
    assert (
        main([*argv, "--checkpoint", "checkpoint_00001.pth.tar", "-o", str(out), "--data-root", str(root)])
        == 0
    )
    doc = yaml.safe_load(out.read_text())
    assert doc["kind"] == "inference"
    assert doc["input"] == {"path": "data/im.h5", "dataset": "main", "normalize": {"mean": 0.5, "std": 0.5}}
    assert (
        doc["model"]["architecture"] == "unet_3d" and doc["model"]["checkpoint"] == "checkpoint_00001.pth.tar"
    )
    assert doc["window"]["stride"] == [3, 8, 8] and doc["window"]["raw_heads"] == "pytc"
    assert doc["output"]["uint8_rounding"] == "truncate" and doc["output"]["heads"] == [1, 1]


def test_a_key_we_cannot_honour_is_exit_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(GOLDEN / f"{CASES[0]}.yaml")
    assert (
        main(
            [
                "run",
                "--pytc-config",
                config,
                "INFERENCE.DO_EVAL",
                "False",
                "--inference",
                "--data-root",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "INFERENCE.DO_EVAL" in capsys.readouterr().err
    assert main(["convert", config, "MODEL.NOT_A_KEY", "1", "--data-root", str(tmp_path)]) == 2
    assert "MODEL.NOT_A_KEY" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_post_a_pytc_config_to_the_service(tmp_path: Path, golden: dict[str, np.ndarray]) -> None:
    """``POST /v1/jobs`` with the YAML texts: the job runs as the inference it converts to, with
    PyTC's output, for each volume it names (an HDF5 file and a TIFF stack of the same image: PyTC's
    vol0 and vol1); a key that cannot be honoured is a 422 naming it."""
    import httpx
    import tifffile

    from tests.integration.service_fixtures import assert_problem, running_service, wait_for_state

    root = _root(tmp_path / "data-root", golden, CASES[0])
    tifffile.imwrite(root / "data" / "im.tif", golden["image"], photometric="minisblack")
    text = (GOLDEN / f"{CASES[0]}.yaml").read_text()
    doc = {"kind": "pytc_config", "base": text, "inference": True, "checkpoint": "checkpoint_00001.pth.tar"}
    doc["overrides"] = ["INFERENCE.IMAGE_NAME", "im.h5@im.tif"]
    with running_service(root, tmp_path / "state") as service:
        refused = httpx.post(
            f"{service.url}/v1/jobs", json={**doc, "overrides": ["INFERENCE.UNPAD", "False"]}
        )
        assert "INFERENCE.UNPAD" in assert_problem(refused, 422)["detail"]
        posted = httpx.post(f"{service.url}/v1/jobs", json=doc, timeout=60)
        assert posted.status_code == 202, posted.text
        done = wait_for_state(service.url, posted.json()["id"], ("succeeded", "failed"), timeout_s=240)
        assert done["state"] == "succeeded", done
        assert done["kind"] == "pytc_config" and done["result"]["converted_kind"] == "inference"
        assert [one["dataset"] for one in done["result"]["volumes"]] == ["vol0", "vol1"]
    for dataset in ("vol0", "vol1"):
        written = open_volume(root / "out" / "result.zarr", dataset)
        np.testing.assert_array_equal(written.read(Box.of_shape(written.shape)), golden[f"{CASES[0]}/output"])


def test_admission_names_pytc_keys(
    tmp_path: Path, golden: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    """An option the architecture's builder refuses is refused at admission naming its PyTC key;
    a volume PyTC would stretch (not uint8) names DATASET.NORMALIZE_RANGE."""
    root = _root(tmp_path, golden, CASES[0])
    config = str(GOLDEN / f"{CASES[0]}.yaml")
    flags = ["--inference", "--checkpoint", "checkpoint_00001.pth.tar", "--data-root", str(root)]
    assert main(["run", "--pytc-config", config, "MODEL.BLOCK_TYPE", "residual_xx", *flags]) == 2
    assert "error: MODEL.BLOCK_TYPE" in capsys.readouterr().err
    # PyTC's default MODEL.BLOCKS has four counts; its efficientnet backbone reads five
    efficientnet = ["MODEL.ARCHITECTURE", "fpn_3d", "MODEL.BACKBONE", "efficientnet"]
    five = ["MODEL.FILTERS", "[4, 6, 8, 10, 12]", "MODEL.ISOTROPY", "[False, False, True, True, True]"]
    assert main(["run", "--pytc-config", config, *efficientnet, *five, *flags]) == 2
    assert "error: MODEL.BLOCKS" in capsys.readouterr().err
    with h5py.File(root / "data" / "float.h5", "w") as f:
        f.create_dataset("main", data=golden["image"].astype(np.float32))
    assert main(["run", "--pytc-config", config, "INFERENCE.IMAGE_NAME", "float.h5", *flags]) == 2
    assert "DATASET.NORMALIZE_RANGE" in capsys.readouterr().err
    assert not (root / "out").exists()


@pytest.mark.slow
def test_a_training_config_trains_and_writes_pytcs_checkpoints(
    tmp_path: Path, golden: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --inference the config is a training job: PyTC's checkpoint names and keys (its
    ``iteration``, ``state_dict`` with the architecture's PyTC keys, ``optimizer``,
    ``lr_scheduler``), and the PyTC defaults our trainer approximates said on stderr."""
    (tmp_path / "data").mkdir()
    image = golden["image"]
    for name, data in (("train.h5", image), ("label.h5", (image > 128).astype(np.uint8))):
        with h5py.File(tmp_path / "data" / name, "w") as f:
            f.create_dataset("main", data=data)
    overrides = [
        "DATASET.LABEL_NAME",
        "label.h5",
        "SOLVER.ITERATION_TOTAL",
        "4",
        "SOLVER.ITERATION_SAVE",
        "2",
    ]
    config = str(GOLDEN / f"{CASES[0]}.yaml")
    assert main(["run", "--pytc-config", config, *overrides, "--data-root", str(tmp_path)]) == 0
    assert "MODEL.WEIGHT_OPT" in capsys.readouterr().err
    saved = sorted(p.name for p in (tmp_path / "out").glob("checkpoint_*.pth.tar"))
    assert saved == ["checkpoint_00002.pth.tar", "checkpoint_00004.pth.tar"]
    state = torch.load(tmp_path / "out" / saved[-1], map_location="cpu", weights_only=True)
    assert state["iteration"] == 4 and {"optimizer", "lr_scheduler"} <= state.keys()
    prefix = f"{CASES[0]}/state/"
    assert set(state["state_dict"]) == {k[len(prefix) :] for k in golden if k.startswith(prefix)}
