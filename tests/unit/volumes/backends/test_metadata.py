"""An array's metadata is checked when it is opened: whatever is malformed or absurd in a
``zarr.json``, ``.zarray`` or N5 ``attributes.json`` is one VolumeFormatError naming the file, never
a KeyError or TypeError from a library, and never an object or structured array."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.volumes.stores import make_n5, make_zarr
from volumes.errors import VolumeFormatError
from volumes.open import open_volume


def rewrite(file: Path, **changes: Any) -> None:
    """Change the metadata's keys; ``...`` removes one."""
    meta = json.loads(file.read_text())
    for key, value in changes.items():
        if value is ...:
            meta.pop(key)
        else:
            meta[key] = value
    file.write_text(json.dumps(meta))


ZARR3 = [
    ({"data_type": ...}, "data_type"),
    ({"shape": [-1, 6, 8]}, "non-negative"),
    ({"shape": "big"}, "zarr.json"),
    ({"codecs": [{"name": "no-such-codec"}]}, "no-such-codec"),
    ({"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [0, 3, 4]}}}, "chunks [0, 3, 4]"),
    ({"fill_value": "lots"}, "zarr.json"),
]


@pytest.mark.parametrize(("changes", "says"), ZARR3, ids=[str(c[0]) for c in ZARR3])
def test_malformed_zarr3_metadata_names_the_file(tmp_path: Path, changes: dict[str, Any], says: str) -> None:
    make_zarr(tmp_path / "c.zarr", "raw", 3)
    rewrite(tmp_path / "c.zarr" / "raw" / "zarr.json", **changes)
    with pytest.raises(VolumeFormatError) as caught:
        open_volume(tmp_path / "c.zarr", "raw")
    assert "zarr.json" in str(caught.value) and says in str(caught.value)


@pytest.mark.parametrize(
    ("dtype", "says"),
    [
        ("|O", ".zarray"),
        ([["a", "<i4"], ["b", "<f4"]], "structured"),
        ("<U4", "structured"),
        ("<c8", "complex64"),
    ],
    ids=["object", "records", "strings", "complex"],
)
def test_zarr2_arrays_of_other_than_numbers_are_refused(tmp_path: Path, dtype: Any, says: str) -> None:
    make_zarr(tmp_path / "c.zarr", "raw", 2)
    rewrite(tmp_path / "c.zarr" / "raw" / ".zarray", dtype=dtype, fill_value=None)
    with pytest.raises(VolumeFormatError, match=r"c\.zarr/raw/\.zarray") as caught:
        open_volume(tmp_path / "c.zarr", "raw")
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "says"),
    [({"dimensions": [8, -6, 4]}, "claims shape"), ({"blockSize": [4, 0, 2]}, "claims chunks"),
     ({"dataType": "object"}, "claims dtype"), ({"dataType": "no-such-type"}, "not N5 array metadata"),
     ({"blockSize": [4, 3]}, "claims chunks")],
)  # fmt: skip
def test_absurd_n5_metadata_names_the_file(tmp_path: Path, changes: dict[str, Any], says: str) -> None:
    make_n5(tmp_path / "c.n5", "raw", changes)
    with pytest.raises(VolumeFormatError, match=r"attributes\.json") as caught:
        open_volume(tmp_path / "c.n5", "raw")
    assert says in str(caught.value)


def test_a_claimed_petascale_shape_opens_from_its_metadata_alone(tmp_path: Path) -> None:
    make_zarr(tmp_path / "c.zarr", "raw", 3)
    rewrite(tmp_path / "c.zarr" / "raw" / "zarr.json", shape=[100_000] * 3)
    volume = open_volume(tmp_path / "c.zarr", "raw")  # no chunk is read: bounds are admission's
    assert volume.shape == (100_000,) * 3 and volume.chunks == (2, 3, 4)
