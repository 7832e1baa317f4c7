"""A job's view: its layers opened, and the neuroglancer link over signed store links.

For a job the service knows, its document says what to show (:func:`job_view`). For an output alone
(``pytc view OUTPUT``, e.g. a ``pytc run`` output), the job that wrote it is read back from the
output's own ``pytc`` attributes, so the view shows its input beside it too (:func:`output_view`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.documents.sections import located
from service.errors import SpecError
from service.viewing.layers import Layer, Source, job_sources, open_layer, open_layers
from service.viewing.neuroglancer import view_state, view_url, viewable
from volumes.detect import list_datasets, node_kind
from volumes.errors import VolumeError
from volumes.files import read_json_object

SignStore = Callable[[Path], str]  # a store's signed base URL, ending with '/'


@dataclass(frozen=True)
class View:
    """What a view shows: ``layers`` (opened), ``notes`` for what could not be shown, the state."""

    layers: list[Layer]
    notes: list[str]
    state: dict[str, Any] = field(default_factory=dict)

    def url(self, neuroglancer: str) -> str:
        return view_url(neuroglancer, self.state)

    def layer(self, name: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.source.name == name), None)

    @property
    def global_nm(self) -> tuple[float, float, float]:
        return self.layers[0].base.scale_nm if self.layers else (1.0, 1.0, 1.0)


def build_view(
    kind: str, spec: Mapping[str, Any], roots: Sequence[Path], sign: SignStore | None = None
) -> View:
    """The view of a job of ``kind`` with document ``spec``; ``sign`` None leaves the state empty
    (previews need the layers only)."""
    layers, notes = open_layers(job_sources(kind, spec, roots))
    for layer in layers:
        if not viewable(layer):
            reason = (
                "the viewer's layers are not offered for precomputed outputs yet (open the folder's "
                "info in neuroglancer as a precomputed:// source)"
                if layer.format == "precomputed"
                else f"neuroglancer does not read {layer.format}"
            )
            notes.append(f"{layer.source.name}: {reason}; previews only")
    state = view_state(layers, lambda la: sign(la.source.store), spec) if sign is not None else {}
    return View(layers, notes, state)


def output_view(path: str, dataset: str | None, roots: Sequence[Path], sign: SignStore | None = None) -> View:
    """The view of the output at ``path`` (``dataset`` inside it): with the job that wrote it, when
    its attributes record one; else the output alone. SpecError names ``path`` or ``dataset``."""
    store, node = located(path, dataset, roots, "output")
    directory = Path(store) / (node or "")
    kind = node_kind(directory) if directory.is_dir() else None
    if kind is None:
        found = list_datasets(Path(store)) if Path(store).is_dir() else []
        raise SpecError(
            "dataset", f"{directory} is no zarr or N5 array or image group; datasets there: {found}"
        )
    recorded = _recorded_job(directory, kind[0])
    if recorded is not None:
        view = build_view(str(recorded.get("kind", "inference")), recorded, roots, sign)
        if any(la.source.store == Path(store) and la.source.node == (node or "") for la in view.layers):
            return view
    source = Source("output", Path(store), node or "", "image")
    try:
        layer = open_layer(source)
    except VolumeError as err:
        raise SpecError("path", str(err)) from err
    if layer.dtype.startswith(("uint", "int")) and layer.dtype not in ("uint8", "int8"):
        layer = Layer(Source("labels", source.store, source.node, "segmentation"), *_rest(layer))
    state = view_state([layer], lambda la: sign(la.source.store), {}) if sign is not None else {}
    return View([layer], [], state)


def _rest(layer: Layer) -> tuple[Any, ...]:
    return (layer.format, layer.image_group, layer.levels, layer.dtype, layer.channels)


def _recorded_job(directory: Path, fmt: str) -> Mapping[str, Any] | None:
    """The job document recorded in the ``pytc`` attributes of an array (or of an image group's
    first level)."""
    for candidate in (directory, directory / "0"):
        if fmt == "zarr3":
            attrs = (read_json_object(candidate / "zarr.json") or {}).get("attributes")
        elif fmt == "zarr2":
            attrs = read_json_object(candidate / ".zattrs")
        else:
            attrs = read_json_object(candidate / "attributes.json")
        record = attrs.get("pytc") if isinstance(attrs, dict) else None
        job = record.get("job") if isinstance(record, dict) else None
        if isinstance(job, dict):
            return job
    return None
