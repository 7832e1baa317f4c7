"""Make the golden outputs of PyTC's watershed decoders (``golden.npz`` beside this file).

How they were made (not run by the tests; the tests only read ``golden.npz``):

    mkdir -p /tmp/pytc-v1
    git -C <PyTC mirror> archive v1.0 connectomics/utils/process.py | tar -x -C /tmp/pytc-v1
    # process.py imports connectomics.data.utils only for getSegType (cast2dtype) and three helpers
    # the watershed decoders do not use: a stub gives getSegType -> np.uint32 and None for them,
    # and empty __init__.py files make the package importable without torch
    python -m venv /tmp/pytc-venv
    /tmp/pytc-venv/bin/pip install scikit-image==0.25.2 connected-components-3d
    PYTHONPATH=/tmp/pytc-v1 /tmp/pytc-venv/bin/python tests/data/pytc_decoders/make_golden.py

with scikit-image 0.25.2 (SciPy 1.17.1, NumPy 2.4.6): PyTC v1.0 calls ``remove_small_objects(x, n)``,
which removes objects of fewer than ``n`` voxels up to scikit-image 0.25; from 0.26 the positional
``n`` becomes ``max_size`` and objects of exactly ``n`` voxels go too (a deprecation PyTC v1.0
predates). The service keeps PyTC's meaning, fewer than ``n``, as its connected-components
decoders do. Inputs are smooth random uint8 maps (PyTC's 0-255 predictions) drawn from fixed
seeds; each case stores the decoder, the input, the keyword arguments and PyTC's output, as
``<case>_decoder``, ``<case>_pred``, ``<case>_kwargs`` (JSON) and ``<case>_out``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from connectomics.utils.process import bc_watershed, bcd_watershed, binary_watershed  # PyTC v1.0
from scipy import ndimage


def smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)


def main() -> None:
    shape = (8, 24, 24)
    cases = {}
    rng = np.random.default_rng(15)
    for i in range(2):
        pred = smooth(rng, shape, (1, 1.2, 1.2))[None]
        kwargs = {"thres1": 0.75, "thres2": 0.5, "thres_small": 20, "seed_thres": 4}
        cases[f"binary{i}"] = ("binary_watershed", pred, kwargs)
    cases["binary_defaults"] = ("binary_watershed", smooth(rng, shape, (2, 3, 3))[None], {})
    for i in range(2):
        pred = np.stack([smooth(rng, shape, (1, 2, 2)), smooth(rng, shape, (1, 1, 1))])
        kwargs = {"thres1": 0.7, "thres2": 0.6, "thres3": 0.45, "thres_small": 16, "seed_thres": 3}
        cases[f"bc{i}"] = ("bc_watershed", pred, kwargs)
    for i in range(2):
        pred = np.stack(
            [smooth(rng, shape, (1, 2, 2)), smooth(rng, shape, (1, 1, 1)), smooth(rng, shape, (1, 2, 2))]
        )
        kwargs = {
            "thres1": 0.6,
            "thres2": 0.6,
            "thres3": 0.4,
            "thres4": 0.1,
            "thres5": -0.2,
            "thres_small": 10,
            "seed_thres": 3,
            "remove_small_mode": "background",
        }
        cases[f"bcd{i}"] = ("bcd_watershed", pred, kwargs)
    cases["bcd_none"] = ("bcd_watershed", cases["bcd0"][1], {**cases["bcd0"][2], "remove_small_mode": "none"})
    fns = {"binary_watershed": binary_watershed, "bc_watershed": bc_watershed, "bcd_watershed": bcd_watershed}
    out = {}
    for name, (decoder, pred, kwargs) in cases.items():
        labels = fns[decoder](pred, **kwargs)
        out[f"{name}_decoder"] = np.array(decoder)
        out[f"{name}_pred"] = pred
        out[f"{name}_kwargs"] = np.array(json.dumps(kwargs))
        out[f"{name}_out"] = labels.astype(np.uint32)
        print(name, decoder, kwargs, "objects:", len(np.unique(labels)) - 1)
    np.savez_compressed(Path(__file__).with_name("golden.npz"), **out)


if __name__ == "__main__":
    main()
