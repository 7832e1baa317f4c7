"""Hostile files end a job as one clean line: an input chunk that decodes past its size fails the
job naming the array and the chunk (``pytc run`` exits 1, no traceback), a model archive that
expands past its bound is refused before torch reads it (exit 2), and a model too slow to check is
a 422 from the service, whose worker then runs the next job."""

from __future__ import annotations

import time
import warnings
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import zarr
from zarr.codecs import ZstdCodec

from tests.integration.service_fixtures import assert_problem, dumps, running_service, wait_for_state
from tests.integration.test_clean_errors import one_clean_line, pytc_run
from tests.unit.volumes.bombs import zstd_rle_frame

pytestmark = pytest.mark.slow


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _doc(input_name: str, output: str) -> dict[str, object]:
    return {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": input_name},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": [4, 16, 16], "stride": [4, 16, 16], "batch_size": 2},
        "output": {"path": output, "dataset": "pred", "chunks": [8, 16, 16]},
        "compute": {"block_shape": [8, 16, 16]},
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bombs")
    group = zarr.open_group(str(folder / "em.zarr"), mode="w", zarr_format=3)
    for name in ("good", "bomb"):
        array = group.create_array(
            name, shape=(16, 32, 32), chunks=(8, 16, 16), dtype="uint8", compressors=ZstdCodec()
        )
        array[:] = np.random.default_rng(0).integers(0, 255, (16, 32, 32), dtype=np.uint8)
    # a 2 KiB chunk holding a 1 GiB zstd frame with no declared size (as a streaming writer leaves it)
    (folder / "em.zarr/bomb/c/1/1/0").write_bytes(zstd_rle_frame(2**30))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Identity()).save(str(folder / "net.pt"))
    return folder


def test_a_bomb_chunk_fails_the_job_naming_the_array_and_chunk(root: Path) -> None:
    line = one_clean_line(pytc_run(root, _doc("bomb", "out_bomb.zarr")), 1, "error: the job failed: block ")
    assert "em.zarr dataset 'bomb' chunk 'bomb/c/1/1/0'" in line, line
    assert "can decode to 1,073,741,824 bytes; a chunk of it holds 2,048 bytes" in line, line


def test_the_same_job_on_good_chunks_runs(root: Path) -> None:
    proc = pytc_run(root, _doc("good", "out_good.zarr"))
    assert proc.returncode == 0, proc.stderr


def test_a_model_zip_bomb_is_refused_before_any_worker_loads_it(root: Path) -> None:
    """80 MiB of zeros in an 80 KB TorchScript-named archive: refused from its zip directory."""
    with (
        zipfile.ZipFile(root / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("bomb/data/0", "w") as member,
    ):
        for _ in range(80):
            member.write(bytes(2**20))
    doc = {**_doc("good", "out_model_bomb.zarr"), "model": {"torchscript": "bomb.pt"}}
    line = one_clean_line(pytc_run(root, doc), 2, "error: model.torchscript: ")
    assert "bomb.pt is a zip archive of" in line and "more than 100 times its size" in line, line
    assert not (root / "out_model_bomb.zarr").exists()


class Slow(torch.nn.Module):
    """Runs for minutes on any input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(1000000000):
            x = x + 1.0
        return x


def test_a_model_probe_past_its_deadline_is_a_422_and_frees_the_worker(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The service's only worker thread is not held: the probe is killed at its deadline, and the
    next job is checked and runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Slow()).save(str(root / "slow.pt"))
    env = {"PYTC_MODEL_PROBE_TIMEOUT_S": "8", "PYTC_MODEL_CHECK_TIMEOUT_S": "60"}
    with running_service(root, tmp_path_factory.mktemp("state"), **env) as service:
        slow = {**_doc("good", "out_slow.zarr"), "model": {"torchscript": "slow.pt"}}
        start = time.monotonic()
        response = httpx.post(f"{service.url}/v1/jobs", content=dumps(slow), timeout=120)
        body = assert_problem(response, 422)
        assert time.monotonic() - start < 8 + 60, time.monotonic() - start
        assert "took more than 8 s (PYTC_MODEL_PROBE_TIMEOUT_S)" in body["detail"], body
        response = httpx.post(
            f"{service.url}/v1/jobs", content=dumps(_doc("good", "out_after.zarr")), timeout=120
        )
        assert response.status_code == 202, response.text
        assert (
            wait_for_state(service.url, response.json()["id"], ("succeeded", "failed"))["state"]
            == "succeeded"
        )
