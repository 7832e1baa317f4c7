"""The segmentation document: PyTC's parameters and defaults per decoder, and every refusal naming
its field (nothing read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.documents.segmentation import parse_segmentation
from workers.errors import SpecError
from workers.limits import Limits


def doc(**decoder: Any) -> dict[str, Any]:
    return {
        "kind": "segmentation",
        "input": {"path": "pred.zarr", "dataset": "mito"},
        "decoder": {"name": "binary_connected", **decoder},
        "output": {"path": "seg.zarr"},
    }


def test_pytc_defaults_per_decoder(tmp_path: Path) -> None:
    job = parse_segmentation(doc(), [tmp_path])
    d = job.decoder
    assert (d.thresholds, d.thres_small, d.remove_small_mode, d.connectivity, d.dilation) == (
        (0.8,), 128, "background", 26, None,
    )  # fmt: skip
    bc = parse_segmentation(doc(name="bc_connected"), [tmp_path]).decoder
    assert (bc.thresholds, bc.dilation, bc.connectivity) == ((0.8, 0.5), (1, 5, 5), 26)
    aff = parse_segmentation(doc(name="affinity_connected", thres=0.3), [tmp_path]).decoder
    assert (aff.thresholds, aff.connectivity, aff.channels) == ((0.3,), 6, 3)
    assert job.output.relabel == "sequential" and job.output.dataset == "seg" and job.output.format == "zarr3"
    agg = parse_segmentation(doc(name="affinity_agglomerate"), [tmp_path]).decoder
    assert (agg.thresholds, agg.aff_threshold, agg.merge_function, agg.channels) == (
        (0.1,), (0.05, 0.995), "aff50_his256", 3,
    )  # fmt: skip
    several = parse_segmentation(doc(name="affinity_agglomerate", thresholds=[0.1, 0.3, 0.6]), [tmp_path])
    assert several.decoder.thresholds == (0.1, 0.3, 0.6) and several.decoder.halo == (0, 0, 0)


@pytest.mark.parametrize(
    ("decoder", "field", "words"),
    [
        ({"thres": 1.5}, "decoder.thres", ""),
        ({"thres1": 0.5}, "decoder.thres1", "not a parameter of binary_connected"),
        ({"name": "bcd_watershed", "thres": 0.5}, "decoder.thres", "not a parameter of bcd_watershed"),
        ({"name": "binary_watershed", "thres3": 0.5}, "decoder.thres3", "not a parameter"),
        ({"name": "bcd_watershed", "thres5": -1.5}, "decoder.thres5", ""),
        ({"name": "affinity_agglomerate", "thres": 0.5}, "decoder.thres", "not a parameter of affinity"),
        ({"name": "affinity_agglomerate", "thresholds": [0.3, 0.1]}, "decoder.thresholds", "ascending"),
        ({"name": "affinity_agglomerate", "thresholds": [0.0]}, "decoder.thresholds", "(0, 1]"),
        ({"name": "affinity_agglomerate", "thresholds": []}, "decoder.thresholds", ""),
        (
            {"name": "affinity_agglomerate", "aff_threshold": [0.9, 0.1]},
            "decoder.aff_threshold",
            "low < high",
        ),
        (
            {"name": "affinity_agglomerate", "merge_function": "max"},
            "decoder.merge_function",
            "aff<Q>_his256",
        ),
        ({"name": "nope"}, "decoder.name", ""),
        (
            {"name": "bc_connected", "remove_small_mode": "background_2d"},
            "decoder.remove_small_mode",
            "dilation",
        ),
        (
            {"name": "bcd_watershed", "remove_small_mode": "background_2d"},
            "decoder.remove_small_mode",
            "growth",
        ),
        ({"remove_small_mode": "neighbor_2d", "connectivity": 6}, "decoder.remove_small_mode", "chain"),
        ({"remove_small_mode": "neighbor", "connectivity": 6}, "decoder.remove_small_mode", "chain"),
        ({"name": "bc_connected", "remove_small_mode": "neighbor"}, "decoder.remove_small_mode", "chain"),
        ({"name": "bc_watershed", "remove_small_mode": "neighbor"}, "decoder.remove_small_mode", "chain"),
        ({"connectivity": 8}, "decoder.connectivity", ""),
        ({"scale_factors": [2, 1, 1]}, "decoder.scale_factors", "not available yet"),
        ({"name": "bc_connected", "dilation_struct": [1, 4, 4]}, "decoder.dilation_struct", "odd"),
        ({"name": "affinity_connected", "connectivity": 26}, "decoder.connectivity", "6"),
        ({"thres_small": -1}, "decoder.thres_small", ""),
        ({"colour": 1}, "decoder.colour", "unknown field"),
    ],
)
def test_bad_decoder_parameters_name_the_field(
    tmp_path: Path, decoder: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_segmentation(doc(**decoder), [tmp_path])
    assert caught.value.field == field and words in str(caught.value)


def test_block_and_paths_are_checked(tmp_path: Path) -> None:
    bad_block = {**doc(), "compute": {"block_shape": [10, 256, 256]}}
    with pytest.raises(SpecError) as caught:
        parse_segmentation(bad_block, [tmp_path])
    assert caught.value.field == "compute.block_shape"
    huge = {**doc(), "compute": {"block_shape": [1024, 4096, 4096]}}
    with pytest.raises(SpecError) as caught:
        parse_segmentation(huge, [tmp_path], limits=Limits(worker_memory_bytes=2**30))
    assert caught.value.field == "compute.block_shape"
    outside = {**doc(), "output": {"path": "/elsewhere/seg.zarr"}}
    with pytest.raises(SpecError) as caught:
        parse_segmentation(outside, [tmp_path])
    assert caught.value.field == "output.path"
    same = {**doc(), "output": {"path": "pred.zarr", "dataset": "mito"}}
    with pytest.raises(SpecError) as caught:
        parse_segmentation(same, [tmp_path])
    assert caught.value.field == "output.dataset"


def test_watershed_decoders_take_pytcs_defaults_and_a_halo(tmp_path: Path) -> None:
    ws = parse_segmentation(doc(name="bc_watershed", thres3=0.5), [tmp_path]).decoder
    assert (ws.thresholds, ws.seed_thres, ws.margin, ws.channels) == ((0.9, 0.8, 0.5), 32, (8, 32, 32), 2)
    halo = {**doc(name="binary_watershed"), "compute": {"halo": [2, 3, 4]}}
    assert parse_segmentation(halo, [tmp_path]).decoder.margin == (2, 3, 4)
    with pytest.raises(SpecError) as caught:
        parse_segmentation({**doc(), "compute": {"halo": [2, 3, 4]}}, [tmp_path])
    assert caught.value.field == "compute.halo"


def test_the_label_pyramid_is_on_unless_turned_off(tmp_path: Path) -> None:
    assert parse_segmentation(doc(), [tmp_path]).output.pyramid is True
    off = {**doc(), "output": {"path": "seg.zarr", "pyramid": False}}
    job = parse_segmentation(off, [tmp_path])
    assert job.output.pyramid is False
    assert job.layout_key((1, 8, 8, 8), "uint8") != parse_segmentation(doc(), [tmp_path]).layout_key(
        (1, 8, 8, 8), "uint8"
    )  # a run never resumes into an image of other levels
    with pytest.raises(SpecError) as caught:
        parse_segmentation({**doc(), "output": {"path": "seg.zarr", "pyramid": "no"}}, [tmp_path])
    assert caught.value.field == "output.pyramid"


def test_neighbor_is_taken_where_objects_never_touch(tmp_path: Path) -> None:
    """``neighbor`` equals ``background`` where no two objects touch in-plane (see the blockwise
    tests); ``background_2d`` is taken by the decoders that do not grow objects after labelling."""
    for decoder in (
        {"remove_small_mode": "neighbor"},
        {"remove_small_mode": "neighbor", "connectivity": 18},
        {"name": "bc_connected", "remove_small_mode": "neighbor", "dilation_struct": [1, 1, 1]},
        {"remove_small_mode": "neighbor_2d"},
        {"remove_small_mode": "background_2d", "connectivity": 6},
        {"name": "affinity_connected", "remove_small_mode": "background_2d"},
    ):
        mode = parse_segmentation(doc(**decoder), [tmp_path]).decoder.remove_small_mode
        assert mode == decoder["remove_small_mode"]


def stage(**extra: Any) -> dict[str, Any]:
    """A segmentation whose prediction comes from an ``inference:`` stage."""
    inference = {
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": [5, 17, 17]},
        "output": {"path": "pred.zarr", "dataset": "pred", "dtype": "uint8"},
    }
    return {
        "kind": "segmentation",
        "inference": inference,
        "decoder": {"name": "binary_connected"},
        "output": {"path": "seg.zarr"},
        **extra,
    }


def test_an_inference_stage_is_the_input_and_channels_pick_what_the_decoder_reads(tmp_path: Path) -> None:
    job = parse_segmentation(stage(channels=[3]), [tmp_path])
    assert job.inference is not None and job.inference.output.dataset == "pred"
    assert (job.input.path, job.input.dataset, job.input.channels) == (
        str(tmp_path / "pred.zarr"),
        "pred",
        (3,),
    )
    with_kind = stage()
    with_kind["inference"]["kind"] = "inference"
    assert parse_segmentation(with_kind, [tmp_path]).input.channels is None
    # the channels are part of the layout key: another choice never resumes an output
    other = parse_segmentation(stage(channels=[2]), [tmp_path])
    assert job.layout_key((4, 8, 8, 8), np.dtype(np.uint8)) != other.layout_key(
        (4, 8, 8, 8), np.dtype(np.uint8)
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input": {"path": "pred.zarr", "dataset": "p"}}, "input"),  # both
        ({"inference": None}, "input"),  # neither
        ({"channels": [0, 1]}, "channels"),  # binary_connected reads one
        ({"channels": [-1]}, "channels[0]"),
        ({"output": {"path": "pred.zarr", "dataset": "pred"}}, "output.dataset"),  # the stage's output
        ({"output": {"path": "em.zarr", "dataset": "raw"}}, "output.dataset"),  # the stage's input
    ],
)
def test_bad_stage_documents_name_the_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    doc = {k: v for k, v in {**stage(), **change}.items() if v is not None}
    with pytest.raises(SpecError) as caught:
        parse_segmentation(doc, [tmp_path])
    assert caught.value.field == field, caught.value


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("window", "patch_size"), [5, 17], "inference.window.patch_size"),
        (("output", "activation"), ["sigmoid", "sigmoid"], "inference.output.activation"),
        (("input", "path"), "/elsewhere/em.zarr", "inference.input.path"),
        (("kind",), "training", "inference.kind"),
    ],
)
def test_the_stage_s_own_errors_are_named_under_inference(
    tmp_path: Path, path: tuple[str, ...], value: Any, field: str
) -> None:
    doc = stage()
    where = doc["inference"]
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    with pytest.raises(SpecError) as caught:
        parse_segmentation(doc, [tmp_path])
    assert caught.value.field == field, caught.value
