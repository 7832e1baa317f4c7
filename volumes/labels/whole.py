"""The whole volume decoded at once, in memory: what the blockwise run must equal, and the
benchmark's in-memory reference (``connected-components-3d`` on the whole volume, as PyTC's own
decoders call ``skimage.measure.label``; the numbers are the same)."""

from __future__ import annotations

import numpy as np

from volumes.labels.blockcc import affinity_labels, components
from volumes.labels.decoders import Decoder, check_background, dilate, foreground


def decode_in_memory(pred: np.ndarray, decoder: Decoder) -> np.ndarray:
    """The whole volume decoded at once, PyTC's numbering (gaps where small objects were removed),
    uint64. What the blockwise run must equal; the benchmark's in-memory reference."""
    if decoder.watershed:
        from volumes.labels.watershed import decode_watershed

        return decode_watershed(pred, decoder)
    if decoder.name == "affinity_connected":
        whole = (True, True, True)
        labels, _ = affinity_labels(pred, decoder, pred.shape[1:], whole, whole)
        labels = labels.astype(np.uint64)
    else:
        labels = components(foreground(decoder, pred), decoder.connectivity).astype(np.uint64)
    if decoder.dilation is not None:
        labels = dilate(labels, decoder.dilation)
    if decoder.per_slice:
        for z in range(labels.shape[0]):
            sizes = np.bincount(labels[z].ravel())
            if sizes.shape[0] > 1:  # a slice without objects is left as it is
                check_background(decoder, int(sizes[0]))
            small = sizes < decoder.thres_small
            small[0] = False
            labels[z][small[labels[z]]] = 0
        return labels
    sizes = np.bincount(labels.ravel())
    check_background(decoder, int(sizes[0]))
    drop = decoder.removes(sizes)
    drop[0] = False
    labels[drop[labels]] = 0
    return labels


def sequential(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 1..N in the order of their numbers (``relabel: sequential``)."""
    present = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    present[labels.ravel()] = True
    present[0] = False
    lut = np.cumsum(present).astype(np.uint64) * present
    return lut[labels]
