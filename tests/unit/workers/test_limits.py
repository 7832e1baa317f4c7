"""The admission bounds are arithmetic on a job's sizes: the counts agree with the geometry that
would be built, and each refusal names the field whose size is to blame."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from volumes.windows import window_starts
from workers.errors import SpecError
from workers.limits import (
    GIB,
    Limits,
    check_axis_counts,
    check_block_counts,
    check_chunk_bytes,
    check_input_shape,
    check_model_parameters,
    check_pad,
    check_task_memory,
    check_training_memory,
    limits_from_env,
    task_memory,
    windows_along,
)


@given(
    length=st.integers(1, 3000),
    patch=st.integers(1, 200),
    stride_fraction=st.floats(0.01, 1.0),
    pad=st.integers(0, 200),
)
def test_windows_along_counts_the_starts_the_grid_would_list(
    length: int, patch: int, stride_fraction: float, pad: int
) -> None:
    stride = max(1, int(patch * stride_fraction))
    assert windows_along(length, patch, stride, pad) == len(window_starts(length + 2 * pad, patch, stride))


def test_a_pad_wider_than_the_patch_is_refused() -> None:
    check_pad((17, 129, 129), (17, 129, 129))  # one patch of padding is the most that matters
    with pytest.raises(SpecError) as caught:
        check_pad((10**11, 0, 0), (17, 129, 129))
    assert caught.value.field == "window.pad_size" and "axis z" in caught.value.reason


def test_the_task_memory_names_the_patch_the_block_or_the_batch() -> None:
    limits = Limits(worker_memory_bytes=32 * GIB)
    ordinary = task_memory((17, 129, 129), (64, 512, 512), 4, 1, 3)
    check_task_memory(ordinary, limits, block_field="compute.block_shape")
    assert ordinary.total < 2 * GIB

    def refused(patch: tuple[int, ...], block: tuple[int, ...], batch: int) -> SpecError:
        with pytest.raises(SpecError) as caught:
            check_task_memory(task_memory(patch, block, batch), limits, block_field="compute.block_shape")
        assert "PYTC_WORKER_MEMORY_BYTES" in caught.value.reason
        return caught.value

    assert refused((128, 1024, 1024), (32, 256, 256), 4).field == "window.patch_size"
    assert refused((17, 129, 129), (1024, 4096, 4096), 4).field == "compute.block_shape"
    batch = refused((32, 256, 256), (64, 512, 512), 512)
    assert batch.field == "window.batch_size" and "a batch of " in batch.reason
    fits = int(batch.reason.rsplit("a batch of ", 1)[1].split()[0])
    check_task_memory(task_memory((32, 256, 256), (64, 512, 512), fits), limits, block_field="b")


def test_a_larger_worker_memory_admits_what_a_smaller_one_refuses() -> None:
    memory = task_memory((64, 512, 512), (64, 512, 512), 4)
    with pytest.raises(SpecError):
        check_task_memory(memory, Limits(worker_memory_bytes=8 * GIB), block_field="b")
    check_task_memory(memory, Limits(worker_memory_bytes=256 * GIB), block_field="b")


def test_claimed_input_shapes_are_bounded_with_the_path_and_shape_named() -> None:
    check_input_shape((100_000, 100_000, 100_000), Limits(), "input.dataset", "/d/em.zarr")  # 10^15
    with pytest.raises(SpecError) as caught:
        check_input_shape((10**12,) * 3, Limits(), "input.dataset", "/d/em.zarr")
    assert caught.value.field == "input.dataset"
    assert (
        "/d/em.zarr" in caught.value.reason
        and "[1000000000000, 1000000000000, 1000000000000]" in caught.value.reason
    )


def test_windows_chunks_and_blocks_per_axis_are_bounded() -> None:
    limits = Limits(max_axis_count=20_000)
    region = (100_000, 100_000, 100_000)
    check_axis_counts(region, (17, 129, 129), (8, 128, 128), (0, 0, 0), (128, 128, 128), limits)
    with pytest.raises(SpecError) as caught:
        check_axis_counts(region, (17, 129, 129), (4, 128, 128), (0, 0, 0), (128, 128, 128), limits)
    assert caught.value.field == "window.stride" and "24997 windows along axis z" in caught.value.reason
    with pytest.raises(SpecError) as caught:
        check_axis_counts(region, (17, 129, 129), (8, 128, 128), (0, 0, 0), (4, 128, 128), limits)
    assert caught.value.field == "output.chunks" and "PYTC_MAX_AXIS_COUNT" in caught.value.reason
    with pytest.raises(SpecError) as caught:
        check_block_counts(region, (64, 512, 512), Limits(max_axis_count=1000), "compute.block_shape")
    assert caught.value.field == "compute.block_shape" and "1563 blocks" in caught.value.reason


def test_chunks_training_batches_and_models_are_bounded() -> None:
    limits = Limits()
    check_chunk_bytes((32, 256, 256), limits, out_channels=3)
    with pytest.raises(SpecError, match="PYTC_MAX_CHUNK_BYTES"):
        check_chunk_bytes((1024, 1024, 1024), limits)
    check_training_memory((17, 129, 129), 2, 1, 3, limits)
    with pytest.raises(SpecError) as caught:
        check_training_memory((128, 1024, 1024), 2, 1, 3, limits)
    assert caught.value.field == "sampling.patch_size"
    with pytest.raises(SpecError) as caught:
        check_training_memory((33, 257, 257), 256, 1, 3, limits)
    assert caught.value.field == "solver.batch_size"
    check_model_parameters(None, limits)  # a size nobody could tell is left to the builder
    check_model_parameters(10**6, limits)
    with pytest.raises(SpecError, match="PYTC_MAX_MODEL_PARAMETERS") as caught:
        check_model_parameters(10**12, limits)
    assert caught.value.field == "model.config"


def test_the_limits_from_the_environment_name_a_bad_variable() -> None:
    assert limits_from_env({}) == Limits()
    assert limits_from_env({"PYTC_MAX_AXIS_COUNT": " 99 "}).max_axis_count == 99
    for bad in ("lots", "0", "-5", "1e9"):
        with pytest.raises(SpecError) as caught:
            limits_from_env({"PYTC_WORKER_MEMORY_BYTES": bad})
        assert caught.value.field == "PYTC_WORKER_MEMORY_BYTES" and repr(bad) in caught.value.reason
    assert limits_from_env({"PYTC_MAX_MODEL_BYTES": "512MiB"}) == Limits()  # read where files are
    with pytest.raises(SpecError) as caught:
        limits_from_env({"PYTC_MAX_MODEL_BYTES": "big"})
    assert caught.value.field == "PYTC_MAX_MODEL_BYTES" and "'big'" in caught.value.reason
