"""The pyramid stage resumes after a real kill: ``pytc run`` as its own process group, killed with
SIGKILL (the driver and its embedded Dask cluster, no cleanup at all) once some of the pyramid's
done markers are on disk and before the last, then run again. The rerun's every level equals a
clean run's, and the output is marked complete only after the rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
import zarr

from service.cli import main
from tests.integration.service_fixtures import TinyNet
from volumes.open import open_volume

pytestmark = pytest.mark.slow  # three runs, one killed (82 s measured on a busy 2-core machine)


def make_data(root: Path) -> None:
    data = (np.random.default_rng(7).random((16, 256, 256)) * 255).astype(np.uint8)
    zarr.open_group(root / "em.zarr", mode="w").create_array("raw", data=data, chunks=(16, 64, 64))
    torch.jit.script(TinyNet().eval()).save(str(root / "net.pt"))


def write_job(root: Path, output: str) -> Path:
    """Level 0 is quick (windows that do not overlap); the pyramid is long: chunks of 2x8x8 give
    level 1 1,024 chunks in 256 tasks, and levels 2 to 5 after it."""
    doc: dict[str, Any] = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": [8, 64, 64], "stride": [8, 64, 64], "blending": "constant", "batch_size": 8},
        "output": {
            "path": output,
            "dataset": "pred",
            "heads": [2],
            "activation": ["sigmoid"],
            "chunks": [2, 8, 8],
        },
        "compute": {"block_shape": [16, 128, 128]},
    }
    job = root / f"{output}.yaml"
    job.write_text(yaml.safe_dump(doc))
    return job


def markers(output: Path) -> int:
    return len(list(output.glob(".pytc-run/*/*/pyramid/*.json")))


def levels(output: Path) -> list[np.ndarray]:
    group = zarr.open_group(output / "pred", mode="r")
    return [np.asarray(group[name][...]) for name in sorted(group.array_keys(), key=int)]


def complete(output: Path) -> bool:
    return open_volume(output, "pred").attrs["pytc"].get("complete") is True


def pytc_run(root: Path, job: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service", "run", str(job), "--quiet", "--data-root", str(root)]
    return subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def test_a_run_killed_mid_pyramid_resumes_to_a_clean_runs_levels(tmp_path: Path) -> None:
    make_data(tmp_path)
    assert main(["run", str(write_job(tmp_path, "clean.zarr")), "--quiet", "--data-root", str(tmp_path)]) == 0
    clean = tmp_path / "clean.zarr"
    total = markers(clean)
    assert total > 256 and complete(clean), total
    out, job = tmp_path / "out.zarr", write_job(tmp_path, "out.zarr")
    proc = pytc_run(tmp_path, job)
    deadline = time.monotonic() + 300
    while markers(out) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "no pyramid task finished in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded cluster, mid-pyramid
    proc.wait()
    done = markers(out)
    assert 0 < done < total, f"the kill came at {done} pyramid tasks of {total}"
    assert not complete(out)  # level 0 is whole, the pyramid is not: never marked complete
    rerun = pytc_run(tmp_path, job)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()
    assert markers(out) == total and complete(out)
    mine, theirs = levels(out), levels(clean)
    assert len(mine) == len(theirs) == 6, [a.shape for a in theirs]
    for level, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"level {level}")
    print(f"killed after {done} of {total} pyramid tasks; the rerun finished the rest")
