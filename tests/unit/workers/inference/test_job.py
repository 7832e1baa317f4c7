"""The layout key: what makes an output another job's, and what a rerun may change and resume."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from models.ref import ModelRef
from volumes.box import Box
from workers.inference.job import ComputeSpec, InferenceJob, InputSpec, OutputSpec, WindowSpec

SHA = "0" * 64
JOB = InferenceJob(
    InputSpec("/data/em.zarr", "raw", Box((0, 0, 0), (8, 16, 16))),
    ModelRef("torchscript", path="/data/net.pt"),
    WindowSpec((5, 9, 9), (2, 4, 4)),
    OutputSpec("/data/out.zarr", heads=(2,), activations=("sigmoid",), chunks=(4, 16, 16)),
)


def with_(part: str, **values: Any) -> InferenceJob:
    return replace(JOB, **{part: replace(getattr(JOB, part), **values)})


def test_the_key_of_an_output_already_written_stays_the_same() -> None:
    # Computed by the code before batch_size and the model's registry name left the key: outputs
    # written then must still resume, so this value may never change. They were blended with
    # MONAI's map, then called gaussian and now monai_gaussian: under that name the key is theirs;
    # the default gaussian (PyTC's map since) has a key of its own, so it never resumes them.
    assert with_("window", blending="monai_gaussian").layout_key(SHA) == "2899458687292543732b16c4"
    assert JOB.layout_key(SHA) != "2899458687292543732b16c4"


@pytest.mark.parametrize(
    "changed",
    [
        with_("window", batch_size=1),
        with_("window", batch_size=32),
        with_("window", tta_reduce="max"),  # one variant: nothing to reduce
        with_("model", name="mito-v1"),  # the same file, found through the registry
        with_("compute", device="cuda"),
        with_("output", overwrite=True),
    ],
)
def test_what_changes_no_value_keeps_the_key(changed: InferenceJob) -> None:
    assert changed.layout_key(SHA) == JOB.layout_key(SHA)


@pytest.mark.parametrize(
    "changed",
    [
        with_("window", patch_size=(5, 9, 11)),
        with_("window", stride=(2, 4, 3)),
        with_("window", blending="constant"),
        with_("window", pad_size=(1, 0, 0)),
        with_("window", tta_variants=8),
        with_("input", roi=Box((0, 0, 0), (8, 16, 8))),
        with_("model", path="/data/other.pt"),
        with_("output", dtype="uint8"),
        with_("output", chunks=(8, 16, 16)),
        with_("output", activations=("none",)),
        replace(JOB, compute=ComputeSpec(block_shape=(8, 16, 16))),
        replace(JOB, compute=ComputeSpec(precision="bfloat16")),
        replace(JOB, compute=ComputeSpec(memory_format="contiguous")),  # the floats' last bits
    ],
)
def test_what_changes_a_value_or_the_layout_changes_the_key(changed: InferenceJob) -> None:
    assert changed.layout_key(SHA) != JOB.layout_key(SHA)


def test_another_model_file_changes_the_key() -> None:
    assert JOB.layout_key("1" * 64) != JOB.layout_key(SHA)


def test_tta_reductions_of_several_variants_are_told_apart() -> None:
    eight = with_("window", tta_variants=8)
    assert with_("window", tta_variants=8, tta_reduce="max").layout_key(SHA) != eight.layout_key(SHA)
