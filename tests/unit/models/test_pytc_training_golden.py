"""Our trainer's PyTC pieces against PyTC v1's own values: semantic distance and polarity targets,
the regularisers, WeightedCE's class weights, WeightedMSE after tanh, DiceLoss, WarmupMultiStepLR and
WarmupCosineLR, and build_optimizer's per-group rates, decays and betas.

``tests/data/pytc_golden/training_golden.npz`` holds the inputs and PyTC's answers, made once with
upstream by ``make_training_golden.py`` (its docstring says how); PyTC is not needed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.losses import heads_loss, regularization
from models.optim import build_optimizer, build_scheduler
from models.targets import distance_target, instance_distance_target, make_targets, polarity_target
from models.training_config import (
    DistanceSpec,
    HeadSpec,
    InstanceDistanceSpec,
    LossWeights,
    OptimizerSpec,
    RegularizerSpec,
    ScheduleSpec,
)

GOLDEN = np.load(Path(__file__).resolve().parents[2] / "data" / "pytc_golden" / "training_golden.npz")


def golden(key: str) -> np.ndarray:
    return np.asarray(GOLDEN[key])


@pytest.mark.parametrize(
    ("option", "spec"),
    [
        ("6", DistanceSpec()),
        ("6-2d-4-50", DistanceSpec("2d", 4.0, 50.0)),
        ("6-3d-8-50", DistanceSpec("3d", 8.0, 50.0)),
    ],
)
def test_semantic_distance_is_pytcs_edt_semantic(option: str, spec: DistanceSpec) -> None:
    label = golden("targets/label")
    ours = distance_target(label, spec)
    np.testing.assert_allclose(ours, golden(f"targets/{option}"), rtol=0, atol=1e-7)
    if spec.mode == "2d":  # an all-foreground section is 5 before the tanh, as PyTC's
        assert ours[0, 2].min() == pytest.approx(np.tanh(5.0))


def test_distance_is_computed_on_the_crop_without_its_margin() -> None:
    label = golden("targets/label")
    padded = np.pad(label, 1, mode="edge")
    head = HeadSpec("distance", LossWeights(0, 0, mse=1.0), distance=DistanceSpec("2d", 4.0, 50.0))
    np.testing.assert_allclose(make_targets(padded, [head], 1), golden("targets/6-2d-4-50"), atol=1e-7)


@pytest.mark.parametrize(
    ("option", "spec"),
    [
        ("5", InstanceDistanceSpec()),
        ("5-3d-1-0-1.0-0", InstanceDistanceSpec("3d", True, False, 1.0, 0)),
        ("5-2d-1-1-5.0-1", InstanceDistanceSpec("2d", True, True, 5.0, 1)),
        ("5-3d-0-1-2.0-0", InstanceDistanceSpec("3d", False, True, 2.0, 0)),
    ],
)
def test_instance_distance_is_pytcs_seg2inst_edt(option: str, spec: InstanceDistanceSpec) -> None:
    label = golden("targets/label")
    ours, theirs = instance_distance_target(label, spec), golden(f"targets/{option}")
    if spec.quantize:  # PyTC's levels as class ids, ours one-hot
        theirs = (theirs == np.arange(11).reshape(11, 1, 1, 1)).astype(np.float32)
        np.testing.assert_array_equal(ours, theirs)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)
        assert ours.min() == -1.0 and 0.9 < ours.max() <= 1.0


@pytest.mark.parametrize(
    ("option", "offsets"), [("2-1-1-1-v1", (1, 1, 1)), ("2-2-3-3-v1", (2, 3, 3)), ("2-1-4-2-v1", (1, 4, 2))]
)
def test_long_range_affinities_are_pytcs_seg2aff_v1(option: str, offsets: tuple[int, int, int]) -> None:
    """Read with a margin that holds PyTC's edge padding, the crop's affinities are PyTC's."""
    label = golden("targets/label")
    margin = max(offsets)
    head = HeadSpec("affinity", offsets=None if offsets == (1, 1, 1) else offsets)
    ours = make_targets(np.pad(label, margin, mode="edge"), [head], margin)
    np.testing.assert_array_equal(ours, golden(f"targets/{option}"))


def test_polarity_targets_are_pytcs_seg2polarity() -> None:
    label = golden("targets/label")
    np.testing.assert_array_equal(polarity_target(label), golden("targets/1"))
    classes = golden("targets/1-1")
    one_hot = (classes[None] == np.arange(3).reshape(3, 1, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(polarity_target(label, exclusive=True), one_hot)


@pytest.mark.parametrize(
    ("name", "kind", "heads"),
    [
        ("Binary", "binary", (0,)),
        ("FgContour", "fg_contour", (0, 1)),
        ("ContourDT", "contour_dt", (0, 1)),
        ("FgDT", "fg_dt", (0, 1)),
        ("Nonoverlap", "nonoverlap", (2,)),
    ],
)
def test_regularisers_are_pytcs(name: str, kind: str, heads: tuple[int, ...]) -> None:
    logits = [torch.from_numpy(golden(f"regu/{k}")) for k in ("a", "b", "p")]
    value = regularization(RegularizerSpec(kind, heads), logits)  # type: ignore[arg-type]
    assert float(value) == pytest.approx(float(golden(f"regu/{name}")), rel=1e-6)


def test_weighted_ce_with_class_weights_is_pytcs() -> None:
    pred = torch.from_numpy(golden("loss/pred"))
    classes = torch.from_numpy(golden("loss/classes"))
    target = torch.nn.functional.one_hot(classes, 3).permute(0, 4, 1, 2, 3).float()
    head = HeadSpec("semantic", LossWeights(bce=0, dice=0, ce=1.0, class_weight=(1.0, 10.0, 10.0)), classes=3)
    loss, _ = heads_loss(pred, target, [head])
    assert float(loss) == pytest.approx(float(golden("loss/ce_weighted")), rel=1e-6)
    unweighted, _ = heads_loss(pred, target, [HeadSpec("semantic", LossWeights(0, 0, 1.0), classes=3)])
    assert float(unweighted) != pytest.approx(float(loss), rel=1e-3)  # the weights matter


def test_mse_after_tanh_and_a_regulariser_add_up_as_pytcs_criterion() -> None:
    pred = torch.from_numpy(golden("loss/pred"))
    distance = torch.from_numpy(golden("loss/distance"))
    fg = torch.from_numpy(golden("loss/fg"))
    dist_head = HeadSpec("distance", LossWeights(0, 0, mse=4.0))
    loss, _ = heads_loss(pred[:, :1], distance, [dist_head])
    assert float(loss) == pytest.approx(float(golden("loss/mse_tanh")), rel=1e-6)
    heads = [HeadSpec("binary", LossWeights(bce=1.0, dice=0.0)), dist_head]
    regu = (RegularizerSpec("fg_dt", (0, 1), 0.5),)
    total, parts = heads_loss(pred[:, :2], torch.cat([fg, distance], 1), heads, regularizers=regu)
    assert float(total) == pytest.approx(float(golden("loss/fg_dt")), rel=1e-6)
    assert len(parts) == 3  # two heads and the regulariser


def test_dice_is_pytcs_dice_loss_with_its_style() -> None:
    pred = torch.from_numpy(golden("loss/pred"))
    fg, three = torch.from_numpy(golden("loss/fg")), torch.from_numpy(golden("loss/three"))
    binary = HeadSpec("binary", LossWeights(bce=1.0, dice=0.5, dice_style="pytc"))
    loss, _ = heads_loss(pred[:, :1], fg, [binary])
    assert float(loss) == pytest.approx(float(golden("loss/bce_dice")), rel=1e-6)
    polarity = HeadSpec("polarity", LossWeights(bce=0.0, dice=1.0, dice_style="pytc"))
    loss, _ = heads_loss(pred, three, [polarity])
    assert float(loss) == pytest.approx(float(golden("loss/dice_polarity")), rel=1e-6)
    ours, _ = heads_loss(pred, three, [HeadSpec("polarity", LossWeights(bce=0.0, dice=1.0))])
    assert float(ours) != pytest.approx(float(loss), rel=1e-3)  # our per-channel Dice is another loss


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv3d(4, 2, 1, bias=True)
    )


@pytest.mark.parametrize(
    ("name", "kind"), [("WarmupMultiStepLR", "pytc_warmup_step"), ("WarmupCosineLR", "pytc_warmup_cosine")]
)
def test_schedules_give_pytcs_rate_at_every_iteration(name: str, kind: str) -> None:
    milestones = (100, 200) if kind == "pytc_warmup_step" else ()
    spec = ScheduleSpec(kind, milestones, gamma=0.5, warmup=50, warmup_factor=0.001)  # type: ignore[arg-type]
    optimizer = build_optimizer(_model(), OptimizerSpec("sgd", 0.02, param_groups="pytc"))
    scheduler = build_scheduler(optimizer, spec, 300)
    rates = []
    for _ in range(300):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(rates, golden(f"lr/{name}"), rtol=1e-12, atol=0)


def test_bias_and_norm_groups_are_pytcs_build_optimizer() -> None:
    spec = OptimizerSpec(
        "adam", 0.01, 0.0001, betas=(0.8, 0.9), param_groups="pytc",
        bias_lr_factor=2.0, weight_decay_bias=0.01, weight_decay_norm=0.001,
    )  # fmt: skip
    optimizer = build_optimizer(_model(), spec)
    np.testing.assert_allclose([g["lr"] for g in optimizer.param_groups], golden("groups/lr"), rtol=1e-15)
    decays = [g["weight_decay"] for g in optimizer.param_groups]
    np.testing.assert_allclose(decays, golden("groups/weight_decay"), rtol=1e-15)
    np.testing.assert_allclose(optimizer.param_groups[0]["betas"], golden("groups/betas"))
