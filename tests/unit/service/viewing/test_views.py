"""What a view shows (service.viewing): layers found from a job's document in both output layouts
(an array with its OME entry on the parent group, and an OME image group with a pyramid), the
neuroglancer state at the right voxel size, place and shaders, and slice previews."""

from __future__ import annotations

import io
import json
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from service.viewing.layers import Source, job_sources, open_layer
from service.viewing.previews import OutsideError, pick_level, preview_png
from service.viewing.views import build_view, output_view
from volumes.box import Box
from volumes.output import create_output

VOXEL = (30.0, 8.0, 8.0)


def make_input(root: Path) -> None:
    group = zarr.open_group(root / "em.zarr", mode="w")
    data = (np.arange(16 * 64 * 64) % 251).astype(np.uint8).reshape(16, 64, 64)
    group.create_array("raw", data=data, chunks=(4, 32, 32))
    scale = [{"type": "scale", "scale": list(VOXEL)}]
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    multiscale = {"axes": axes, "datasets": [{"path": "raw", "coordinateTransformations": scale}]}
    group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}


def inference_doc(roi: bool = True) -> dict:
    doc = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "output": {
            "path": "out.zarr",
            "dataset": "pred",
            "heads": [1, 2],
            "activation": ["sigmoid", "softmax"],
        },
    }
    if roi:
        doc["input"]["roi"] = {"offset": [4, 16, 32], "shape": [8, 32, 32]}
    return doc


def make_array_output(root: Path) -> None:
    """The array layout (before outputs were image groups): out.zarr/pred a (c, z, y, x) array, its
    OME entry on the container's group, the job (and so the ROI's offset) in its ``pytc`` attributes."""
    group = zarr.open_group(root / "out.zarr", mode="w")
    attrs = {"pytc": {"job": inference_doc(), "complete": True}}
    data = np.full((3, 8, 32, 32), 0.75, np.float32)
    group.create_array(
        "pred", data=data, chunks=(3, 4, 16, 16), dimension_names=("c", "z", "y", "x"), attributes=attrs
    )
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"
    ]
    scale = [{"type": "scale", "scale": [1.0, *VOXEL]}]
    entry = {"axes": axes, "datasets": [{"path": "pred", "coordinateTransformations": scale}]}
    group.attrs["ome"] = {"version": "0.5", "multiscales": [entry]}


def make_group_output(root: Path) -> None:
    """The image-group layout: out.zarr/pred a group with multiscales, levels 0 and 1 inside it."""
    group = zarr.open_group(root / "out.zarr", mode="w").create_group("pred")
    shift = [4 * VOXEL[0], 16 * VOXEL[1], 32 * VOXEL[2]]
    datasets = []
    for level, factor in enumerate((1, 2)):
        shape = (3, 8, 32 // factor, 32 // factor)
        group.create_array(str(level), data=np.full(shape, 0.5, np.float32), chunks=(3, 4, 16, 16))
        scale = [1.0, VOXEL[0], VOXEL[1] * factor, VOXEL[2] * factor]
        offset = [
            0.0,
            shift[0],
            shift[1] + (factor - 1) * VOXEL[1] / 2,
            shift[2] + (factor - 1) * VOXEL[2] / 2,
        ]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": offset}]})  # fmt: skip
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"
    ]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}


def sign(store: Path) -> str:
    return f"http://svc/stores/T{store.name}/"


@pytest.mark.parametrize("layout", ["array", "group"])
def test_a_jobs_view_places_input_and_each_head(tmp_path: Path, layout: str) -> None:
    make_input(tmp_path)
    (make_array_output if layout == "array" else make_group_output)(tmp_path)
    view = build_view("inference", inference_doc(), [tmp_path], sign)
    assert [la.source.name for la in view.layers] == ["input", "prediction"]
    prediction = view.layer("prediction")
    assert prediction is not None and prediction.base.scale_nm == VOXEL
    assert prediction.base.translation_nm == (4 * 30.0, 16 * 8.0, 32 * 8.0)
    assert len(prediction.levels) == (1 if layout == "array" else 2)
    state = view.state
    assert state["dimensions"] == {"x": [8e-9, "m"], "y": [8e-9, "m"], "z": [3e-8, "m"]}
    assert state["position"] == [32 + 16, 16 + 16, 4 + 4]  # the prediction's centre, in input voxels
    names = [layer["name"] for layer in state["layers"]]
    assert names == ["input", "prediction head 0", "prediction head 1"]
    head0, head1 = state["layers"][1:]
    assert head0["localPosition"] == [0.5] and head1["localPosition"] == [2.5]  # softmax: its foreground
    assert head0["shaderControls"]["normalized"]["range"] == [0.0, 1.0] and "emitRGBA" in head0["shader"]
    source = head0["source"]
    if layout == "array":
        assert source["url"] == "zarr3://http://svc/stores/Tout.zarr/pred/"
        assert source["transform"]["outputDimensions"]["c'"] == [1, ""]
        assert source["transform"]["matrix"][1][-1] == 4 and source["transform"]["matrix"][3][-1] == 32
        # the array's own (unitless) dimensions get the same scales: voxels map to voxels
        assert list(source["transform"]["inputDimensions"]) == ["c", "z", "y", "x"]
        assert list(source["transform"]["inputDimensions"].values()) == list(
            source["transform"]["outputDimensions"].values()
        )
        raw = state["layers"][0]["source"]["transform"]["inputDimensions"]
        assert raw == {"dim_0": [3e-8, "m"], "dim_1": [8e-9, "m"], "dim_2": [8e-9, "m"]}
    else:
        assert source == {"url": "zarr3://http://svc/stores/Tout.zarr/pred/"}  # neuroglancer reads the OME
    url = view.url("http://svc/viewer/v/pytc/")
    assert json.loads(urllib.parse.unquote(url.split("#!", 1)[1])) == state


def test_an_image_group_without_units_is_taken_in_nm(tmp_path: Path) -> None:
    make_input(tmp_path)
    make_group_output(tmp_path)
    group = zarr.open_group(tmp_path / "out.zarr" / "pred", mode="a")
    ome = group.attrs["ome"]
    for axis in ome["multiscales"][0]["axes"]:
        axis.pop("unit", None)
    group.attrs["ome"] = ome
    view = build_view("inference", inference_doc(), [tmp_path], sign)
    transform = view.state["layers"][1]["source"]["transform"]
    nm = [1e-9, "m"]
    assert transform["inputDimensions"] == {"c'": [1, ""], "z": nm, "y": nm, "x": nm}
    assert transform["outputDimensions"] == transform["inputDimensions"]


def test_labels_and_masks_are_segmentation_layers(tmp_path: Path) -> None:
    make_input(tmp_path)
    group = zarr.open_group(tmp_path / "em.zarr", mode="a")
    group.create_array("mito", data=np.zeros((16, 64, 64), np.uint32), chunks=(4, 32, 32))
    doc = {"kind": "training", "data": {"image": {"path": "em.zarr", "dataset": "raw"},
                                         "label": {"path": "em.zarr", "dataset": "mito"}}}  # fmt: skip
    view = build_view("training", doc, [tmp_path], sign)
    assert [(layer["name"], layer["type"]) for layer in view.state["layers"]] == [
        ("image", "image"), ("label", "segmentation")]  # fmt: skip
    seg = {"kind": "segmentation", "input": {"path": "em.zarr", "dataset": "raw"},
           "output": {"path": "em.zarr", "dataset": "mito"}}  # fmt: skip
    assert job_sources("segmentation", seg, [tmp_path])[-1].layer_type == "segmentation"
    pair = {"image": {"path": "em.zarr", "dataset": "raw"}, "label": {"path": "em.zarr", "dataset": "mito"}}
    several = {"kind": "training", "data": {"volumes": [pair, {**pair, "valid_mask": pair["label"]}]}}
    assert [(s.name, s.layer_type) for s in job_sources("training", several, [tmp_path])] == [
        ("image", "image"), ("label", "segmentation"),
        ("image_1", "image"), ("label_1", "segmentation"), ("mask_1", "segmentation")]  # fmt: skip


def test_a_segmentation_output_is_a_placed_label_image_with_its_pyramid(tmp_path: Path) -> None:
    """The label image a segmentation job writes (its own group: multiscales, image-label, levels 0
    and 1, the prediction's translation) is a segmentation layer at every level, where it lies."""
    make_input(tmp_path)
    labels = np.zeros((8, 32, 32), np.uint32)
    labels[:, :16] = 3
    image = create_output(
        tmp_path / "seg.zarr", "mito_seg", "zarr3", labels.shape, np.uint32, (4, 16, 16), VOXEL,
        translation=(4 * 30.0, 16 * 8.0, 32 * 8.0), levels=((1, 1, 1), (1, 2, 2)), label=True,
    )  # fmt: skip
    image.write(Box((0, 0, 0), labels.shape), labels)
    seg = {"kind": "segmentation", "input": {"path": "em.zarr", "dataset": "raw"},
           "output": {"path": "seg.zarr", "dataset": "mito_seg"}}  # fmt: skip
    view = build_view("segmentation", seg, [tmp_path], sign)
    layer = view.layer("labels")
    assert layer is not None and len(layer.levels) == 2 and layer.channels is None
    assert layer.base.scale_nm == VOXEL and layer.base.translation_nm == (4 * 30.0, 16 * 8.0, 32 * 8.0)
    (state,) = [la for la in view.state["layers"] if la["name"] == "labels"]
    assert state["type"] == "segmentation"
    assert state["source"] == {"url": "zarr3://http://svc/stores/Tseg.zarr/mito_seg/"}
    rgb = np.asarray(Image.open(io.BytesIO(preview_png(layer, 6, view.global_nm))))
    assert rgb.shape[:2] == (32, 32) and rgb[0].max() > 0 and (rgb[-1] == 0).all()


def test_an_agglomeration_with_several_thresholds_is_a_segmentation_layer_per_threshold(
    tmp_path: Path,
) -> None:
    """affinity_agglomerate with several thresholds writes ``<dataset>/threshold_<t>`` per threshold:
    the job's view shows each as its own segmentation layer, ``labels <t>``."""
    make_input(tmp_path)
    labels = np.zeros((8, 32, 32), np.uint32)
    for t in ("0.1", "0.3"):
        image = create_output(
            tmp_path / "seg.zarr", f"cells/threshold_{t}", "zarr3", labels.shape, np.uint32, (4, 16, 16),
            VOXEL, label=True,
        )  # fmt: skip
        image.write(Box((0, 0, 0), labels.shape), labels + 1)
    seg = {"kind": "segmentation", "input": {"path": "em.zarr", "dataset": "raw"},
           "decoder": {"name": "affinity_agglomerate", "thresholds": [0.1, 0.3]},
           "output": {"path": "seg.zarr", "dataset": "cells"}}  # fmt: skip
    view = build_view("segmentation", seg, [tmp_path], sign)
    for t in ("0.1", "0.3"):
        layer = view.layer(f"labels {t}")
        assert layer is not None and layer.source.node == f"cells/threshold_{t}"
        (state,) = [la for la in view.state["layers"] if la["name"] == f"labels {t}"]
        assert state["type"] == "segmentation"
    assert view.layer("labels") is None and not view.notes


def test_an_input_placed_by_its_ome_translation_is_drawn_there(tmp_path: Path) -> None:
    make_input(tmp_path)
    group = zarr.open_group(tmp_path / "em.zarr", mode="a")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"].append(
        {"type": "translation", "translation": [300.0, 80.0, 0.0]}
    )
    group.attrs["ome"] = ome
    view = build_view("inference", inference_doc(), [tmp_path], sign)
    raw = view.layer("input")
    assert raw is not None and raw.base.translation_nm == (300.0, 80.0, 0.0)
    matrix = view.state["layers"][0]["source"]["transform"]["matrix"]
    assert [row[-1] for row in matrix] == [10.0, 10.0, 0.0]  # in voxels: 300 / 30, 80 / 8


def test_paths_outside_the_roots_or_missing_are_left_out(tmp_path: Path) -> None:
    make_input(tmp_path)
    doc = inference_doc()
    doc["input"]["path"] = "/etc"
    view = build_view("inference", doc, [tmp_path], sign)
    assert view.layers == [] and view.state == {"layers": []}
    view = build_view("inference", inference_doc(), [tmp_path], sign)  # the output is not written yet
    assert [la.source.name for la in view.layers] == ["input"] and "prediction" in view.notes[0]


def test_an_output_alone_shows_the_job_that_wrote_it(tmp_path: Path) -> None:
    make_input(tmp_path)
    make_array_output(tmp_path)
    view = output_view(str(tmp_path / "out.zarr"), "pred", [tmp_path], sign)
    assert [la.source.name for la in view.layers] == ["input", "prediction"]
    with pytest.raises(Exception, match="dataset"):
        output_view(str(tmp_path / "out.zarr"), "nothing", [tmp_path], sign)


def test_previews_take_the_coarsest_level_with_enough_pixels_and_line_up(tmp_path: Path) -> None:
    make_input(tmp_path)
    make_group_output(tmp_path)
    view = build_view("inference", inference_doc(), [tmp_path])
    prediction, raw = view.layer("prediction"), view.layer("input")
    assert prediction is not None and raw is not None
    assert pick_level(prediction, px=16).path == "pred/1" and pick_level(prediction, px=32).path == "pred/0"
    image = Image.open(io.BytesIO(preview_png(prediction, 6, view.global_nm)))
    assert image.size == (32, 32) and np.asarray(image).max() == 127  # 0.5 of [0, 1]
    plane = np.asarray(Image.open(io.BytesIO(preview_png(raw, 6, view.global_nm))))
    assert plane.shape == (64, 64) and plane[0, 1] == (6 * 64 * 64 + 1) % 251
    with pytest.raises(OutsideError):
        preview_png(prediction, 2, view.global_nm)  # the ROI starts at plane 4


def test_label_previews_colour_each_id(tmp_path: Path) -> None:
    labels = np.zeros((1, 4, 8, 8), np.uint32)
    labels[0, :, :4] = 7
    zarr.open_group(tmp_path / "seg.zarr", mode="w").create_array("seg", data=labels, chunks=(1, 4, 8, 8))
    layer = open_layer(Source("labels", tmp_path / "seg.zarr", "seg", "segmentation"))
    rgb = np.asarray(Image.open(io.BytesIO(preview_png(layer, 1, (1.0, 1.0, 1.0)))))
    assert rgb.shape == (8, 8, 3) and (rgb[6] == 0).all() and rgb[0].max() > 0
