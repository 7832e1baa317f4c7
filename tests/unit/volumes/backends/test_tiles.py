"""TileDataset JSON volumes: tile placement, missing tiles, tile_ratio, malformed JSON, confinement."""

from __future__ import annotations

import json
import os
import pickle
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import zoom

from volumes.backends import tiles
from volumes.backends.tiles import TileVolume, tile_cache
from volumes.box import Box
from volumes.chunk_cache import cached
from volumes.errors import VolumeError, VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.open import open_volume
from volumes.volume import Volume

SHAPE, TILE, TILE_ST = (5, 70, 90), 32, (1, 1)
MISSING = (2, 1, 1)  # (z, row, column) of the tile whose file is left out


def reference(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, SHAPE, dtype=np.uint8)


def save_tile(path: Path, tile: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, tile)
    else:
        Image.fromarray(tile).save(path)


def write_json(folder: Path, **meta: Any) -> Path:
    doc: dict[str, Any] = {"depth": SHAPE[0], "height": SHAPE[1], "width": SHAPE[2], "tile_size": TILE}
    doc |= {"tile_st": list(TILE_ST), "tile_ratio": 1, "dtype": "uint8"}
    doc |= {"image": [f"tiles/z{z:04d}/{{row}}_{{column}}.png" for z in range(SHAPE[0])]}
    path = folder / "volume.json"
    path.write_text(json.dumps(doc | meta))
    return path


def write_tiles(
    folder: Path,
    data: np.ndarray,
    suffix: str,
    tile: Callable[[np.ndarray, int, int], np.ndarray] = lambda t, r, c: t,
    size: int = TILE,
) -> np.ndarray:
    """Tiles of ``data`` (each passed through ``tile``) and what the volume should read back."""
    expected = data.copy()
    for z, row, column in _grid():
        part = data[z, row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]
        if (z, row, column) == MISSING:
            expected[z, row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE] = 0
            continue
        if z % 2 and part.shape != (TILE, TILE):  # odd slices: edge tiles padded past the volume
            part = np.pad(part, [(0, TILE - part.shape[0]), (0, TILE - part.shape[1])], constant_values=7)
        name = f"{row + TILE_ST[0]}_{column + TILE_ST[1]}{suffix}"
        save_tile(folder / "tiles" / f"z{z:04d}" / name, tile(part, row, column))
    return expected


def _grid() -> Iterable[tuple[int, int, int]]:
    rows, columns = -(-SHAPE[1] // TILE), -(-SHAPE[2] // TILE)
    return ((z, r, c) for z in range(SHAPE[0]) for r in range(rows) for c in range(columns))


def random_boxes(count: int, seed: int = 1) -> list[Box]:
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(count):
        start = [int(rng.integers(0, n)) for n in SHAPE]
        shape = [int(rng.integers(1, n - s + 1)) for s, n in zip(start, SHAPE, strict=True)]
        boxes.append(Box(tuple(start), tuple(shape)))
    return boxes


@pytest.mark.parametrize("suffix", [".png", ".npy"])
def test_random_boxes_read_the_assembled_volume(tmp_path: Path, suffix: str) -> None:
    expected = write_tiles(tmp_path, reference(), suffix)
    images = [f"tiles/z{z:04d}/{{row}}_{{column}}{suffix}" for z in range(SHAPE[0])]
    volume = open_volume(write_json(tmp_path, image=images))
    assert isinstance(volume, TileVolume) and isinstance(volume, Volume)
    assert (volume.shape, volume.dtype, volume.chunks) == (SHAPE, np.uint8, (1, TILE, TILE))
    assert (volume.format, volume.dataset, volume.voxel_size, volume.attrs) == ("tiles", None, None, {})
    np.testing.assert_array_equal(volume.read(Box.of_shape(SHAPE)), expected)
    for box in random_boxes(60):
        np.testing.assert_array_equal(volume.read(box), expected[box.slices()], err_msg=str(box))


def write_half_size_tiles(folder: Path, half: np.ndarray, order: int) -> np.ndarray:
    """Tiles of ``half`` (16x16, for ``tile_ratio`` 2) and what a zoom of ``order`` reads back."""
    expected = np.zeros(SHAPE, np.uint8)
    for z, row, column in _grid():
        small = half[z, row * 16 : (row + 1) * 16, column * 16 : (column + 1) * 16]
        if (z, row, column) != MISSING:
            save_tile(folder / "tiles" / f"z{z:04d}" / f"{row + 1}_{column + 1}.png", small)
            big = zoom(small, 2, order=order)
            expected[
                z, row * TILE : row * TILE + big.shape[0], column * TILE : column * TILE + big.shape[1]
            ] = big
    return expected


def test_tile_ratio_zooms_each_tile_before_placing_it(tmp_path: Path) -> None:
    expected = write_half_size_tiles(tmp_path, reference(2)[:, ::2, ::2], order=1)
    volume = open_volume(write_json(tmp_path, tile_ratio=2))
    for box in [Box.of_shape(SHAPE), *random_boxes(20)]:
        np.testing.assert_array_equal(volume.read(box), expected[box.slices()], err_msg=str(box))


def test_labels_zoom_nearest_so_no_id_is_blended_and_the_choice_survives_pickling(tmp_path: Path) -> None:
    ids = np.random.default_rng(4).choice(np.array([3, 200], np.uint8), size=(SHAPE[0], 35, 45))
    expected = write_half_size_tiles(tmp_path, ids, order=0)
    path = write_json(tmp_path, tile_ratio=2)
    labels = open_volume(path, labels=True)
    for volume in (labels, pickle.loads(pickle.dumps(labels))):  # as a Dask task receives it
        np.testing.assert_array_equal(volume.read(Box.of_shape(SHAPE)), expected)
    assert set(np.unique(labels.read(Box.of_shape(SHAPE)))) <= {0, 3, 200}  # 0: the missing tile
    blended = np.unique(open_volume(path).read(Box.of_shape(SHAPE)))  # an image: linear, as PyTC
    assert len(set(blended) - {0, 3, 200}) > 0


def test_a_slice_without_placeholders_is_one_image_and_specs_and_tile_size_pairs_work(tmp_path: Path) -> None:
    data = reference(3)
    for z in range(SHAPE[0]):
        save_tile(tmp_path / f"slice{z}.npy", data[z])
    volume = open_volume(write_json(tmp_path, image=[f"slice{z}.npy" for z in range(SHAPE[0])]))
    for box in random_boxes(20):
        np.testing.assert_array_equal(volume.read(box), data[box.slices()])
    for z, row, column in np.ndindex(SHAPE[0], 4, 2):  # 70 / 20 and 90 / 50, rounded up
        part = data[z, row * 20 : (row + 1) * 20, column * 50 : (column + 1) * 50]
        save_tile(tmp_path / "t" / f"{z}-{row:02d}_{column:03d}.npy", part)
    images = [f"t/{z}-{{row:02d}}_{{column:03d}}.npy" for z in range(SHAPE[0])]
    volume = open_volume(write_json(tmp_path, image=images, tile_size=[20, 50], tile_st=[0, 0]))
    assert volume.chunks == (1, 20, 50)
    np.testing.assert_array_equal(volume.read(Box.of_shape(SHAPE)), data)


def test_reads_from_many_threads_through_a_small_cache_agree(tmp_path: Path) -> None:
    expected = write_tiles(tmp_path, reference(), ".png")
    volume = open_volume(write_json(tmp_path))
    assert isinstance(volume, TileVolume)
    volume._cache = tile_cache(max_entries=4, max_bytes=1 << 30)
    boxes = random_boxes(80, seed=5)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(volume.read, boxes))
    for box, got in zip(boxes, results, strict=True):
        np.testing.assert_array_equal(got, expected[box.slices()])
    assert len(volume._cache) <= 4
    training = cached(volume, 2**20)  # training crops read through the chunk cache
    for box in boxes[:20]:
        np.testing.assert_array_equal(training.read(box), expected[box.slices()])
    clone = pickle.loads(pickle.dumps(volume))
    np.testing.assert_array_equal(clone.read(Box.of_shape(SHAPE)), expected)


def test_it_is_read_only_and_holds_no_datasets(tmp_path: Path) -> None:
    path = write_json(tmp_path)
    volume = open_volume(path)
    with pytest.raises(VolumeReadOnlyError, match="read-only"):
        volume.write(Box.of_shape(SHAPE), np.zeros(SHAPE, np.uint8))
    with pytest.raises(VolumeError, match="read-only"):
        volume.set_attrs({"a": 1})
    with pytest.raises(VolumeReadOnlyError, match="read-only"):
        open_volume(path, mode="r+")
    with pytest.raises(VolumeNotFoundError, match="'raw'"):
        open_volume(path, "raw")
    assert open_volume(path, "").shape == SHAPE


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"depth": None}, "'depth'"),
        ({"height": "70"}, "'height'"),
        ({"width": 0}, "'width'"),
        ({"tile_size": None}, "'tile_size'"),
        ({"tile_size": [32]}, "'tile_size'"),
        ({"tile_st": [1]}, "'tile_st'"),
        ({"tile_ratio": 0}, "'tile_ratio'"),
        ({"tile_ratio": True}, "'tile_ratio'"),
        ({"dtype": "not-a-type"}, "'dtype'"),
        ({"dtype": None}, "'dtype'"),
        ({"image": None}, "'image'"),
        ({"image": "tiles/{row}_{column}.png"}, "'image'"),
        ({"image": ["a.png"] * 4}, "'image'"),
        ({"image": ["a.png", "b.png", 3, "d.png", "e.png"]}, r"image\[2\]"),
        ({"image": ["a.png", "{z}/{row}_{column}.png", "c", "d", "e"]}, r"image\[1\]"),
        ({"image": ["a.png", "b.png", "{row.real}_{column}.png", "d", "e"]}, r"image\[2\]"),
        ({"image": ["a.png", "b.png", "c.png", "{row}.png", "e"]}, r"image\[3\]"),
        ({"image": ["a.png", "b.png", "c.png", "d.png", "{row:q}_{column}"]}, r"image\[4\]"),
    ],
)
def test_malformed_json_names_the_key(tmp_path: Path, change: dict[str, Any], named: str) -> None:
    path = write_json(tmp_path, **change)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    with pytest.raises(VolumeFormatError, match=named):
        open_volume(path)


def test_not_json_or_not_an_object_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VolumeFormatError, match="not valid JSON"):
        open_volume(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(VolumeFormatError, match="expected an object"):
        open_volume(tmp_path / "list.json")


@pytest.mark.parametrize(
    "entry", ["../outside/{row}_{column}.png", "/etc/{row}_{column}.png", "a/../../x.png"]
)
def test_tile_paths_out_of_the_json_folder_are_refused(tmp_path: Path, entry: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    images = [f"tiles/z{z:04d}/{{row}}_{{column}}.png" for z in range(SHAPE[0])]
    images[3] = entry
    with pytest.raises(VolumeFormatError, match=r"image\[3\]"):
        open_volume(write_json(folder, image=images))


def test_absolute_tile_paths_inside_the_json_folder_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    expected = write_tiles(folder, reference(), ".png")
    images = [str(folder / f"tiles/z{z:04d}/{{row}}_{{column}}.png") for z in range(SHAPE[0])]
    volume = open_volume(write_json(folder, image=images))
    np.testing.assert_array_equal(volume.read(Box.of_shape(SHAPE)), expected)


def test_symlinks_may_not_lead_tiles_out_of_the_json_folder(tmp_path: Path) -> None:
    outside, folder = tmp_path / "outside", tmp_path / "data"
    write_tiles(outside, reference(), ".png")
    folder.mkdir()
    expected = write_tiles(folder / "real", reference(), ".png")
    (folder / "tiles").symlink_to(folder / "real" / "tiles")  # inside the tree: fine
    volume = open_volume(write_json(folder))
    np.testing.assert_array_equal(volume.read(Box.of_shape(SHAPE)), expected)
    (folder / "tiles" / "z0001").rename(folder / "z0001-moved")
    os.symlink(outside / "tiles" / "z0001", folder / "tiles" / "z0001")
    volume = open_volume(write_json(folder))
    np.testing.assert_array_equal(volume.read(Box((0, 0, 0), (1, 70, 90))), expected[:1])
    with pytest.raises(VolumeFormatError, match=r"image\[1\].*outside"):
        volume.read(Box((1, 0, 0), (1, 8, 8)))


@pytest.mark.parametrize(
    ("tile", "message"),
    [
        (np.zeros((TILE + 1, TILE), np.uint8), "larger than its place"),
        (np.zeros((TILE, TILE, 3), np.uint8), "one channel"),
        (np.zeros((TILE, TILE), np.uint16), "uint16"),
    ],
)
def test_a_tile_that_does_not_fit_is_an_error_naming_its_file(
    tmp_path: Path, tile: np.ndarray, message: str
) -> None:
    write_tiles(tmp_path, reference(), ".npy")
    save_tile(tmp_path / "tiles" / "z0004" / "2_2.npy", tile)
    images = [f"tiles/z{z:04d}/{{row}}_{{column}}.npy" for z in range(SHAPE[0])]
    volume = open_volume(write_json(tmp_path, image=images))
    np.testing.assert_array_equal(volume.read(Box((4, 0, 0), (1, 32, 32))), reference()[4:5, :32, :32])
    with pytest.raises(VolumeFormatError, match=rf"z0004/2_2\.npy.*{message}"):
        volume.read(Box((4, 40, 40), (1, 2, 2)))


def test_an_undecodable_tile_is_an_error_naming_its_file(tmp_path: Path) -> None:
    write_tiles(tmp_path, reference(), ".png")
    (tmp_path / "tiles" / "z0000" / "1_1.png").write_bytes(b"not a png")
    volume = open_volume(write_json(tmp_path))
    with pytest.raises(VolumeFormatError, match=r"z0000/1_1\.png cannot be decoded"):
        volume.read(Box((0, 0, 0), (1, 1, 1)))


def test_a_missing_tile_is_looked_for_once_and_reads_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiles(tmp_path, reference(), ".png")
    volume = open_volume(write_json(tmp_path))
    looked_for: list[Path] = []
    decode = tiles._decode

    def counted(path: Path, *rest: Any) -> np.ndarray | None:
        looked_for.append(path)
        return decode(path, *rest)

    monkeypatch.setattr(tiles, "_decode", counted)
    z, row, column = MISSING
    box = Box((z, row * TILE, column * TILE), (1, TILE, TILE))
    for _ in range(3):
        assert not volume.read(box).any()
    assert [p.name for p in looked_for] == [f"{row + TILE_ST[0]}_{column + TILE_ST[1]}.png"]


def test_a_tile_declaring_more_pixels_than_its_place_is_refused_before_decoding(tmp_path: Path) -> None:
    """A PNG whose header declares 9000x9000 (81 megapixels, under Pillow's own bomb warning) over a
    few bytes of pixel data: refused from its header, never decoded (decoding would fail here)."""
    write_tiles(tmp_path, reference(), ".png")
    tile = tmp_path / "tiles" / "z0001" / "1_1.png"
    data = bytearray(tile.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = (9000).to_bytes(4, "big") * 2  # width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    tile.write_bytes(bytes(data))
    volume = open_volume(write_json(tmp_path))
    with pytest.raises(
        VolumeFormatError, match=r"z0001/1_1\.png is 9000x9000, larger than its place of 32x32"
    ):
        volume.read(Box((1, 0, 0), (1, 1, 1)))
