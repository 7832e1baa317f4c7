"""The watershed decoders: the whole-volume decoder against PyTC's own output (golden files made by
running PyTC v1.0's ``connectomics/utils/process.py``; see tests/data/pytc_decoders/make_golden.py),
and the blockwise run against the whole-volume decoder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from service.documents.segmentation import DecoderSection, decoder_of
from volumes.box import Box
from volumes.labels import blockwise, watershed
from volumes.labels.agreement import agreement, face_cuts, watershed_cases
from volumes.labels.blockwise import decode_blockwise
from volumes.labels.decoders import Decoder
from volumes.labels.output import read_table
from volumes.labels.watershed import decode_watershed, flood
from volumes.labels.whole import decode_in_memory, sequential
from volumes.open import open_volume
from workers.segmentation.job import SegInput, SegmentationJob, SegOutput
from workers.segmentation.run import SegmentationRun, run_serially
from workers.segmentation.steps import run_step

GOLDEN = Path(__file__).parents[2] / "data" / "pytc_decoders" / "golden.npz"


def _cases() -> list[str]:
    with np.load(GOLDEN) as data:
        return sorted({k.rsplit("_", 1)[0] for k in data.files})


def _decoder(name: str, kwargs: dict[str, object], halo: tuple[int, int, int] | None = None) -> Decoder:
    return decoder_of(DecoderSection.model_validate({"name": name, **kwargs}), halo)


@pytest.mark.parametrize("case", _cases())
def test_whole_volume_equals_pytc(case: str) -> None:
    with np.load(GOLDEN) as data:
        name = str(data[f"{case}_decoder"])
        kwargs = json.loads(str(data[f"{case}_kwargs"]))
        pred, expected = data[f"{case}_pred"], data[f"{case}_out"]
    got = decode_in_memory(pred, _decoder(name, kwargs))
    np.testing.assert_array_equal(got, expected.astype(np.uint64))


def test_defaults_are_pytcs() -> None:
    d = _decoder("bcd_watershed", {})
    assert d.thresholds == (0.9, 0.8, 0.85, 0.5, 0.0)
    assert (d.thres_small, d.seed_thres, d.remove_small_mode, d.connectivity) == (128, 32, "background", 26)
    assert _decoder("binary_watershed", {}).thresholds == (0.98, 0.85)
    assert _decoder("bc_watershed", {}).thresholds == (0.9, 0.8, 0.85)


def _golden(case: str) -> tuple[np.ndarray, str, dict[str, object]]:
    with np.load(GOLDEN) as data:
        return data[f"{case}_pred"], str(data[f"{case}_decoder"]), json.loads(str(data[f"{case}_kwargs"]))


@pytest.mark.parametrize("case", ["binary1", "bc0", "bcd1"])
@pytest.mark.parametrize("block", [(4, 8, 8), (3, 7, 5), (8, 5, 24)])
def test_blockwise_equals_whole_when_the_halo_covers_the_volume(
    case: str, block: tuple[int, int, int]
) -> None:
    """Seeds are exact (global connected components, whole-seed size filter) and, with a halo that
    reaches every seed and voxel, the flooding is the whole volume's: bitwise equal labels."""
    pred, name, kwargs = _golden(case)
    decoder = _decoder(name, kwargs, pred.shape[1:])
    whole = decode_in_memory(pred, decoder)
    np.testing.assert_array_equal(decode_blockwise(pred, decoder, block, "none"), whole)
    np.testing.assert_array_equal(decode_blockwise(pred, decoder, block, "sequential"), sequential(whole))


def test_seed_filter_acts_on_whole_seeds() -> None:
    """A seed of 4 voxels split 2 + 2 by a block face survives seed_thres 3; one of 2 voxels goes."""
    pred = np.zeros((1, 4, 4, 8), np.uint8)
    pred[0, 1, 1, 1:7] = 120  # foreground line
    pred[0, 1, 1, 2:6] = 250  # seed of 4 voxels across the face at x = 4
    pred[0, 3, 3, 0:3] = 120
    pred[0, 3, 3, 0:2] = 250  # seed of 2 voxels
    decoder = _decoder(
        "binary_watershed", {"thres1": 0.9, "thres2": 0.4, "thres_small": 1, "seed_thres": 3}, (1, 1, 1)
    )
    whole = decode_in_memory(pred, decoder)
    assert np.count_nonzero(whole) == 6 and np.unique(whole).tolist() == [0, 1]
    np.testing.assert_array_equal(decode_blockwise(pred, decoder, (4, 4, 4), "none"), whole)


@pytest.mark.parametrize("case", ["bc0", "bcd1"])
def test_job_run_equals_the_in_memory_blockwise_decoder(tmp_path: Path, case: str) -> None:
    """The block tasks (label, link, number, rank, grow, sizes, write) over real zarr stores give the
    labels of the in-memory blockwise decoder, and its table."""
    pred, name, kwargs = _golden(case)
    zarr.open_group(tmp_path / "pred.zarr", mode="w").create_array(
        "p", data=pred, chunks=(pred.shape[0], 4, 8, 8)
    )
    decoder = _decoder(name, kwargs, (2, 4, 4))
    output = SegOutput(str(tmp_path / "seg.zarr"), "seg", "zarr3", (4, 8, 8))
    job = SegmentationJob(SegInput(str(tmp_path / "pred.zarr"), "p"), decoder, output, (4, 8, 8), "{}")
    result = run_serially(job)
    volume = open_volume(job.output.path, "seg")
    labels = volume.read(Box((0, 0, 0), volume.shape))
    expected = decode_blockwise(pred, decoder, (4, 8, 8), "sequential")
    np.testing.assert_array_equal(labels, expected)
    assert result["objects"] == int(expected.max()) == len(read_table(Path(result["table"])))


@pytest.mark.slow
def test_blockwise_figures_on_synthetic_em() -> None:
    """Regression thresholds on fixed data (32x192x192, blocks 16x64x64, the default halo 8x32x32):
    the blockwise watershed against the whole-volume one. Measured against PyTC's decoder
    (scikit-image's tie order): mito and cells identical; cells_bcd 0.999986 identical voxels,
    adapted Rand 0.000024, no object cut at a face, 1 object differing where two fronts tie (see
    docs/segmentation.md). Against the whole volume flooded in the blocks' own tie order: bitwise
    equal in every case."""
    block = (16, 64, 64)
    for name, (pred, decoder) in watershed_cases((32, 192, 192), seed=0).items():
        decoder = dataclasses.replace(decoder, margin=(8, 32, 32))
        whole = decode_in_memory(pred, decoder)
        blocked = decode_blockwise(pred, decoder, block, "none")
        found = agreement(whole, blocked, block)
        assert found.objects >= 5, name
        assert found.identical >= 0.999 and found.are <= 0.001, (name, found)
        assert found.cut == 0, (name, found)
        assert found.differ <= (1 if name == "cells_bcd" else 0), (name, found)
        np.testing.assert_array_equal(blocked, decode_watershed(pred, decoder, "raster"), err_msg=name)


def test_flood_equals_scikit_image_where_no_two_seeds_tie() -> None:
    """:func:`flood` is scikit-image's watershed but for the order of equal-valued seed voxels:
    with a value of its own for each seed (plateaus and equal values elsewhere, many-voxel seeds,
    holes in the mask), the labels are the same."""
    from skimage.segmentation import watershed

    rng = np.random.default_rng(7)
    for _ in range(150):
        shape = tuple(int(s) for s in rng.integers(2, 10, 3))
        energy = rng.integers(0, 4, shape).astype(np.float64)  # few values: plateaus and ties
        mask = rng.random(shape) < 0.85
        markers = np.zeros(shape, np.int64)
        for label in range(1, int(rng.integers(1, 5)) + 1):
            at = rng.choice(int(np.prod(shape)), int(rng.integers(1, 4)), replace=False)
            markers.flat[at] = label
            energy.flat[at] = -10.0 * label  # each seed's voxels share a value no other seed has
        expected = watershed(energy, markers, mask=mask)
        np.testing.assert_array_equal(flood(energy, markers, mask), expected)


def test_a_tie_scikit_image_breaks_by_a_seed_it_cannot_reach() -> None:
    """Why no blockwise run can equal scikit-image's watershed everywhere: a flat line, seeds 1, 2, 3
    at x = 0, 4, 8; x = 6 lies as far from seed 2 as from seed 3. scikit-image gives it to 3, and
    to 2 once a fourth seed is added beyond a gap in the mask, which no flood from it crosses: its
    seeds all enter one binary heap with equal keys, and the order they leave it in depends on
    every seed in the volume. :func:`flood` takes equal seeds in raster order: 2 both times, as a
    block that sees any part of the volume around x = 6 decides."""
    from skimage.segmentation import watershed

    def line(seeds: dict[int, int], length: int, gap: int | None = None) -> tuple[np.ndarray, ...]:
        energy = np.zeros((1, 1, length))
        markers = np.zeros((1, 1, length), np.int64)
        for x, label in seeds.items():
            markers[0, 0, x] = label
        mask = np.ones((1, 1, length), bool)
        if gap is not None:
            mask[0, 0, gap] = False
        return energy, markers, mask

    three = line({0: 1, 4: 2, 8: 3}, 11)
    four = line({0: 1, 4: 2, 8: 3, 12: 4}, 14, gap=11)
    assert watershed(three[0], three[1], mask=three[2])[0, 0, 6] == 3
    assert watershed(four[0], four[1], mask=four[2])[0, 0, 6] == 2
    assert flood(*three)[0, 0, 6] == flood(*four)[0, 0, 6] == 2
    np.testing.assert_array_equal(flood(*three)[0, 0, :11], flood(*four)[0, 0, :11])


def test_the_halo_doubles_where_a_seed_reaches_the_block_only_from_beyond_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A corridor from a seed at the block's corner out to x = 28 and back along the block's
    other edge: with the halo of 8 the way back is out of reach (x < 24) and the block's end of
    the corridor would stay unlabelled; the flood cannot settle (unreached voxels joined to the
    halo's open face), the halo doubles (x < 32) and the labels equal the whole volume's."""
    pred = np.zeros((1, 1, 16, 48), np.uint8)
    pred[0, 0, 1, 0:29] = 200  # corridor out
    pred[0, 0, 1:15, 28] = 200  # across
    pred[0, 0, 14, 0:29] = 200  # and back, into the first block
    pred[0, 0, 1, 0:2] = 250  # the seed
    decoder = _decoder(
        "binary_watershed", {"thres1": 0.9, "thres2": 0.5, "thres_small": 1, "seed_thres": 1}, (0, 0, 8)
    )
    whole = decode_in_memory(pred, decoder)
    assert np.count_nonzero(whole) == 29 + 12 + 29
    np.testing.assert_array_equal(decode_blockwise(pred, decoder, (1, 16, 16), "none"), whole)
    monkeypatch.setattr(blockwise, "HALO_DOUBLINGS", 0)
    fixed = decode_blockwise(pred, decoder, (1, 16, 16), "none")
    assert not fixed[0, 14, 0:16].any() and face_cuts(whole, fixed, (1, 16, 16)) == 1


def test_a_block_whose_halo_doubles_is_flooded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The corridor above: which voxels a flood leaves unreached is known before it
    (:func:`blockwise.unreached`), so the block whose halo doubles floods only over its larger box,
    each of the three blocks once, and the labels are the whole volume's as before."""
    pred = np.zeros((1, 1, 16, 48), np.uint8)
    pred[0, 0, 1, 0:29] = pred[0, 0, 1:15, 28] = pred[0, 0, 14, 0:29] = 200
    pred[0, 0, 1, 0:2] = 250
    decoder = _decoder(
        "binary_watershed", {"thres1": 0.9, "thres2": 0.5, "thres_small": 1, "seed_thres": 1}, (0, 0, 8)
    )
    floods: list[tuple[int, ...]] = []
    real = watershed.flood

    def counted(energy: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
        floods.append(energy.shape)
        return real(energy, markers, mask)

    monkeypatch.setattr(watershed, "flood", counted)
    blocked = decode_blockwise(pred, decoder, (1, 16, 16), "none")
    np.testing.assert_array_equal(blocked, decode_in_memory(pred, decoder))
    # block 0 over x < 32 (halo 16) and block 1 over the whole line, neither over its halo of 8
    # first (the corridor's far end is seedless there); block 2 settles with its halo of 8
    assert floods == [(1, 16, 32), (1, 16, 48), (1, 16, 24)]


def test_unreached_is_what_the_flood_leaves_unlabelled() -> None:
    """:func:`blockwise.unreached` of a mask and seeds equals the mask's voxels a flood leaves at 0,
    seeds outside the mask included (they flood nothing)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        shape = tuple(int(s) for s in rng.integers(1, 12, 3))
        mask = rng.random(shape) < rng.uniform(0.2, 0.9)
        seeds = np.where(rng.random(shape) < rng.uniform(0.0, 0.05), rng.integers(1, 4, shape), 0)
        energy = rng.integers(0, 5, shape).astype(np.float64)
        labels = flood(energy, seeds, mask)
        np.testing.assert_array_equal(blockwise.unreached(mask, seeds), mask & (labels == 0))


def test_flood_ranks_integer_energies_as_it_ranks_their_floats() -> None:
    """A uint8 map's energy reaches :func:`flood` as integers (ranked by a table, no sort): the same
    labels as the same values as floats, with plateaus, ties and gaps between the values."""
    rng = np.random.default_rng(5)
    for _ in range(150):
        shape = tuple(int(s) for s in rng.integers(1, 12, 3))
        values = rng.choice(rng.integers(0, 256, int(rng.integers(1, 40))), shape)
        energy = -values.astype(np.int16)
        mask = rng.random(shape) < 0.8
        seeds = np.where(rng.random(shape) < 0.05, rng.integers(1, 5, shape), 0)
        np.testing.assert_array_equal(
            flood(energy, seeds, mask), flood(energy.astype(np.float64), seeds, mask)
        )


def test_face_cuts_counts_objects_a_face_separates() -> None:
    """An object relabelled on one side of a face is cut; a front moved inside a block is not."""
    whole = np.zeros((1, 4, 8), np.uint64)
    whole[0, :, :4], whole[0, :, 4:] = 1, 2
    moved = whole.copy()
    moved[0, 0, 1] = 2  # inside block x < 4, no face between it and the rest of object 1
    assert face_cuts(whole, moved, (1, 4, 4)) == 0
    split = whole.copy()
    split[0, :, 4] = 5  # object 2's first column relabelled
    assert face_cuts(whole, split, (1, 4, 4)) == 0  # the face at x = 4 lies between objects 1 and 2
    assert face_cuts(whole, split, (1, 4, 5)) == 1  # the face at x = 5 runs through object 2


def test_float_maps_decode_as_their_uint8_twins() -> None:
    """On float maps thresholds compare as ``> t`` and bcd's distance is taken as it is: the uint8
    map u and the float map u / 255 (distance 2 u / 255 - 1) give the same labels."""
    pred, name, kwargs = _golden("bcd1")
    decoder = _decoder(name, kwargs)
    as_float = pred.astype(np.float64) / 255
    as_float[2] = as_float[2] * 2 - 1
    np.testing.assert_array_equal(decode_in_memory(as_float, decoder), decode_in_memory(pred, decoder))


def test_a_run_stopped_part_way_resumes_to_the_same_labels(tmp_path: Path) -> None:
    pred, name, kwargs = _golden("bc0")
    zarr.open_group(tmp_path / "pred.zarr", mode="w").create_array("p", data=pred, chunks=(2, 4, 8, 8))
    decoder = _decoder(name, kwargs, (2, 4, 4))
    output = SegOutput(str(tmp_path / "seg.zarr"), "seg", "zarr3", (4, 8, 8))
    job = SegmentationJob(SegInput(str(tmp_path / "pred.zarr"), "p"), decoder, output, (4, 8, 8), "{}")
    run = SegmentationRun.start(job)
    for _ in range(4):  # label, link, number, rank: the growth not started
        for task in run.ready():
            run_step(task.plan, task.step, task.block)
            run.finished(task)
    grow = run.ready()
    run_step(grow[0].plan, grow[0].step, grow[0].block)  # one block grown, then "killed"
    result = run_serially(job)
    assert result["resumed"] and result["steps_skipped"] > 0
    volume = open_volume(job.output.path, "seg")
    labels = volume.read(Box((0, 0, 0), volume.shape))
    np.testing.assert_array_equal(labels, decode_blockwise(pred, decoder, (4, 8, 8), "sequential"))
