"""How ``golden.npz`` was made: PyTorch Connectomics v1's own ``Trainer.test`` on a small volume.

Not run by the tests (it needs PyTC). Run once, outside this repository's environment::

    git -C <mirror of PytorchConnectomics/pytorch_connectomics> archive v1.0 | tar -x -C /tmp/pytc-v1
    pip install --no-deps --target /tmp/pytc-deps yacs GPUtil einops
    PYTHONPATH=/tmp/pytc-v1:/tmp/pytc-deps python make_golden.py /tmp/pytc-golden/work

(beside this project's torch, numpy, scipy, h5py and scikit-image). :func:`stub_unused_modules`
fabricates the modules PyTC imports at the top but ``Trainer.test`` of ``unet_3d`` never calls
(tensorboard, matplotlib, torchvision, cv2, em_util, which is not on PyPI). For each config
here: the input volume (uint8, seed 0) is written as ``data/im.h5``; PyTC's ``build_model`` makes a
randomly initialised UNet3D whose BatchNorm statistics and affine parameters are then drawn at
random (so that they matter), saved as PyTC saves it (``{'iteration', 'state_dict', ...}``,
``checkpoint_00001.pth.tar``); then ``load_cfg``'s steps (defaults, the file, ``--inference``) and
``Trainer(cfg, cpu, 'test', checkpoint=...).test()`` write PyTC's uint8 result. ``golden.npz``
keeps the input, each case's state dict and PyTC's output (``<case>/...``): 170 KB.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

CASES = ("unet3d-gaussian-tta", "unet3d-bump-min")
SHAPE = (12, 40, 36)


STUBBED = (
    "mpl_toolkits",
    "tensorboard",
    "torch.utils.tensorboard",
    "matplotlib",
    "torchvision",
    "cv2",
    "em_util",
)


def stub_unused_modules() -> None:
    """Modules PyTC v1 imports at the top that ``Trainer.test`` of ``unet_3d`` never calls: any
    name taken from them is an inert placeholder."""
    import importlib.abc
    import importlib.machinery
    import types

    class Anything:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __call__(self, *args: object, **kwargs: object) -> Anything:
            return Anything()

        def __getattr__(self, name: str) -> Anything:
            return Anything()

        def __mro_entries__(self, bases: tuple[object, ...]) -> tuple[type, ...]:
            return (object,)

    class Module(types.ModuleType):
        def __getattr__(self, name: str) -> Anything:
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything()

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(
            self, name: str, path: object, target: object = None
        ) -> importlib.machinery.ModuleSpec | None:
            if any(name == s or name.startswith(s + ".") for s in STUBBED):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
            module = Module(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module: types.ModuleType) -> None:
            pass

    sys.meta_path.insert(0, Finder())


def volume() -> np.ndarray:
    from scipy import ndimage

    noise = np.random.default_rng(0).random(SHAPE)
    smooth = ndimage.gaussian_filter(noise, 1.5)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def run_case(name: str, work: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    import h5py
    import torch
    from connectomics.config import get_cfg_defaults
    from connectomics.config.utils import overwrite_cfg, update_inference_cfg
    from connectomics.engine import Trainer
    from connectomics.model import build_model

    case = work / name
    (case / "data").mkdir(parents=True, exist_ok=True)
    with h5py.File(case / "data" / "im.h5", "w") as f:
        f.create_dataset("main", data=image)
    os.chdir(case)
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(Path(__file__).with_name(name + ".yaml")))
    update_inference_cfg(cfg)
    overwrite_cfg(cfg, argparse.Namespace(distributed=False))
    cfg.freeze()
    torch.manual_seed(1)
    model = build_model(cfg, torch.device("cpu")).module
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    state = {"iteration": 1, "state_dict": model.state_dict(), "optimizer": {}, "lr_scheduler": {}}
    torch.save(state, case / "checkpoint_00001.pth.tar")
    Trainer(cfg, torch.device("cpu"), "test", checkpoint=str(case / "checkpoint_00001.pth.tar")).test()
    written = sorted((case / "out").glob("result*.h5"))
    with h5py.File(written[0], "r") as f:
        output = np.asarray(f["vol0"])
    out = {f"{name}/output": output}
    out.update({f"{name}/state/{k}": v.numpy() for k, v in model.state_dict().items()})
    return out


def main() -> None:
    stub_unused_modules()
    work = Path(sys.argv[1]).resolve()
    image = volume()
    arrays: dict[str, np.ndarray] = {"image": image}
    for name in CASES:
        arrays.update(run_case(name, work, image))
    np.savez_compressed(Path(__file__).with_name("golden.npz"), **arrays)


if __name__ == "__main__":
    main()
