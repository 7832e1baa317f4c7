"""A neuroglancer state (and link) showing a job's layers, read from the stores over signed links.

Global dimensions are x, y, z in metres at the voxel size of the first layer (the input, when there
is one), so neuroglancer shows nm; the position is the centre of the job's output (else of its first
layer). Each layer's source is the store URL of its group or array:

- an OME image group: the group's URL; neuroglancer reads its ``multiscales`` (every level, scale,
  translation) itself, the channel axis becoming the local dimension ``c'``;
- an array: the array's URL and an explicit transform (neuroglancer would see a unitless array):
  ``c'`` (when there are channels), then z, y, x at the array's voxel size, translated to where the
  array lies.

A prediction becomes one image layer per head (``output.heads``), each showing its head's channel
with a colour of its own over the data range its activation gives; labels and masks are
segmentation layers.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from service.viewing.layers import Layer
from volumes.files import read_json_object

SCHEMES = {"zarr3": "zarr3", "zarr2": "zarr2", "n5": "n5"}
HEAD_COLORS = ("#00ff00", "#ff00ff", "#00ffff", "#ffff00", "#ff8000", "#0080ff")
IMAGE_SHADER = "#uicontrol invlerp normalized\nvoid main() { emitGrayscale(normalized()); }\n"
HEAD_SHADER = (
    "#uicontrol invlerp normalized\n"
    '#uicontrol vec3 color color(default="{color}")\n'
    "void main() {{ float v = normalized(); emitRGBA(vec4(color * v, v)); }}\n"
)
# What an activation leaves in a float output: the range a head's shader maps to black..colour.
ACTIVATION_RANGES = {"sigmoid": (0.0, 1.0), "softmax": (0.0, 1.0), "tanh": (-1.0, 1.0)}
# neuroglancer's own fragment encoding keeps these characters as they are
_SAFE = "~@#$&()*!+=:;,.?/'"

StoreUrl = Callable[[Layer], str]  # the signed base URL of a layer's store, ending with '/'


def viewable(layer: Layer) -> bool:
    return layer.format in SCHEMES


def view_state(layers: Sequence[Layer], store_url: StoreUrl, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The neuroglancer state of ``layers`` (the viewable ones), ``spec`` the job's document."""
    shown = [layer for layer in layers if viewable(layer)]
    if not shown:
        return {"layers": []}
    voxel = shown[0].base.scale_nm
    centre_of = next((la for la in shown if la.source.name in ("prediction", "labels")), shown[0])
    state: dict[str, Any] = {
        "dimensions": {axis: [voxel[i] / 1e9, "m"] for axis, i in (("x", 2), ("y", 1), ("z", 0))},
        "position": _centre(centre_of, voxel),
        "crossSectionScale": max(
            1.0, max(centre_of.base.shape[-2:]) * centre_of.base.scale_nm[2] / voxel[2] / 512
        ),
        "projectionScale": max(centre_of.base.shape[-3:]) * 2.0,
        "layers": [],
        "layout": "4panel",
    }
    for layer in shown:
        source = _source(layer, store_url(layer))
        if layer.source.name == "prediction":
            state["layers"].extend(_head_layers(layer, source, spec))
        elif layer.source.layer_type == "segmentation":
            state["layers"].append({"type": "segmentation", "name": layer.source.name, "source": source})
        else:
            state["layers"].append(
                {"type": "image", "name": layer.source.name, "source": source, "shader": IMAGE_SHADER}
            )
    state["selectedLayer"] = {"layer": state["layers"][-1]["name"], "visible": False}
    return state


def view_url(base: str, state: Mapping[str, Any]) -> str:
    """``base`` (a neuroglancer page) opening ``state``."""
    text = json.dumps(state, separators=(",", ":"))
    return f"{base}#!{urllib.parse.quote(text, safe=_SAFE)}"


def _centre(layer: Layer, voxel: Sequence[float]) -> list[float]:
    base = layer.base
    spatial = base.shape[-3:]
    zyx = [(base.translation_nm[i] + spatial[i] * base.scale_nm[i] / 2) / voxel[i] for i in range(3)]
    return [zyx[2], zyx[1], zyx[0]]


def _source(layer: Layer, store_url: str) -> dict[str, Any]:
    url = f"{SCHEMES[layer.format]}://{store_url}{layer.source.node}".rstrip("/") + "/"
    if layer.image_group:
        return _group_source(layer, url)
    base = layer.base
    names: dict[str, list[Any]] = {"c'": [1, ""]} if layer.channels is not None else {}
    for i, axis in enumerate("zyx"):
        names[axis] = [base.scale_nm[i] / 1e9, "m"]
    rank = len(names)
    shift = [0.0] * (rank - 3) + [t / s for t, s in zip(base.translation_nm, base.scale_nm, strict=True)]
    matrix = [[1.0 if c == r else 0.0 for c in range(rank)] + [shift[r]] for r in range(rank)]
    transform: dict[str, Any] = {"outputDimensions": names, "matrix": matrix}
    source_names = source_dimension_names(layer, rank)
    if source_names is not None:
        # The array's own dimensions are unitless to neuroglancer: given the same scales as the
        # output ones, the matrix maps voxels to voxels (else a unitless 1 would be 1 m per voxel).
        transform["inputDimensions"] = dict(zip(source_names, names.values(), strict=True))
    return {"url": url, "transform": transform}


def _group_source(layer: Layer, url: str) -> dict[str, Any]:
    """An image group's source: neuroglancer reads its multiscales; where its spatial axes have no
    unit (no voxel size was known) they are taken as nm, as everywhere else in a view (else
    neuroglancer would take a unitless 1 for a metre against the view's nm)."""
    if all(unit is not None for _, kind, unit in layer.ome_axes if kind == "space"):
        return {"url": url}
    dims: dict[str, list[Any]] = {}
    for name, kind, _ in layer.ome_axes:
        if kind == "channel":
            dims[f"{name}'"] = [1, ""]
        elif kind == "space":
            dims[name] = [1e-9, "m"]
        else:
            return {"url": url}
    rank = len(dims)
    matrix = [[1.0 if c == r else 0.0 for c in range(rank)] + [0.0] for r in range(rank)]
    return {"url": url, "transform": {"inputDimensions": dims, "outputDimensions": dims, "matrix": matrix}}


def source_dimension_names(layer: Layer, rank: int) -> list[str] | None:
    """The names neuroglancer gives an array's dimensions: zarr v3 ``dimension_names``, zarr v2
    ``_ARRAY_DIMENSIONS``, else ``dim_<i>`` (v3) or ``d<i>`` (v2), repeats numbered as it does; None
    for other formats (N5), whose transform is left to neuroglancer."""
    directory = layer.source.store / layer.source.node
    if layer.format == "zarr3":
        given, prefix = (read_json_object(directory / "zarr.json") or {}).get("dimension_names"), "dim_"
    elif layer.format == "zarr2":
        given, prefix = (read_json_object(directory / ".zattrs") or {}).get("_ARRAY_DIMENSIONS"), "d"
    else:
        return None
    raw = list(given) if isinstance(given, list) and len(given) == rank else [None] * rank
    used: set[str] = set()
    names = []
    for i, name in enumerate(raw):
        candidates = (
            (f"{prefix}{n}" for n in itertools.count(i))
            if not isinstance(name, str)
            else itertools.chain([name], (f"{name}{n}" for n in itertools.count(1)))
        )
        chosen = next(c for c in candidates if c not in used)
        used.add(chosen)
        names.append(chosen)
    return names


def _head_layers(layer: Layer, source: dict[str, Any], spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    output = spec.get("output") if isinstance(spec.get("output"), Mapping) else {}
    channels = layer.channels or 1
    heads = [int(h) for h in output.get("heads") or [channels]] if isinstance(output, Mapping) else [channels]
    activations = output.get("activation") if isinstance(output, Mapping) else None
    activations = [activations] if isinstance(activations, str) else list(activations or [])
    layers, start = [], 0
    for k, size in enumerate(heads):
        activation = activations[k] if k < len(activations) else "none"
        shown = start + (1 if activation == "softmax" and size == 2 else 0)  # a two-class softmax: foreground
        name = "prediction" if len(heads) == 1 else f"prediction head {k}"
        entry: dict[str, Any] = {
            "type": "image",
            "name": name,
            "source": source,
            "shader": HEAD_SHADER.format(color=HEAD_COLORS[k % len(HEAD_COLORS)]),
            "shaderControls": {"normalized": {"range": list(_data_range(layer.dtype, activation))}},
            "blend": "additive",
        }
        if layer.channels is not None:
            entry["localPosition"] = [shown + 0.5]
        layers.append(entry)
        start += size
    return layers


def _data_range(dtype: str, activation: str) -> tuple[float, float]:
    if dtype == "uint8":
        return (0.0, 255.0)
    return ACTIVATION_RANGES.get(activation, (0.0, 1.0))
