"""Checks of a parsed training job against the data it names, before anything runs or is written.

Image and label (and valid mask) exist and have the same spatial shape, the label holds integer
ids, the ROI lies inside, the patch fits in the sampled region, a validation volume is sound and
the starting checkpoints exist and may be files torch wrote (from their bytes: not empty, not cut
short). Each failure is a :class:`~service.errors.SpecError` naming the field. Whether the model
fits its targets and its starting weights is checked on a worker
(:func:`workers.training.tasks.inspect_training`), the only place with torch; so is whether the
worker's device runs ``compute.precision`` natively (:func:`check_precision`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from models.torch_files import torch_file_problem
from volumes.box import Box
from volumes.errors import VolumeError, VolumeFormatError, VolumeNotFoundError
from volumes.open import open_volume
from volumes.volume import Volume
from workers.errors import SpecError
from workers.limits import Limits, check_input_shape
from workers.training.job import TrainingJob, TrainingModelInfo, VolumeRef


def validate_training_against_data(job: TrainingJob, limits: Limits | None = None) -> None:
    """Every data check of a training job (see the module docstring); with ``limits``, the
    image's claimed shape is within them too. Several volumes (``data.volumes``) are each checked,
    named by their place, and must have as many channels as the first."""
    first_channels: tuple[int, list[int]] | None = None
    for index, volume in enumerate(job.data.volumes):
        where = job.data.where(index)
        image = _open(volume.image, f"{where}.image")
        spatial = _spatial_image(image, f"{where}.image")
        if limits is not None:
            check_input_shape(image.shape, limits, f"{where}.image", volume.image.path)
        label = _open(volume.label, f"{where}.label")
        _check_label(label, spatial, f"{where}.label", f"{where}.image")
        if volume.valid_mask is not None:
            mask = _open(volume.valid_mask, f"{where}.valid_mask")
            _check_same_shape(mask, spatial, f"{where}.valid_mask", f"{where}.image")
        region = _check_roi(volume.roi, spatial, f"{where}.roi")
        _check_patch(
            job.sampling.patch_size, region, "sampling.patch_size", f"{where}.roi" if volume.roi else where
        )
        channels = image.shape[0] if image.ndim == 4 else 1
        if first_channels is None:
            first_channels = (channels, list(image.shape))
        elif channels != first_channels[0]:
            raise SpecError(
                f"{where}.image",
                f"{channels} channel(s) (shape {list(image.shape)}), the first volume's image has "
                f"{first_channels[0]} (shape {first_channels[1]}); every volume needs the same",
            )
    assert first_channels is not None
    channels, shape = first_channels
    config = job.model.config_dict()
    for key in ("in_channels", "in_channel"):
        if key in config and config[key] != channels:
            raise SpecError(
                f"model.config.{key}",
                f"{config[key]!r} input channel(s), the image has {channels} (shape {shape})",
            )
    if job.validation is not None:
        v = job.validation
        v_spatial = _spatial_image(_open(v.image, "validation.image"), "validation.image")
        _check_label(_open(v.label, "validation.label"), v_spatial, "validation.label", "validation.image")
        v_region = _check_roi(v.roi, v_spatial, "validation.roi")
        _check_patch(job.sampling.patch_size, v_region, "sampling.patch_size", "validation")
    for field, path in (
        ("checkpoint.resume_from", job.checkpoint.resume_from),
        ("model.init", job.model.init),
    ):
        if path is not None and not Path(path).is_file():
            raise SpecError(field, f"{path} does not exist or is not a file")
        if path is not None and (problem := torch_file_problem(path)) is not None:
            raise SpecError(field, f"{path} {problem}")


def validate_training_against_model(job: TrainingJob, info: TrainingModelInfo) -> None:
    """The worker's pre-flight answer agrees with the job (it raises itself when it does not)."""
    if info.out_channels != job.out_channels:
        raise SpecError(
            "model.config.out_channels",
            f"the model gives {info.out_channels} channel(s), the targets need {job.out_channels}",
        )


def check_precision(job: TrainingJob, unsupported: Mapping[str, str]) -> None:
    """``compute.precision`` runs natively on the worker's device: ``unsupported`` maps each
    precision it does not to the reason (:func:`workers.runtime.precision.unsupported_precisions`)."""
    reason = unsupported.get(job.compute.precision)
    if reason is not None:
        raise SpecError("compute.precision", reason)


def _open(ref: VolumeRef, field: str) -> Volume:
    try:
        return open_volume(ref.path, ref.dataset)
    except VolumeNotFoundError as err:
        raise SpecError(field, f"not found: {err}") from None
    except (VolumeFormatError, VolumeError, OSError) as err:
        raise SpecError(field, f"cannot be opened as a volume: {err}") from None


def _spatial_image(volume: Volume, field: str) -> tuple[int, int, int]:
    if volume.ndim not in (3, 4):
        raise SpecError(
            field, f"expected a 3D (z, y, x) or 4D (c, z, y, x) array, got shape {list(volume.shape)}"
        )
    if volume.dtype.kind not in "biuf":
        raise SpecError(field, f"expected a numeric array, got dtype {volume.dtype}")
    z, y, x = (int(s) for s in volume.shape[-3:])
    return z, y, x


def _check_label(label: Volume, spatial: tuple[int, int, int], field: str, image_field: str) -> None:
    if label.dtype.kind not in "biu":
        raise SpecError(field, f"expected integer ids (instance or class), got dtype {label.dtype}")
    _check_same_shape(label, spatial, field, image_field)


def _check_same_shape(volume: Volume, spatial: tuple[int, int, int], field: str, image_field: str) -> None:
    if tuple(volume.shape) != spatial:
        raise SpecError(
            field,
            f"shape {list(volume.shape)} differs from the spatial shape of {image_field} {list(spatial)} "
            "(z, y, x); they must be equal",
        )


def _check_roi(roi: Box | None, spatial: tuple[int, int, int], field: str) -> tuple[int, ...]:
    if roi is None:
        return spatial
    if not Box.of_shape(spatial).contains(roi):
        raise SpecError(
            field,
            f"box offset {list(roi.offset)} shape {list(roi.shape)} (end {list(roi.end)}) reaches outside "
            f"the volume of shape {list(spatial)} (z, y, x)",
        )
    return roi.shape


def _check_patch(patch: tuple[int, int, int], region: tuple[int, ...], field: str, where: str) -> None:
    if any(p > r for p, r in zip(patch, region, strict=True)):
        raise SpecError(
            field,
            f"{list(patch)} is larger than the region sampled from {where}, {list(region)} (z, y, x), "
            "on some axis",
        )
