"""How ``training_golden.npz`` was made: PyTorch Connectomics v1's own training pieces on small inputs.

Not run by the tests (it needs PyTC). Run once, outside this repository's environment, as
``make_golden.py`` (the same extracted PyTC v1 and the same stubs)::

    pip install --no-deps --target /tmp/pytc-deps yacs GPUtil einops
    PYTHONPATH=/tmp/pytc-v1:/tmp/pytc-deps python make_training_golden.py training_golden.npz

It stores the inputs beside PyTC's answers, so the tests need no random generator to agree:

- ``targets/<option>``: ``seg_to_targets(label, [option])`` of ``targets/label``, a (6, 12, 10)
  instance label whose section 2 is all foreground (PyTC's distance of 5 there) and whose section 4
  is all background, for the semantic distance options ``6``, ``6-2d-4-50``, ``6-3d-8-50``, the
  instance distance options of ``INSTANCE_DISTANCES`` (quantized ones are class ids: ours are
  their one-hot), the polarity options ``1`` and ``1-1`` (class ids too) and the long-range
  affinities of ``LONG_RANGE_AFFINITIES`` (``seg2aff_v1``, which pads the crop's start with its
  edge);
- ``regu/<name>``: each regulariser of PyTC's ``Criterion.regu_dict``, unweighted, on
  ``regu/a``, ``regu/b`` (logits, (2, 1, 3, 8, 7)) and ``regu/p`` (polarity logits, 3 channels);
- ``loss/<name>``: PyTC's ``Criterion`` total on ``loss/pred`` for a config's heads (``ce_weighted``:
  ``9-3`` with WeightedCE and class weights 1, 10, 10 on ``loss/classes``; ``mse_tanh``: ``6`` with
  WeightedMSE after tanh on ``loss/distance``; ``fg_dt``: ``0`` BCE + ``6`` MSE + FgDT 0.5;
  ``bce_dice``: ``0`` with BCE 1 and DiceLoss 0.5 on ``loss/fg``; ``dice_polarity``: ``1`` with
  DiceLoss on ``loss/three``, whose smoothing (100) spans a sample's three channels);
- ``lr/<schedule>``: the learning rate of the first parameter group at each of 300 iterations
  (``WarmupMultiStepLR`` warm-up 50 from 0.001, steps 100 and 200, gamma 0.5, base lr 0.02; and
  ``WarmupCosineLR`` over 300 with the same warm-up), stepped as PyTC's trainer steps it;
- ``groups/<key>``: ``build_optimizer``'s per-group ``lr`` and ``weight_decay`` over a small
  conv + GroupNorm + conv model, with ``BIAS_LR_FACTOR`` 2, ``WEIGHT_DECAY_BIAS`` 0.01,
  ``WEIGHT_DECAY_NORM`` 0.001, ``WEIGHT_DECAY`` 0.0001, ``BETAS`` (0.8, 0.9) (Adam): ``betas`` too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_golden import stub_unused_modules

INSTANCE_DISTANCES = ("5", "5-3d-1-0-1.0-0", "5-2d-1-1-5.0-1", "5-3d-0-1-2.0-0")
LONG_RANGE_AFFINITIES = ("2-1-1-1-v1", "2-2-3-3-v1", "2-1-4-2-v1")


def label() -> np.ndarray:
    lab = np.zeros((6, 12, 10), dtype=np.int64)
    lab[0, 2:6, 2:5] = 3
    lab[0, 7:11, 4:9] = 4
    lab[1, 1:9, 1:9] = 5
    lab[1, 3:5, 3:5] = 0
    lab[2] = 7  # all foreground
    lab[3, 5:12, 0:4] = 2
    lab[3, 0:3, 6:10] = 9
    lab[5, 4:8, 3:7] = 1
    return lab


def model() -> object:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv3d(4, 2, 1, bias=True)
    )


def main(target: Path) -> None:
    stub_unused_modules()
    import torch
    from connectomics.config import get_cfg_defaults
    from connectomics.data.utils.data_segmentation import seg_to_targets
    from connectomics.engine.solver import build_lr_scheduler, build_optimizer
    from connectomics.model.loss.criterion import Criterion

    out: dict[str, np.ndarray] = {}
    lab = label()
    out["targets/label"] = lab
    for opt in ("6", "6-2d-4-50", "6-3d-8-50", "1", "1-1", *INSTANCE_DISTANCES, *LONG_RANGE_AFFINITIES):
        out[f"targets/{opt}"] = np.asarray(seg_to_targets(lab, [opt])[0])

    g = torch.Generator().manual_seed(0)
    a = (torch.randn(2, 1, 3, 8, 7, generator=g) * 2).float()
    b = (torch.randn(2, 1, 3, 8, 7, generator=g) * 2).float()
    p = (torch.randn(2, 3, 3, 8, 7, generator=g) * 2).float()
    out["regu/a"], out["regu/b"], out["regu/p"] = a.numpy(), b.numpy(), p.numpy()
    for name, cls in Criterion.regu_dict.items():
        args = (p,) if name == "Nonoverlap" else ((a,) if name == "Binary" else (a, b))
        out[f"regu/{name}"] = np.float64(cls()(*args).item())

    cpu = torch.device("cpu")
    pred = (torch.randn(2, 3, 3, 8, 7, generator=g) * 2).float()
    classes = torch.randint(0, 3, (2, 3, 8, 7), generator=g)
    distance = torch.tanh(torch.randn(2, 1, 3, 8, 7, generator=g)).float()
    fg = (torch.rand(2, 1, 3, 8, 7, generator=g) > 0.5).float()
    out["loss/pred"], out["loss/classes"] = pred.numpy(), classes.numpy()
    out["loss/distance"], out["loss/fg"] = distance.numpy(), fg.numpy()
    class_weight = [[{"class_weight": [1.0, 10.0, 10.0]}]]
    ce = Criterion(cpu, ["9-3"], [["WeightedCE"]], [["none"]], [[1.0]], class_weight)
    out["loss/ce_weighted"] = np.float64(ce(pred, [classes], [[None]])[0].item())
    mse = Criterion(cpu, ["6"], [["WeightedMSE"]], [["tanh"]], [[4.0]])
    out["loss/mse_tanh"] = np.float64(mse(pred[:, :1], [distance], [[None]])[0].item())
    both = Criterion(
        cpu, ["0", "6"], [["WeightedBCEWithLogitsLoss"], ["WeightedMSE"]], [["none"], ["tanh"]],
        [[1.0], [4.0]], None, ["FgDT"], [[0, 1]], [0.5],
    )  # fmt: skip
    out["loss/fg_dt"] = np.float64(both(pred[:, :2], [fg, distance], [[None], [None]])[0].item())
    three = (torch.rand(2, 3, 3, 8, 7, generator=g) > 0.7).float()
    out["loss/three"] = three.numpy()
    bce_dice = Criterion(
        cpu, ["0"], [["WeightedBCEWithLogitsLoss", "DiceLoss"]], [["none", "sigmoid"]], [[1.0, 0.5]]
    )
    out["loss/bce_dice"] = np.float64(bce_dice(pred[:, :1], [fg], [[None, None]])[0].item())
    dice3 = Criterion(cpu, ["1"], [["DiceLoss"]], [["sigmoid"]], [[1.0]])
    out["loss/dice_polarity"] = np.float64(dice3(pred, [three], [[None]])[0].item())

    for name in ("WarmupMultiStepLR", "WarmupCosineLR"):
        cfg = get_cfg_defaults()
        cfg.SOLVER.LR_SCHEDULER_NAME, cfg.SOLVER.BASE_LR = name, 0.02
        cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR = 50, 0.001
        cfg.SOLVER.STEPS, cfg.SOLVER.GAMMA, cfg.SOLVER.ITERATION_TOTAL = (100, 200), 0.5, 300
        optimizer = build_optimizer(cfg, model())
        scheduler = build_lr_scheduler(cfg, optimizer)
        rates = []
        for _ in range(300):  # PyTC's trainer: a step with the current rate, then the scheduler's
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        out[f"lr/{name}"] = np.asarray(rates)

    cfg = get_cfg_defaults()
    cfg.SOLVER.NAME, cfg.SOLVER.BASE_LR, cfg.SOLVER.BETAS = "Adam", 0.01, (0.8, 0.9)
    cfg.SOLVER.BIAS_LR_FACTOR, cfg.SOLVER.WEIGHT_DECAY_BIAS = 2.0, 0.01
    cfg.SOLVER.WEIGHT_DECAY_NORM, cfg.SOLVER.WEIGHT_DECAY = 0.001, 0.0001
    optimizer = build_optimizer(cfg, model())
    out["groups/lr"] = np.asarray([grp["lr"] for grp in optimizer.param_groups])
    out["groups/weight_decay"] = np.asarray([grp["weight_decay"] for grp in optimizer.param_groups])
    out["groups/betas"] = np.asarray(optimizer.param_groups[0]["betas"])
    np.savez_compressed(target, **out)
    print(f"{target}: {target.stat().st_size} bytes, {len(out)} arrays")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
