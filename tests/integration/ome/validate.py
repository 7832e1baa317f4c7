"""Run inside the validators' virtual environment (tests/integration/test_ome_validators.py):
each image path given on the command line is validated by ome-zarr-models and read by ome-zarr-py's
Reader (as napari reads it); one JSON line per path on stdout."""

from __future__ import annotations

import json
import sys
import warnings


def check(path: str) -> dict[str, object]:
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models import open_ome_zarr

    found: dict[str, object] = {"path": path}
    group = zarr.open_group(path, mode="r")
    try:
        model = open_ome_zarr(group)
        found["model"] = type(model).__module__ + "." + type(model).__name__
    except Exception as err:
        found["model_error"] = f"{type(err).__name__}: {err}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            location = parse_url(path)
            nodes = list(Reader(location)()) if location is not None else []
        image = nodes[0] if nodes else None
        found["reader_shapes"] = [list(level.shape) for level in image.data] if image is not None else None
        transforms = image.metadata.get("coordinateTransformations") if image is not None else None
        found["reader_transforms"] = transforms
    except Exception as err:
        found["reader_error"] = f"{type(err).__name__}: {err}"
    return found


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(check(arg)), flush=True)
