"""The trainer: exact resume (bitwise on CPU), restart semantics, schedules, losses, foreign checkpoints."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.errors import ArchitectureMismatchError, ModelConfigError
from models.losses import heads_loss, soft_dice_loss
from models.optim import lr_factor
from models.trainer import Trainer, TrainerConfig, TrainingDivergedError, seed_everything
from models.training_config import HeadSpec, LossWeights, OptimizerSpec, ScheduleSpec
from models.unet3d import build_unet3d

CONFIG = {"in_channels": 1, "out_channels": 2, "filters": [2, 4], "isotropy": [False, False]}
HEADS = (HeadSpec("binary"), HeadSpec("boundary"))
PATCH = (3, 9, 9)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``index`` as a pure function of the index, as the real loader makes them."""
    rng = np.random.default_rng([7, index])
    image = rng.random((2, 1, *PATCH), dtype=np.float32)
    targets = (rng.random((2, 2, *PATCH)) > 0.5).astype(np.float32)
    return image, targets


def trainer(
    optimizer: OptimizerSpec = OptimizerSpec("adamw", lr=0.01),
    schedule: ScheduleSpec = ScheduleSpec("warmup_cosine", warmup=2),
    iterations: int = 8,
    clip: float | None = 1.0,
    config: dict[str, object] | None = None,
) -> Trainer:
    seed_everything(0)
    model = build_unet3d(config or CONFIG)
    return Trainer(model, TrainerConfig(HEADS, optimizer, schedule, iterations, clip))


def run(t: Trainer, until: int) -> None:
    while t.iteration < until:
        t.step(*batch(t.iteration))


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    for s_a, s_b in zip(a.optimizer.state.values(), b.optimizer.state.values(), strict=True):
        for key in s_a:
            assert torch.equal(torch.as_tensor(s_a[key]), torch.as_tensor(s_b[key])), key
    assert a.lr == b.lr and a.iteration == b.iteration


@pytest.mark.parametrize(
    ("optimizer", "schedule"),
    [
        (OptimizerSpec("adamw", lr=0.01), ScheduleSpec("warmup_cosine", warmup=2)),
        (OptimizerSpec("sgd", lr=0.05, momentum=0.9), ScheduleSpec("step", milestones=(3, 6), gamma=0.5)),
    ],
    ids=["adamw-warmup-cosine", "sgd-step"],
)
def test_resume_is_bitwise_exact(tmp_path: Path, optimizer: OptimizerSpec, schedule: ScheduleSpec) -> None:
    straight = trainer(optimizer, schedule)
    run(straight, 8)

    first = trainer(optimizer, schedule)
    run(first, 4)
    save_checkpoint(tmp_path / "c.pth.tar", first.training_state())
    torch.manual_seed(123)  # disturb the global RNG: the checkpoint's RNG state must win
    second = trainer(optimizer, schedule)
    second.restore(load_checkpoint(tmp_path / "c.pth.tar"), "c.pth.tar")
    assert second.iteration == 4
    run(second, 8)
    assert_same_state(straight, second)


def test_rng_states_are_restored(tmp_path: Path) -> None:
    t = trainer()
    state = t.training_state()
    expected = (torch.rand(3), np.random.random(), __import__("random").random())
    t.restore(state)
    again = (torch.rand(3), np.random.random(), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_restart_takes_weights_only(tmp_path: Path) -> None:
    trained = trainer()
    run(trained, 5)
    ckpt = trained.training_state()
    fresh = trainer()
    fresh.restore_weights(ckpt)
    assert fresh.iteration == 0 and not fresh.optimizer.state
    assert fresh.lr == pytest.approx(0.01 * 0.001)  # the warmup's first factor, not iteration 5's
    for name, value in trained.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[name], value), name


def test_pytc_checkpoint_resumes_from_its_iteration() -> None:
    """PyTC's own checkpoint: module. prefix, its scheduler's dict, no RNG state."""
    source = trainer()
    run(source, 3)
    pytc = {
        "state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()},
        "optimizer": source.optimizer.state_dict(),
        "lr_scheduler": {"milestones": [10], "gamma": 0.1, "last_epoch": 3},
        "iteration": 3,
    }
    target = trainer()
    target.restore(pytc, "pytc.pth.tar")
    assert target.iteration == 3
    assert target.lr == pytest.approx(0.01 * lr_factor(ScheduleSpec("warmup_cosine", warmup=2), 8)(3))
    run(target, 4)


def test_checkpoint_of_another_architecture_names_the_layers() -> None:
    other = trainer(config={**CONFIG, "filters": [2, 6]})
    with pytest.raises(ArchitectureMismatchError, match=r"down_layers\.1\..*expected") as info:
        trainer().restore_weights(other.training_state(), "other.pth.tar")
    assert "other.pth.tar" in str(info.value) and info.value.mismatched


def test_schedules() -> None:
    constant = lr_factor(ScheduleSpec(), 100)
    assert constant(0) == constant(99) == 1.0
    step = lr_factor(ScheduleSpec("step", milestones=(10, 20), gamma=0.1), 100)
    assert [step(i) for i in (0, 9, 10, 19, 20)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    every = lr_factor(ScheduleSpec("step", step_size=5, gamma=0.5), 100)
    assert [every(i) for i in (0, 4, 5, 10)] == pytest.approx([1, 1, 0.5, 0.25])
    cosine = lr_factor(ScheduleSpec("warmup_cosine", warmup=10, warmup_factor=0.1, min_lr_ratio=0.01), 110)
    assert cosine(0) == pytest.approx(0.1) and cosine(5) == pytest.approx(0.55)
    assert cosine(10) == pytest.approx(1.0) and cosine(110) == pytest.approx(0.01)
    assert cosine(60) == pytest.approx(0.01 + 0.99 * 0.5)
    with pytest.raises(ModelConfigError):
        lr_factor(ScheduleSpec("step"), 10)


def test_trainer_steps_follow_the_schedule() -> None:
    t = trainer(schedule=ScheduleSpec("step", milestones=(2,), gamma=0.5), iterations=4)
    lrs = [t.step(*batch(i)).lr for i in range(4)]
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005])


def test_gradient_clipping_reports_the_norm() -> None:
    stats = trainer(clip=1e-6).step(*batch(0))
    assert stats.grad_norm is not None and stats.grad_norm > 1e-6
    assert trainer(clip=None).step(*batch(0)).grad_norm is None


def test_divergence_is_an_error() -> None:
    image, targets = batch(0)
    image[:] = np.nan
    with pytest.raises(TrainingDivergedError, match="iteration 1"):
        trainer().step(image, targets)


def test_losses_per_head_and_mask() -> None:
    logits = torch.zeros(1, 2, 1, 2, 2)
    targets = torch.ones(1, 2, 1, 2, 2)
    total, parts = heads_loss(logits, targets, HEADS)
    expected = math.log(2) + 0.5 * soft_dice_loss(torch.sigmoid(logits[:, :1]), targets[:, :1])
    assert float(parts[0]) == pytest.approx(float(expected)) and float(total) == pytest.approx(
        2 * float(expected)
    )
    # Masked-out voxels count for nothing: a huge error there changes no loss.
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 1, 2, 2)
    bad = logits.clone()
    bad[..., 1, 1] = -50.0
    assert float(heads_loss(bad, targets, HEADS, mask)[0]) == pytest.approx(
        float(heads_loss(logits, targets, HEADS, mask)[0])
    )
    with pytest.raises(ModelConfigError, match="3 channels"):
        heads_loss(logits, targets, (*HEADS, HeadSpec("binary")))


def test_semantic_head_uses_cross_entropy_and_softmax_dice() -> None:
    head = HeadSpec("semantic", LossWeights(bce=0.0, dice=0.0, ce=1.0), classes=3)
    target = torch.zeros(1, 3, 1, 1, 1)
    target[0, 2] = 1
    logits = torch.tensor([0.0, 0.0, 5.0]).reshape(1, 3, 1, 1, 1)
    expected = -torch.log_softmax(logits, dim=1)[0, 2]
    assert float(heads_loss(logits, target, (head,))[0]) == pytest.approx(float(expected.squeeze()))


def test_pytc_parameter_groups_are_pytcs_solver_layout() -> None:
    """``param_groups: pytc``: one group per parameter in ``model.modules()`` order (PyTC's
    ``Trainer`` loads an optimizer state only into groups of the same count and sizes), no weight
    decay for biases and normalisation layers; ``one``: a single group."""
    from models.optim import build_optimizer

    model = build_unet3d(CONFIG)
    params = list(model.parameters())
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d) for p in m.parameters()}
    biases = {id(p) for name, p in model.named_parameters() if name.endswith(".bias")}
    assert norms and biases - norms
    pytc = build_optimizer(model, OptimizerSpec("sgd", lr=0.1, weight_decay=0.5, param_groups="pytc"))
    assert [g["params"] for g in pytc.param_groups] == [[p] for p in params]
    for group in pytc.param_groups:
        bare = id(group["params"][0]) in norms | biases
        assert group["weight_decay"] == (0.0 if bare else 0.5) and group["lr"] == 0.1
    one = build_optimizer(model, OptimizerSpec("sgd", lr=0.1, weight_decay=0.5))
    assert len(one.param_groups) == 1 and one.param_groups[0]["params"] == params


def test_pytc_heads_and_regularisers_train_and_biases_follow_their_factor() -> None:
    """Binary, distance and polarity heads with PyTC's FgDT and Nonoverlap regularisers: the step's
    loss is the heads' and the weighted regularisers' sum on the model's logits, and biases learn
    at ``bias_lr_factor`` times the scheduled rate."""
    from models.losses import regularization, split_heads
    from models.targets import make_targets
    from models.training_config import DistanceSpec, RegularizerSpec

    heads = (
        HeadSpec("binary"),
        HeadSpec("distance", LossWeights(0.0, 0.0, mse=4.0), distance=DistanceSpec("2d", 4.0, 50.0)),
        HeadSpec("polarity"),
    )
    regus = (RegularizerSpec("fg_dt", (0, 1), 0.5), RegularizerSpec("nonoverlap", (2,), 4.0))
    label = np.zeros((5, 11, 11), dtype=np.int64)
    label[1:4, 2:6, 2:7], label[1:4, 6:10, 3:9] = 3, 4
    targets = make_targets(label, heads, 1)[None]
    image = np.random.default_rng(0).random((1, 1, *PATCH), dtype=np.float32)
    seed_everything(0)
    model = build_unet3d({**CONFIG, "out_channels": 5})
    spec = OptimizerSpec("sgd", lr=0.01, param_groups="pytc", bias_lr_factor=2.0)
    schedule = ScheduleSpec("pytc_warmup_step", milestones=(1,), gamma=0.5, warmup=0)
    t = Trainer(model, TrainerConfig(heads, spec, schedule, 3, None, regularizers=regus))
    with torch.no_grad():  # the logits the step will see (train mode: batch statistics)
        parts = split_heads(t.model.train()(torch.from_numpy(image)), heads)
    expected_regu = [r.weight * float(regularization(r, parts)) for r in regus]
    stats = t.step(image, targets)
    assert len(stats.head_losses) == 5 and stats.head_losses[3:] == pytest.approx(expected_regu, rel=1e-5)
    assert stats.loss == pytest.approx(sum(stats.head_losses), rel=1e-6)
    biases = {id(p) for name, p in model.named_parameters() if name.endswith(".bias")}
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d) for p in m.parameters()}
    for group in t.optimizer.param_groups:  # after one step: past the milestone, gamma 0.5
        is_bias = id(group["params"][0]) in biases - norms
        assert group["lr"] == pytest.approx(0.005 * (2.0 if is_bias else 1.0))
