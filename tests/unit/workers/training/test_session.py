"""The training task in-process (no Dask): checkpoints and their keys, pruning, cancel and resume,
the loader's determinism, and the errors that must not be retried."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.training_config import HeadSpec
from service.documents.training import parse_training
from tests.training_helpers import same_weights, training_doc, write_data
from volumes.sampling import SamplingError
from workers.errors import PathEscapeError
from workers.training.checkpoint_dir import TrainingDir
from workers.training.data import Batch, ForegroundBudget, Prefetcher
from workers.training.job import TrainingJob
from workers.training.session import inspect, train
from workers.training.setup import batch_maker


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_data(tmp_path)
    return tmp_path


def job(root: Path, **changes: Any) -> TrainingJob:
    return parse_training(training_doc(**changes), [root])


def test_checkpoints_have_pytc_and_our_keys_and_are_pruned(root: Path) -> None:
    j = job(root, **{"checkpoint.keep_last": 2, "validation": _validation(every=3)})
    outcome = train(j)
    assert outcome.status == "finished" and outcome.iteration == 6
    folder = root / "runs" / "a"
    assert sorted(p.name for p in folder.glob("checkpoint_*")) == [
        "checkpoint_00004.pth.tar",
        "checkpoint_00006.pth.tar",
    ]
    final = folder / "checkpoint_00006.pth.tar"
    assert outcome.checkpoint == str(final) and stat.S_IMODE(final.stat().st_mode) == 0o644
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    for key in ("state_dict", "optimizer", "lr_scheduler", "iteration", "rng", "sampler", "grad_scaler"):
        assert key in ckpt, key
    assert ckpt["iteration"] == 6 and ckpt["schema_version"] == 1
    assert ckpt["architecture"] == "unet3d" and ckpt["config"]["filters"] == [2, 4]
    assert ckpt["job_key"] == j.job_key() and ckpt["sampler"]["next_batch"] == 6
    assert ckpt["heads"][0]["activation"] == "sigmoid"
    assert [v["iteration"] for v in ckpt["metrics"]["validation"]] == [3, 6]
    progress = TrainingDir(folder, j.job_key()).read_progress()
    assert progress is not None and progress["state"] == "finished" and progress["iteration"] == 6


def _validation(every: int) -> dict[str, Any]:
    ref = {"path": "em.zarr", "dataset": "raw"}
    roi = {"offset": [2, 4, 4], "shape": [3, 34, 34]}
    return {"image": ref, "label": {"path": "em.zarr", "dataset": "mito"}, "every": every, "roi": roi}


def test_cancel_saves_a_checkpoint_and_a_rerun_continues_exactly(root: Path) -> None:
    changes = {"solver.iterations": 60, "solver.save_every": 2}
    straight = train(job(root, **changes, **{"checkpoint.dir": "runs/straight"}))
    j = job(root, **changes)
    tdir = TrainingDir(Path(j.checkpoint.dir), j.job_key())
    outcomes = []
    runner = threading.Thread(target=lambda: outcomes.append(train(j)))
    runner.start()
    deadline = time.monotonic() + 60
    while not tdir.checkpoint_path(2).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    tdir.request_cancel()
    runner.join(60)
    cancelled = outcomes[0]
    assert cancelled.status == "cancelled" and 2 <= cancelled.iteration < 60
    assert cancelled.checkpoint == str(tdir.checkpoint_path(cancelled.iteration))
    tdir.clear_cancel()
    resumed = train(j)
    assert resumed.status == "finished" and resumed.start_iteration == cancelled.iteration
    assert resumed.resumed_from == cancelled.checkpoint
    assert same_weights(straight.checkpoint or "", resumed.checkpoint or "")


def test_batches_depend_only_on_seed_and_index(root: Path) -> None:
    j = job(
        root, **{"targets": ["binary", "affinity"], "model.config.out_channels": 4, "solver.batch_size": 2}
    )
    maker = batch_maker(j, margin=1)
    a, b = maker.make(3), maker.make(3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert a.image.shape == (2, 1, 3, 17, 17) and a.targets.shape == (2, 4, 3, 17, 17)
    assert not np.array_equal(maker.make(4).image, a.image)
    prefetch = Prefetcher(maker.make, 2, 7, threads=3, depth=4)
    try:
        fetched = [prefetch.next()[0] for _ in range(5)]
    finally:
        prefetch.close()
    assert [f.index for f in fetched] == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(fetched[1].targets, a.targets)


def test_foreground_budget() -> None:
    def batch(misses: int, hit: bool) -> Batch:
        empty = np.zeros((1,), np.float32)
        return Batch(0, empty, empty, None, (misses,), (hit,))

    budget = ForegroundBudget(budget=10, min_foreground=1)
    budget.account(batch(6, False), "here")
    budget.account(batch(3, True), "here")
    assert budget.in_a_row == 0
    budget.account(batch(9, False), "here")
    with pytest.raises(SamplingError, match="no foreground"):
        budget.account(batch(1, False), "here")
    ForegroundBudget(budget=1, min_foreground=0).account(batch(5, False), "here")  # rejection off


def test_label_without_foreground_fails_after_the_budget(root: Path) -> None:
    j = job(
        root, **{"data.label.dataset": "empty", "sampling.reject": {"budget": 100}, "solver.iterations": 500}
    )
    started = time.perf_counter()
    outcome = train(j)
    assert outcome.status == "failed" and outcome.error is not None
    assert "no foreground" in outcome.error and "rejection budget is 100" in outcome.error
    assert time.perf_counter() - started < 60


def test_init_from_another_architecture_names_the_layers(root: Path) -> None:
    other = job(
        root, **{"model.config.filters": [2, 6], "checkpoint.dir": "runs/other", "solver.iterations": 1}
    )
    source = train(other).checkpoint
    bad = job(root, **{"model.init": source})
    outcome = train(bad)
    assert outcome.status == "failed" and outcome.error_field == "model.init"
    assert "down_layers.1" in (outcome.error or "") and "expected" in (outcome.error or "")
    with pytest.raises(ValueError, match=r"model\.init"):
        inspect(bad)


def test_restart_and_init_start_at_zero_with_the_weights(root: Path) -> None:
    first = train(job(root, **{"solver.iterations": 4}))
    for changes in (
        {"checkpoint.resume_from": first.checkpoint, "checkpoint.restart": True},
        {"model.init": first.checkpoint},
    ):
        outcome = train(
            job(root, **{**changes, "checkpoint.dir": f"runs/{len(changes)}", "solver.iterations": 2})
        )
        assert outcome.status == "finished" and outcome.start_iteration == 0 and outcome.iteration == 2
    resumed = train(
        job(
            root,
            **{
                "checkpoint.resume_from": first.checkpoint,
                "checkpoint.dir": "runs/r",
                "solver.iterations": 6,
            },
        )
    )
    assert resumed.start_iteration == 4 and resumed.resumed_from == first.checkpoint


def test_validation_tiles_score_each_voxel_once() -> None:
    from volumes.backends.memory import ArrayVolume
    from volumes.box import Box
    from workers.inference.job import Normalize
    from workers.training.evaluation import evaluate, tile_starts

    assert tile_starts(10, 4) == [(0, 0, 4), (4, 4, 8), (6, 8, 10)]
    assert tile_starts(4, 4) == [(0, 0, 4)]
    label = (np.random.default_rng(0).random((5, 20, 20)) > 0.7).astype(np.uint8)
    image = ArrayVolume(label * 255)

    def perfect(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x * 40 - 20)

    heads = (HeadSpec("binary"),)
    whole, patch = Box.of_shape(label.shape), (3, 7, 7)
    score = evaluate(perfect, image, ArrayVolume(label), whole, patch, heads, Normalize(), 0.5, 9)
    assert (score.iteration, score.dice, score.iou) == (9, 1.0, 1.0)
    inverted = evaluate(
        lambda x: -perfect(x), image, ArrayVolume(label), whole, patch, heads, Normalize(), 0.5, 9
    )
    assert inverted.dice == 0.0


def test_models_built_on_threads_at_once_get_their_own_seeded_weights(root: Path) -> None:
    """A seceded training task and a pre-flight build models in one worker at the same time:
    neither may draw the other's random numbers, nor leave the process's generator changed."""
    from workers.training.setup import build_model

    jobs = [job(root, **{"solver.seed": seed}) for seed in (0, 1)]
    expected = [build_model(j).state_dict() for j in jobs]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    barrier, results = threading.Barrier(8), {}

    def build(i: int) -> None:
        barrier.wait()
        results[i] = build_model(jobs[i % 2]).state_dict()

    threads = [threading.Thread(target=build, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, state in results.items():
        assert all(torch.equal(state[k], expected[i % 2][k]) for k in state), i
    assert torch.equal(torch.get_rng_state(), before)


def test_a_checkpoint_folder_or_data_swapped_for_a_symlink_out_of_the_roots_is_refused(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Admitted inside the roots, then swapped: the task confines what it opens and writes again."""
    outside = tmp_path_factory.mktemp("outside")
    j = job(root)
    (root / "runs").mkdir()
    (root / "runs" / "a").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathEscapeError, match=f"{root / 'runs' / 'a'}/.* now resolves to {outside}"):
        train(j)
    assert not any(outside.rglob("*")), "written outside the data roots"
    (root / "runs" / "a").unlink()
    (root / "em.zarr" / "raw").rename(outside / "raw")
    (root / "em.zarr" / "raw").symlink_to(outside / "raw", target_is_directory=True)
    with pytest.raises(PathEscapeError, match=f"{root / 'em.zarr' / 'raw'} now resolves to"):
        train(j)


def test_param_groups_one_keeps_the_job_key_of_runs_from_before_the_field(root: Path) -> None:
    """A run started before ``solver.param_groups`` existed resumes from its checkpoints: the
    default (``one``) leaves the key as it was; ``pytc`` changes the weights, so the key."""
    before = job(root).job_key()
    assert job(root, **{"solver.param_groups": "one"}).job_key() == before
    assert job(root, **{"solver.param_groups": "pytc"}).job_key() != before


def test_a_real_job_over_two_volumes_with_pytcs_label_erosion_and_z_transposes(root: Path) -> None:
    """Two volumes of different shapes, sampled by their patch positions as PyTC samples them; a
    head learning the eroded label; z and x swapped half the time (patch z == x)."""
    write_data(root / "b", shape=(9, 24, 30), seed=2)
    volumes = [
        {"image": {"path": "em.zarr", "dataset": "raw"}, "label": {"path": "em.zarr", "dataset": "cells"}},
        {
            "image": {"path": "b/em.zarr", "dataset": "raw"},
            "label": {"path": "b/em.zarr", "dataset": "cells"},
        },
    ]
    j = job(
        root,
        **{
            "data.image": None,
            "data.label": None,
            "data.volumes": volumes,
            "targets": [{"kind": "binary", "label_erosion": 1}, "affinity"],
            "model.config.out_channels": 4,
            "sampling.patch_size": [5, 16, 5],
            "sampling.augment": {"ztranspose": True},
            "solver.iterations": 4,
        },
    )
    maker = batch_maker(j, margin=2)
    sampler = maker.sampler
    assert sampler.positions == (8 * 33 * 44, 5 * 9 * 26)
    rng = np.random.default_rng(0)
    assert {sampler.draw(rng).volume for _ in range(60)} == {0, 1}
    batch = maker.make(0)
    assert batch.image.shape == (1, 1, 5, 16, 5) and batch.targets.shape == (1, 4, 5, 16, 5)
    outcome = train(j)
    assert outcome.status == "finished" and outcome.iteration == 4, outcome.error
    ckpt = torch.load(outcome.checkpoint or "", map_location="cpu", weights_only=True)
    assert ckpt["heads"][0]["label_erosion"] == 1 and ckpt["job_key"] == j.job_key()
