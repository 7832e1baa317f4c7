"""Paths confined again when a running job opens them: a symlink swapped in is refused, named."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from models.ref import ModelInfo
from tests.helpers import make_job
from volumes.box import Box
from volumes.output import create_output
from workers.confine import ChunkFiles, confined
from workers.errors import PathEscapeError
from workers.inference.job import WindowSpec
from workers.inference.run import InferenceRun, run_serially


def test_a_path_inside_the_roots_resolves_and_one_led_out_by_a_symlink_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "in_link").symlink_to(root / "a")
    (root / "out_link").symlink_to(outside)
    (root / "loop").symlink_to(root / "loop")
    roots = (str(root),)
    assert confined(root / "in_link" / "x", roots) == root / "a" / "x"
    with pytest.raises(PathEscapeError, match=f"{root / 'out_link' / 'x'} now resolves to {outside / 'x'}"):
        confined(root / "out_link" / "x", roots)
    with pytest.raises(PathEscapeError, match="loop"):
        confined(root / "loop" / "x", roots)
    assert confined(outside, ()) == outside  # a job without roots (tests, debugging) is not confined


def test_an_input_swapped_for_a_symlink_between_blocks_fails_the_run_unfinished(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    data = np.random.default_rng(1).random((16, 24, 24), dtype=np.float32)
    for where in (root, outside):
        zarr.open_group(where / "in.zarr", mode="w").create_array("raw", data=data, chunks=(8, 8, 8))
    window = WindowSpec((5, 7, 7), (3, 4, 4), "gaussian", batch_size=4)
    job = make_job(root / "in.zarr", root / "out.zarr", window, block_shape=(8, 8, 8))
    job = replace(job, data_roots=(str(root),))
    raw = root / "in.zarr" / "raw"

    def swap(run: InferenceRun) -> None:
        if not raw.is_symlink():
            raw.rename(raw.with_name("raw.real"))
            raw.symlink_to(outside / "in.zarr" / "raw", target_is_directory=True)

    with pytest.raises(PathEscapeError, match=f"{raw} now resolves to"):
        run_serially(job, ModelInfo(1, 1, "sha"), predict=lambda b: b * 2.0, on_task=swap)
    assert zarr.open_array(root / "out.zarr" / "pred" / "0").attrs["pytc"]["complete"] is False


@pytest.mark.parametrize("fmt", ["zarr3", "zarr2", "n5"])
def test_the_chunk_files_named_are_those_a_write_creates(tmp_path: Path, fmt: str) -> None:
    volume = create_output(tmp_path / "out", "a/pred", fmt, (2, 8, 12, 12), "float32", (4, 4, 8))  # type: ignore[arg-type]
    box = Box((0, 4, 0, 8), (2, 4, 8, 4))  # chunks (0, 1, 0, 1) and (0, 1, 1, 1)
    volume.write(box, np.ones(box.shape, np.float32))
    files = ChunkFiles.of(volume)
    assert files is not None
    named = set(files.paths(box))
    written = {p for p in (tmp_path / "out" / "a" / "pred").rglob("*") if p.is_file()}
    assert len(named) == 2 and named <= written, (named, written)


def test_a_precomputed_output_confines_its_scale_folder(tmp_path: Path) -> None:
    """Its shards are named by Morton codes, not by grid positions: each write confines the scale's
    folder, which a swapped symlink would change (tensorstore replaces files, never follows them)."""
    volume = create_output(tmp_path / "out", "pred", "precomputed", (2, 8, 12, 12), "float32", (4, 4, 8))
    files = ChunkFiles.of(volume)
    assert files is not None
    assert set(files.paths(Box((0, 4, 0, 8), (2, 4, 8, 4)))) == {tmp_path / "out" / "pred" / "0"}
