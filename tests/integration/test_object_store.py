"""Volumes and jobs in an S3-compatible object store: a real S3 server (moto's, in server mode) on a
free 127.0.0.1 port, started and stopped by these tests; credentials and the endpoint come from the
standard AWS variables, as they would for MinIO or Ceph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import yaml
import zarr

from tests.integration.cluster_fixtures import done_blocks, make_data, write_job
from tests.s3_helpers import s3_server
from volumes.box import Box
from volumes.errors import VolumeNotFoundError
from volumes.ome import put_multiscale
from volumes.open import open_volume
from volumes.output import create_output
from volumes.urls import filesystem, tensorstore_kvstore

BUCKET = "lab"
ROOT_URL = f"s3://{BUCKET}/data"
SHAPE = (8, 64, 96)  # 2 x 2 x 3 blocks of the job's 4 x 32 x 32: small, and enough to kill a run midway
N_BLOCKS = 12
VOXEL, ORIGIN = [40.0, 4.0, 4.0], [400.0, 80.0, 40.0]  # the input's OME placement (nm)


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """The AWS variables of a fresh S3 server with an empty bucket ``lab``, set in this process."""
    with s3_server(BUCKET) as env:
        yield env


def upload(local: Path, url: str) -> None:
    filesystem().put(str(local), url.removeprefix("s3://"), recursive=True)


def read_all(path: str | Path, dataset: str = "pred") -> np.ndarray:
    volume = open_volume(path, dataset)
    return volume.read(Box.of_shape(volume.shape))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_on_s3_reads_as_the_local_copy(s3_env: dict[str, str], tmp_path: Path, zarr_format: int) -> None:
    data = np.random.default_rng(0).integers(0, 60000, (2, 6, 10, 12)).astype(np.uint16)
    out = create_output(
        tmp_path / "v.zarr", "em/raw", f"zarr{zarr_format}", data.shape, "uint16", (3, 4, 5), (40, 4, 4)
    )  # type: ignore[arg-type]
    out.write(Box.of_shape(data.shape), data)
    url = f"{ROOT_URL}/v{zarr_format}.zarr"
    upload(tmp_path / "v.zarr", url)
    volume = open_volume(url, "em/raw")
    assert volume.format == f"zarr{zarr_format}" and volume.shape == data.shape
    np.testing.assert_array_equal(volume.read(Box((0, 1, 2, 3), (2, 4, 5, 6))), data[:, 1:5, 2:7, 3:9])
    assert volume.voxel_size == open_volume(tmp_path / "v.zarr", "em/raw").voxel_size == (40.0, 4.0, 4.0)
    with pytest.raises(VolumeNotFoundError, match="no dataset 'em/other'"):
        open_volume(url, "em/other")
    with pytest.raises(VolumeNotFoundError, match="nothing is stored"):
        open_volume(f"{ROOT_URL}/absent.zarr", "raw")


def test_n5_on_s3_reads_through_tensorstore(s3_env: dict[str, str]) -> None:
    xyz = np.random.default_rng(1).integers(0, 255, (12, 10, 6)).astype(np.uint8)
    url = f"{ROOT_URL}/v.n5/raw"
    meta = {
        "dimensions": list(xyz.shape),
        "blockSize": [5, 5, 4],
        "dataType": "uint8",
        "compression": {"type": "gzip"},
    }
    store = ts.open(
        {"driver": "n5", "kvstore": tensorstore_kvstore(url), "metadata": meta, "create": True}
    ).result()
    store.write(xyz).result()
    volume = open_volume(f"{ROOT_URL}/v.n5", "raw")
    assert volume.format == "n5" and volume.shape == (6, 10, 12)
    np.testing.assert_array_equal(volume.read(Box.of_shape(volume.shape)), xyz.T)


def test_n5_and_precomputed_outputs_in_a_bucket_are_written_and_read_back(s3_env: dict[str, str]) -> None:
    data = np.random.default_rng(2).random((2, 6, 20, 24)).astype(np.float32)
    for fmt, shards in (("n5", None), ("precomputed", (2, 8, 8))):
        url = f"{ROOT_URL}/out-{fmt}"
        out = create_output(
            url, "pred", fmt, data.shape, "float32", (2, 4, 4), (40, 4, 4), {"pytc": {"complete": False}},
            translation=(80.0, 8.0, 4.0), shards=shards,
        )  # type: ignore[arg-type]  # fmt: skip
        out.write(Box.of_shape(data.shape), data)
        out.set_attrs({"pytc": {"complete": True}})
        back = open_volume(url, "pred")
        assert (back.format, back.shape, back.voxel_size) == (fmt, data.shape, (40.0, 4.0, 4.0))
        assert back.attrs["pytc"] == {"complete": True}
        np.testing.assert_array_equal(back.read(Box.of_shape(data.shape)), data)
    stored = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": tensorstore_kvstore(f"{ROOT_URL}/out-precomputed/pred"),
        }
    ).result()
    assert list(stored.domain.inclusive_min) == [1, 2, 2, 0]  # the translation, in voxels (x, y, z)
    np.testing.assert_array_equal(np.asarray(stored.read().result()).T, data)
    assert open_volume(f"{ROOT_URL}/out-precomputed", "pred").translation == (80.0, 8.0, 4.0)
    keys = filesystem().ls(f"{BUCKET}/data/out-precomputed/pred/0", detail=False)
    assert all(k.endswith(".shard") for k in keys) and len(keys) == 3 * 3 * 3  # one object a shard


def _placed_data(root: Path) -> None:
    """``make_data``'s volume, small, placed by OME-Zarr multiscales (a voxel size and a translation)
    that the output must carry over."""
    make_data(root, SHAPE)
    transforms = [{"type": "scale", "scale": VOXEL}, {"type": "translation", "translation": ORIGIN}]
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    entry = {
        "name": "raw",
        "axes": axes,
        "datasets": [{"path": "raw", "coordinateTransformations": transforms}],
    }
    put_multiscale(zarr.open_group(root / "em.zarr", mode="r+"), "raw", entry)


def _job_over_s3(root: Path, name: str, **output: str) -> Path:
    """``write_job``'s job with its input and output in the bucket (the model stays local)."""
    job = write_job(root, name=name)
    doc = yaml.safe_load(job.read_text())
    doc["input"]["path"] = f"{ROOT_URL}/{name}/em.zarr"
    doc["output"] |= {"path": f"{ROOT_URL}/{name}/out.zarr", **output}
    job.write_text(yaml.safe_dump(doc))
    upload(root / "em.zarr", doc["input"]["path"])
    return job


def _pytc_run(root: Path, job: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service", "run", str(job), "--quiet"]
    cmd += ["--data-root", str(root), "--data-root", ROOT_URL]
    full = {**os.environ, **env, "PYTC_SCRATCH_DIR": str(root / "scratch")}
    return subprocess.Popen(
        cmd, cwd=root, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err.decode()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Any]:
    """The job over local files: its output and that output's translation (nm)."""
    root = tmp_path_factory.mktemp("local")
    _placed_data(root)
    code, err = _finish(_pytc_run(root, write_job(root), {}))
    assert code == 0, err
    return read_all(root / "out.zarr"), open_volume(root / "out.zarr", "pred").translation


@pytest.mark.slow
def test_a_job_over_s3_with_an_n5_output_equals_the_same_job_over_local_files(
    s3_env: dict[str, str], local_run: tuple[np.ndarray, Any], tmp_path: Path
) -> None:
    _placed_data(tmp_path)
    job = _job_over_s3(tmp_path, "whole", format="n5")
    code, err = _finish(_pytc_run(tmp_path, job, s3_env))
    assert code == 0, err
    output = f"{ROOT_URL}/whole/out.zarr"
    volume = open_volume(output, "pred")
    assert volume.format == "n5" and volume.dataset == "pred/s0" and volume.voxel_size == tuple(VOXEL)
    np.testing.assert_array_equal(read_all(output), local_run[0])
    assert volume.attrs["pytc"]["complete"] is True
    stored = ts.open({"driver": "n5", "kvstore": tensorstore_kvstore(f"{output}/pred/s1")}).result()
    assert stored.shape[-1] == 1 and open_volume(output, "pred/s1").shape == stored.T.shape  # its pyramid
    assert not filesystem().exists(f"{BUCKET}/data/whole/out.zarr/.pytc-run")  # bookkeeping stays local
    assert (tmp_path / "scratch" / "s3" / BUCKET / "data" / "whole" / "out.zarr" / ".pytc-run").is_dir()


@pytest.mark.slow
def test_a_killed_run_over_s3_resumes_to_the_clean_output(
    s3_env: dict[str, str], local_run: tuple[np.ndarray, Any], tmp_path: Path
) -> None:
    _placed_data(tmp_path)
    job = _job_over_s3(tmp_path, "killed")
    base = tmp_path / "scratch" / "s3" / BUCKET / "data" / "killed" / "out.zarr"  # holds .pytc-run
    proc = _pytc_run(tmp_path, job, s3_env)
    deadline = time.monotonic() + 300
    while done_blocks(base) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no block finished in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded cluster, no cleanup at all
    proc.wait()
    done = done_blocks(base)
    assert 0 < done < N_BLOCKS, f"the kill came at {done} finished blocks of {N_BLOCKS}"
    output = f"{ROOT_URL}/killed/out.zarr"
    assert open_volume(output, "pred").attrs["pytc"].get("complete") is not True
    code, err = _finish(_pytc_run(tmp_path, job, s3_env))
    assert code == 0, err
    np.testing.assert_array_equal(read_all(output), local_run[0])
    # the input's OME translation, read from the bucket, placed the output as the local run's
    assert open_volume(output, "pred").translation == local_run[1] == tuple(ORIGIN)


def test_stores_outside_the_s3_roots_are_refused_naming_the_field(
    s3_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.cli import main

    make_data(tmp_path, SHAPE)
    job = _job_over_s3(tmp_path, "refused")
    doc = yaml.safe_load(job.read_text())
    monkeypatch.setenv("PYTC_SCRATCH_DIR", str(tmp_path / "scratch"))
    cases = [
        ("input", f"s3://{BUCKET}/elsewhere/em.zarr", "outside the data roots"),
        ("input", f"{ROOT_URL}/../elsewhere/em.zarr", "may not contain '..'"),
        ("output", "s3://other-bucket/data/out.zarr", "outside the data roots"),
        ("output", f"{ROOT_URL}2/out.zarr", "outside the data roots"),
    ]
    for section, value, why in cases:
        job.write_text(yaml.safe_dump({**doc, section: {**doc[section], "path": value}}))
        code = main(["run", str(job), "--quiet", "--data-root", str(tmp_path), "--data-root", ROOT_URL])
        err = capsys.readouterr().err
        assert code == 2 and f"{section}.path" in err and why in err, (value, err)
    job.write_text(yaml.safe_dump({**doc, "output": {**doc["output"], "format": "hdf5"}}))
    code = main(["run", str(job), "--quiet", "--data-root", str(tmp_path), "--data-root", ROOT_URL])
    err = capsys.readouterr().err
    assert code == 2 and "output.format" in err, err
    monkeypatch.setenv("PYTC_SCRATCH_DIR", "/elsewhere/scratch")  # the run folder must stay inside a root
    job.write_text(yaml.safe_dump(doc))
    code = main(["run", str(job), "--quiet", "--data-root", str(tmp_path), "--data-root", ROOT_URL])
    err = capsys.readouterr().err
    assert code == 2 and "output.path" in err and "PYTC_SCRATCH_DIR" in err, err
    assert not filesystem().exists(f"{BUCKET}/data/refused/out.zarr")


@pytest.mark.slow
def test_a_served_job_over_s3_equals_the_local_run_and_foreign_buckets_are_422(
    s3_env: dict[str, str], local_run: tuple[np.ndarray, Any], tmp_path: Path
) -> None:
    """A real pytc-serve whose data roots are a folder and a bucket prefix, the store at moto's
    endpoint through the standard AWS variables: a job there finishes with the local run's output,
    and a job naming a bucket outside the roots is a 422 naming the field, with nothing written."""
    import httpx

    from tests.integration.service_fixtures import assert_problem, running_service, wait_for_state

    _placed_data(tmp_path)
    job = yaml.safe_load(_job_over_s3(tmp_path, "served").read_text())
    env = {
        **s3_env,
        "PYTC_DATA_ROOTS": f"{tmp_path}:{ROOT_URL}",
        "PYTC_SCRATCH_DIR": str(tmp_path / "scratch"),
    }
    with running_service(tmp_path, tmp_path / "state", **env) as service:
        foreign = {**job, "output": {**job["output"], "path": f"s3://{BUCKET}/elsewhere/out.zarr"}}
        body = assert_problem(httpx.post(f"{service.url}/v1/jobs", json=foreign, timeout=60), 422)
        assert "output.path" in json.dumps(body) and "outside the data roots" in json.dumps(body), body
        response = httpx.post(f"{service.url}/v1/jobs", json=job, timeout=60)
        assert response.status_code in (200, 201, 202), response.text
        final = wait_for_state(service.url, response.json()["id"], ("succeeded", "failed", "cancelled"))
        assert final["state"] == "succeeded", final
    np.testing.assert_array_equal(read_all(f"{ROOT_URL}/served/out.zarr"), local_run[0])
    assert not filesystem().exists(f"{BUCKET}/elsewhere")
