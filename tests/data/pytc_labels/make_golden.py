"""How ``golden.npz`` was made: PyTorch Connectomics v1's own label transforms, volume choice and
flip, run once on small arrays.

Not run by the tests (it needs PyTC). Run once, with upstream extracted as for
``tests/data/pytc_golden/make_golden.py`` (whose module stubs it borrows)::

    PYTHONPATH=/tmp/pytc-v1:/tmp/pytc-deps python tests/data/pytc_labels/make_golden.py

It stores:

- ``labels/<i>``: small (z, y, x) instance labels (uint16, seed 0: blocks of random ids, some
  touching, some apart); ``erosion/<i>/<w>``: PyTC's ``seg_widen_border`` of each (on its float32
  copy, as PyTC's training crops are float32) for widths 1 and 2; ``dilation/<i>/<w>``: PyTC's
  ``dilate_label`` (``data_segmentation.py``) likewise.
- ``choice/shapes``, ``choice/sample``: volume shapes and a sample size; ``choice/sample_num``:
  PyTC's ``VolumeDataset(mode='train')`` count of positions per volume (stride 1, as ``get_dataset``
  sets it in training); ``choice/pytc_counts``: how often its own ``_get_pos_train`` picked each
  volume in ``choice/draws`` draws (``random.seed(0)``).
- ``flip/cube``: a (4, 4, 4) array of distinct values; ``flip/rules``: the 32 rules of PyTC's
  ``Flip(do_ztrans=1)``; ``flip/out``: ``flip_and_swap(cube, rule)`` of each.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pytc_golden"))
from make_golden import stub_unused_modules  # noqa: E402


def labels() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for shape, block in (((3, 12, 11), 3), ((2, 16, 16), 4), ((4, 9, 13), 2)):
        coarse = rng.integers(0, 6, size=tuple(-(-s // block) for s in shape[1:]))
        plane = np.kron(coarse, np.ones((block, block), dtype=np.int64))[: shape[1], : shape[2]]
        vol = np.stack([np.roll(plane, z, axis=1) for z in range(shape[0])])
        vol[rng.random(vol.shape) < 0.03] = 0  # holes
        vol[vol == 5] = 60000  # a large id
        out.append(vol.astype(np.uint16))
    return out


def main() -> None:
    stub_unused_modules()
    from connectomics.data.augmentation.flip import Flip
    from connectomics.data.dataset.dataset_volume import VolumeDataset
    from connectomics.data.utils.data_segmentation import dilate_label, seg_widen_border

    store: dict[str, np.ndarray] = {}
    for i, label in enumerate(labels()):
        store[f"labels/{i}"] = label
        for width in (1, 2):
            store[f"erosion/{i}/{width}"] = seg_widen_border(label.astype(np.float32), width).astype(
                np.uint16
            )
            store[f"dilation/{i}/{width}"] = dilate_label(label.copy(), 0, width)

    shapes = np.array([[10, 20, 30], [12, 16, 16], [9, 40, 40], [5, 9, 9]])
    sample = np.array([5, 9, 9])
    volumes = [np.zeros(tuple(s), np.uint8) for s in shapes]
    dataset = VolumeDataset(
        volumes,
        [v.copy() for v in volumes],
        sample_volume_size=sample,
        sample_label_size=sample,
        sample_stride=(1, 1, 1),
        mode="train",
        iter_num=1,
    )
    random.seed(0)
    draws = 200_000
    counts = np.zeros(len(shapes), np.int64)
    for _ in range(draws):
        counts[dataset._get_pos_train(sample)[0]] += 1
    store.update(
        {
            "choice/shapes": shapes,
            "choice/sample": sample,
            "choice/sample_num": np.asarray(dataset.sample_num),
            "choice/pytc_counts": counts,
            "choice/draws": np.array(draws),
        }
    )

    cube = np.arange(64, dtype=np.int64).reshape(4, 4, 4)
    flip = Flip(do_ztrans=1)
    rules = np.array([[(r >> b) & 1 for b in range(5)] for r in range(32)])
    store["flip/cube"] = cube
    store["flip/rules"] = rules
    store["flip/out"] = np.stack([flip.flip_and_swap(cube.copy(), rule) for rule in rules])
    np.savez_compressed(HERE / "golden.npz", **store)
    print({k: v.shape for k, v in store.items()})


if __name__ == "__main__":
    main()
