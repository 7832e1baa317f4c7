"""``output.shards``: a zarr v3 output whose chunks are grouped into shards, each written whole by
one block; the values equal the unsharded run's, and tensorstore reads the shards back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from tests.integration.test_pytc_run import job_doc, read_output, root, run  # noqa: F401  (root: fixture)


@pytest.mark.slow
def test_sharded_output_equals_the_unsharded_run(root: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    plain = job_doc(**{"compute.block_shape": [4, 32, 32]})  # the same blocks: the same sums, bit for bit
    assert run(root, plain)[0] == 0
    sharded = job_doc(
        **{"output.path": "sharded.zarr", "output.shards": [4, 32, 32], "compute.block_shape": [4, 32, 32]}
    )
    assert run(root, sharded)[0] == 0
    array = zarr.open_array(root / "sharded.zarr" / "pred" / "0")
    assert array.shards == (2, 4, 32, 32) and array.chunks == (2, 4, 16, 16)
    np.testing.assert_array_equal(read_output(root / "sharded.zarr"), read_output(root / "out.zarr"))
    stored = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(root / "sharded.zarr" / "pred" / "0")}}
    ).result()
    np.testing.assert_array_equal(stored.read().result(), read_output(root / "out.zarr"))
    shard_files = [p for p in (root / "sharded.zarr" / "pred" / "0" / "c").rglob("*") if p.is_file()]
    assert len(shard_files) == 4 * 2 * 2  # (14/4 -> 4) x (40/32 -> 2) x (44/32 -> 2), one object per shard
    # the same job written as sharded neuroglancer precomputed, by the Dask workers: the same values
    precomputed = job_doc(
        **{"output.path": "pred.precomputed", "output.format": "precomputed", "output.shards": [4, 32, 32],
           "compute.block_shape": [4, 32, 32]}
    )  # fmt: skip
    assert run(root, precomputed)[0] == 0
    np.testing.assert_array_equal(read_output(root / "pred.precomputed"), read_output(root / "out.zarr"))
    stored = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(root / "pred.precomputed" / "pred")},
        }
    ).result()
    np.testing.assert_array_equal(np.asarray(stored.read().result()).T, read_output(root / "out.zarr"))
    assert len(list((root / "pred.precomputed" / "pred" / "0").glob("*.shard"))) == 4 * 2 * 2


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"output.shards": [4, 24, 32]}, "output.shards", "not a multiple of output.chunks"),
        ({"output.shards": [4, 32, 32], "output.format": "zarr2"}, "output.shards", "zarr v3"),
        ({"output.shards": [8, 32, 32]}, "compute.block_shape", "not a multiple of output.shards"),
    ],
)
def test_shards_that_do_not_fit_are_refused_naming_the_field(
    root: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    fields: dict[str, object],
    field: str,
    why: str,
) -> None:
    doc = job_doc(**fields)
    doc["compute"]["block_shape"] = [4, 32, 32]
    code, err = run(root, doc, capsys)
    assert code == 2 and field in err and why in err, err
    assert not (root / "out.zarr").exists()
