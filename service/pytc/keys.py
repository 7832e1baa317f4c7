"""Which PyTC v1 keys the conversion reads, which it leaves aside on purpose, and the refusal.

Every key of PyTC's tree is in exactly one of three places: read by :mod:`service.pytc.convert` or
:mod:`service.pytc.training` (mapped, or refused when set to what we cannot honour), listed in
:data:`IGNORED` (keys that change no value of an output or of training: logging, GPUs, paths of
other modes), or listed in :data:`REFUSED_UNLESS_DEFAULT` (we do not do it; a non-default value is
refused naming the key). ``tests/unit/service/pytc/test_keys.py`` checks that every key of the
default tree is accounted for.
"""

from __future__ import annotations

from typing import Any

from workers.errors import SpecError

# Keys that do not change what a job computes, or belong to PyTC's process and not to the result.
IGNORED: dict[str, str] = {
    "SYSTEM.NUM_CPUS": "data-loader processes",
    "SYSTEM.DISTRIBUTED": "how PyTC spreads its process; the service distributes by blocks",
    "SYSTEM.PARALLEL": "DP or DDP wrapping; checkpoints load either way",
    "SYSTEM.DISTRIBUTED_BACKEND": "NCCL or Gloo",
    "SYSTEM.DEBUG": "PyTC's debug printing",
    "MONITOR.LOG_OPT": "TensorBoard logging",
    "MONITOR.VIS_OPT": "TensorBoard images",
    "MONITOR.ITERATION_NUM": "logging intervals",
    "MODEL.FINETUNE": "a suffix of PyTC's saved file names",
    "MODEL.MIXED_PRECESION": "PyTC turns it off unless DDP; compute.precision is ours",
    "MODEL.EXACT": "how PyTC matches a pre-trained model's keys; checkpoints load by name here",
    "MODEL.SIZE_MATCH": "as MODEL.EXACT",
    "MODEL.PRE_MODEL_LAYER": "as MODEL.EXACT",
    "MODEL.PRE_MODEL_ITER": "an iteration number PyTC prints",
    "MODEL.EMBEDDING": "unused by v1's models",
    "MODEL.HEAD_DEPTH": "unused by v1's models",
    "DATASET.DISTRIBUTED": "splits files among DDP ranks",
    "DATASET.DATA_CHUNK_NUM": "PyTC's chunks of a tile set; the service cuts its own blocks (seam-free)",
    "DATASET.DATA_CHUNK_IND": "as DATASET.DATA_CHUNK_NUM",
    "DATASET.CHUNK_IND_SPLIT": "as DATASET.DATA_CHUNK_NUM",
    "DATASET.DATA_CHUNK_STRIDE": "as DATASET.DATA_CHUNK_NUM",
    "DATASET.DATA_CHUNK_ITER": "iterations per tile chunk of PyTC's training; sampling covers the volume",
    "INFERENCE.TEST_NUM": "PyTC's split of a volume list among processes",
    "INFERENCE.TEST_ID": "as INFERENCE.TEST_NUM",
    "SOLVER.ITERATION_VAL": "validation needs validation.* (not in PyTC v1's training loop)",
    "SOLVER.ITERATION_STEP": "gradient accumulation steps: refused when not 1 (see convert)",
    "AUGMENTOR.ADDITIONAL_TARGETS_NAME": "which arrays follow the image; label and mask always do here",
    "AUGMENTOR.ADDITIONAL_TARGETS_TYPE": "as AUGMENTOR.ADDITIONAL_TARGETS_NAME",
}

# Keys the service does not do: refused with the reason when set to anything but PyTC's default,
# those of training only in a training conversion, those of inference only with --inference.
REFUSED_UNLESS_DEFAULT: dict[str, str] = {
    "DATASET.DATA_SCALE": (
        "PyTC zooms the whole input by it with a cubic spline (scipy.ndimage.zoom(volume, DATA_SCALE, "
        "order=3): a prefilter over whole lines of the volume, not computable block by block) and "
        "predicts and writes at that zoomed size; zoom the volume so yourself, name it, and set "
        "DATA_SCALE [1.0, 1.0, 1.0]"
    ),
    "DATASET.IMAGE_SCALE": "as DATASET.DATA_SCALE",
    "DATASET.SCALE_FACTOR": "super-resolution is not a job kind here",
    "DATASET.ENSURE_MIN_SIZE": "volumes smaller than a window are padded, never resized",
    "DATASET.DROP_CHANNEL": "multi-channel inputs are not read",
    "DATASET.LOAD_2D": (
        "PyTC then reads each 2D image as its own volume (readimg_as_vol); store the images as one "
        "stack (TIFF, HDF5, zarr) and run a 2D model over it slice by slice"
    ),
    "DATASET.DATA_COORD_RANGE": "give the region as input.roi instead",
    "MODEL.RETURN_FEATS": "feature maps are not returned",
}
REFUSED_IN_TRAINING: dict[str, str] = {
    "DATASET.LABEL_SCALE": "as DATASET.DATA_SCALE",
    "DATASET.VALID_MASK_SCALE": "as DATASET.DATA_SCALE",
    "DATASET.LABEL_VAST": "VAST colour labels are not decoded",
    "DATASET.LABEL_MAG": "label magnitudes are not scaled",
    "DATASET.VAL_IMAGE_NAME": "validation volumes: add validation.* to the converted document",
    "DATASET.VAL_LABEL_NAME": "as DATASET.VAL_IMAGE_NAME",
    "DATASET.VAL_VALID_MASK_NAME": "as DATASET.VAL_IMAGE_NAME",
    "MODEL.TARGET_OPT_MULTISEG_SPLIT": "multi-segmentation splits are not a target here",
    "MODEL.REGU_OPT": (
        "PyTC adds regularisation losses between heads (BinaryReg, FgDT and ContourDT consistency, "
        "NonoverlapReg); our trainer's loss is the targets' own (bce, dice, ce) only"
    ),
    "MODEL.REGU_TARGET": "as MODEL.REGU_OPT",
    "MODEL.REGU_WEIGHT": "as MODEL.REGU_OPT",
    "MODEL.LOSS_KWARGS_KEY": (
        "PyTC passes these keyword arguments to its loss classes (e.g. WeightedCE's class weights); our "
        "trainer's losses take none"
    ),
    "MODEL.LOSS_KWARGS_VAL": "as MODEL.LOSS_KWARGS_KEY",
    "SOLVER.BIAS_LR_FACTOR": "biases learn at the base rate (PyTC's default 1.0)",
    "SOLVER.WEIGHT_DECAY_BIAS": "biases have no weight decay (PyTC's default 0.0)",
    "SOLVER.WEIGHT_DECAY_NORM": "normalisation layers have no weight decay (PyTC's default 0.0)",
    "SOLVER.BETAS": "Adam's betas are PyTorch's defaults",
    "SOLVER.SWA.ENABLED": "stochastic weight averaging is not done (SWA checkpoints load for inference)",
    "AUGMENTOR.SMOOTH": "label smoothing after augmentation is not done",
    "AUGMENTOR.COPYPASTE.ENABLED": "copy-paste augmentation is not done",
}
REFUSED_IN_INFERENCE: dict[str, str] = {
    "INFERENCE.TENSORSTORE_PATH": "name the volume as input.path (zarr, N5) instead",
    "INFERENCE.OUTPUT_SCALE": "outputs are not resized (PyTC resizes each window's output, linearly)",
    "INFERENCE.DATA_SCALE": "as DATASET.DATA_SCALE",
    "INFERENCE.MODEL_RETURN_FEATS": "feature maps are not returned",
    "INFERENCE.DO_EVAL": "the network always runs in eval mode (BatchNorm with its running statistics)",
    "INFERENCE.UNPAD": "the output always covers the input region, without the padding",
}


def refuse(key: str, reason: str, value: Any = None) -> SpecError:
    """The SpecError of a PyTC key we cannot honour: its dotted name, its value and why."""
    shown = f" (set to {value!r})" if value is not None else ""
    return SpecError(key, f"cannot be honoured{shown}: {reason}")


# --inference copies these over DATASET.* and MODEL.* (PyTC's update_inference_cfg); they are read there.
MERGED_BY_INFERENCE = (
    "INFERENCE.INPUT_PATH", "INFERENCE.IMAGE_NAME", "INFERENCE.PAD_SIZE", "INFERENCE.IS_ABSOLUTE_PATH",
    "INFERENCE.DO_CHUNK_TITLE", "INFERENCE.INPUT_SIZE", "INFERENCE.OUTPUT_SIZE",
)  # fmt: skip

# Training keys our trainer approximates: random augmentation parameters it draws its own way. The
# augmentations it does not have are named in the conversion's notes when PyTC's config enables them.
APPROXIMATED_IN_TRAINING: dict[str, str] = {
    "AUGMENTOR.*.SKIP": "label and mask follow the image through every augmentation, as PyTC's defaults",
    "AUGMENTOR.*.P": "probabilities are our trainer's, except MISSINGSECTION.P and ELASTIC.P (mapped)",
    "AUGMENTOR.ELASTIC.SIGMA": "our elastic field's smoothness is its own",
    "AUGMENTOR.MISSINGSECTION.NUM_SECTION": "our missing-section augmentation drops one section",
    "AUGMENTOR.RESCALE.*": "not among our augmentations (noted when enabled)",
    "AUGMENTOR.MISSINGPARTS.*": "as AUGMENTOR.RESCALE",
    "AUGMENTOR.MISALIGNMENT.*": "as AUGMENTOR.RESCALE",
    "AUGMENTOR.MOTIONBLUR.*": "as AUGMENTOR.RESCALE",
    "AUGMENTOR.CUTBLUR.*": "as AUGMENTOR.RESCALE",
    "AUGMENTOR.CUTNOISE.*": "as AUGMENTOR.RESCALE",
    "AUGMENTOR.COPYPASTE.*": "refused when enabled",
    "DATASET.REJECT_SAMPLING.DIVERSITY": "PyTC v1 does not use it",
    "DATASET.LABEL_BINARY": "binary targets are label > 0: what LABEL_BINARY's // 255 gives 0/255 labels",
    "DATASET.REDUCE_LABEL": "instance ids are not renumbered first (the targets do not depend on it)",
    "DATASET.VAL_PAD_SIZE": "validation volumes are refused (DATASET.VAL_IMAGE_NAME)",
    "MODEL.WEIGHT_OPT": "class-rebalanced BCE weights are not computed (noted when asked for)",
    "SOLVER.SWA.*": "refused when SOLVER.SWA.ENABLED",
}

# Checked where the input is opened (admission), not from the config alone.
CHECKED_AT_ADMISSION: dict[str, str] = {
    "DATASET.NORMALIZE_RANGE": (
        "PyTC leaves uint8 volumes as they are (the same here) and stretches others to their own min and "
        "max, a whole-volume statistic: a non-uint8 input is refused naming this key"
    ),
}
