"""How ``golden.npz`` was made: PyTorch Connectomics v1's own ``Trainer.test`` on a small volume.

Not run by the tests (it needs PyTC). Run once, outside this repository's environment::

    git -C <mirror of PytorchConnectomics/pytorch_connectomics> archive v1.0 | tar -x -C /tmp/pytc-v1
    pip install --no-deps --target /tmp/pytc-deps yacs GPUtil einops
    PYTHONPATH=/tmp/pytc-v1:/tmp/pytc-deps python make_golden.py /tmp/pytc-golden/work [CASE ...]

(beside this project's torch, numpy, scipy, h5py, scikit-image and MONAI, which PyTC's ``unetr``
and ``swinunetr`` are built from; :func:`monai_renames` covers the one argument MONAI renamed).
Naming cases regenerates only those and keeps the others. :func:`stub_unused_modules` fabricates
the modules PyTC imports at the top but ``Trainer.test`` never calls (tensorboard, matplotlib,
torchvision, cv2, em_util, which is not on PyPI). :func:`pass_test_singly_names_by_keyword`
corrects the one call that keeps PyTC v1's ``Trainer.test_singly`` (``INFERENCE.DO_SINGLY: True``)
from running at all; nothing else of PyTC is changed.

The cases are ``cases.yaml``'s (add a line there for a new config pair, run this with its name,
add its row to docs/pytc.md): each is a base file, an experiment file and the trailing ``KEY VALUE``
overrides, as PyTC's ``main.py`` takes them. For each: the input volume (uint8, seed 0) is written as
``data/im.h5``; ``load_cfg``'s steps run (defaults, the files, the overrides, ``--inference``);
PyTC's ``build_model`` makes a randomly initialised model (``torch.manual_seed(1)``; as training
builds it, ``MODEL.DEPLOY_MODE`` false, so that a RepVGG backbone keeps the three branches that
PyTC's ``Trainer`` folds when it loads them for a deploy-mode test) whose norm
statistics and affine parameters (BatchNorm, SyncBatchNorm, GroupNorm) are then drawn at random,
so that norms matter, and whose values are rounded to float16 ones (stored in half the bytes,
exactly); it is saved as PyTC saves it (``{'iteration', 'state_dict', ...}``,
``checkpoint_00001.pth.tar``), and ``Trainer(cfg, cpu, 'test', checkpoint=...).test()`` (or
``test_singly()`` under ``INFERENCE.DO_SINGLY``, as PyTC's ``main.py``) writes PyTC's uint8
result. ``golden.npz`` keeps the input, PyTC's output of each case (``<case>/output``) and each
distinct state dict once (``weights/<case>/<key>``; cases of one architecture share it,
``<case>/weights`` names it). A case with ``weights: drawn`` (SwinUNETR, whose smallest model has
5.1 M values: 9 MB) has its float weights drawn from each key instead (``cases.draw_state``) and
loaded into PyTC's model before it is saved; golden.npz keeps only their keys, shapes and dtypes
(``drawn/<case>``), and the test draws them again. 4.9 MB for 44 cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import Case, draw_state, load_cases, unstore

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


def pass_test_singly_names_by_keyword() -> None:
    """PyTC v1's ``get_dataset`` calls ``_get_input(cfg, mode, rank, dir_name_init, img_name_init,
    min_size=...)``, positionally, where ``_get_input``'s fourth parameter is ``preload_data``: the
    folder list that ``Trainer.test_singly`` passes is taken for preloaded volumes, and every
    volume read from a file fails (``'str' object has no attribute 'shape'``). Here the two lists
    reach the parameters they are named for; ``Trainer.test`` (which passes neither) is unchanged."""
    from connectomics.data.dataset import build

    original = build._get_input

    def _get_input(
        cfg: object,
        mode: str = "train",
        rank: object = None,
        preload_data: list[object] | None = None,
        dir_name_init: list[str] | None = None,
        img_name_init: list[str] | None = None,
        **kwargs: object,
    ) -> object:
        if preload_data is not None and all(isinstance(p, str) for p in preload_data):
            dir_name_init, img_name_init, preload_data = preload_data, dir_name_init, None  # type: ignore[assignment]
        return original(cfg, mode, rank, preload_data, dir_name_init, img_name_init, **kwargs)

    build._get_input = _get_input


def monai_renames() -> None:
    """PyTC v1's ``unetr`` passes ``pos_embed`` to MONAI's ``ViT``, which MONAI >= 1.4 calls
    ``proj_type`` (the same layers and keys; models/pytc/unetr.py passes it so too): the ``ViT``
    PyTC imports takes the old name as the new one. Nothing else of MONAI is touched."""
    from typing import Any

    import monai.networks.nets.vit as vit

    class ViT(vit.ViT):  # type: ignore[misc]
        def __init__(self, *args: Any, pos_embed: str | None = None, **kwargs: Any) -> None:
            if pos_embed is not None:
                kwargs["proj_type"] = pos_embed
            super().__init__(*args, **kwargs)

    vit.ViT = ViT  # type: ignore[misc]


def volume() -> np.ndarray:
    from scipy import ndimage

    noise = np.random.default_rng(0).random(SHAPE)
    smooth = ndimage.gaussian_filter(noise, 1.5)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def randomise_norms(model: object) -> None:
    """Draw every norm's statistics and affine parameters at random, so that norms matter."""
    import torch

    with torch.no_grad():
        for m in model.modules():  # type: ignore[attr-defined]
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # bn and sync_bn
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def run_case(case: Case, work: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    import h5py
    import torch
    from connectomics.config import get_cfg_defaults
    from connectomics.config.utils import overwrite_cfg, update_inference_cfg
    from connectomics.engine import Trainer
    from connectomics.model import build_model

    folder = work / case.name
    (folder / "data").mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "data" / "im.h5", "w") as f:
        f.create_dataset("main", data=image)
    os.chdir(folder)
    # PyTC's load_cfg with --inference: defaults, the base, the experiment, the options, then
    # update_inference_cfg and overwrite_cfg.
    cfg = get_cfg_defaults()
    for file in case.files:
        cfg.merge_from_file(str(file))
    cfg.merge_from_list(list(case.overrides))
    update_inference_cfg(cfg)
    overwrite_cfg(cfg, argparse.Namespace(distributed=False))
    cfg.freeze()
    # the checkpoint as training saves it: MODEL.DEPLOY_MODE False, so a RepVGG backbone keeps its
    # three branches, which PyTC's Trainer folds when it loads them into a deploy-mode model
    trained = cfg.clone()
    trained.defrost()
    trained.MODEL.DEPLOY_MODE = False
    torch.manual_seed(1)
    model = build_model(trained, torch.device("cpu")).module
    randomise_norms(model)
    with torch.no_grad():  # float16 values, so that golden.npz stores them in half the bytes
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())
        if case.drawn:  # weights: drawn (cases.draw_state), which golden.npz does not store
            floats = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
            shapes = {k: (tuple(v.shape), str(v.numpy().dtype)) for k, v in floats.items()}
            for k, v in draw_state(shapes).items():
                floats[k].copy_(torch.from_numpy(v))
    state = {"iteration": 1, "state_dict": model.state_dict(), "optimizer": {}, "lr_scheduler": {}}
    torch.save(state, folder / "checkpoint_00001.pth.tar")
    trainer = Trainer(cfg, torch.device("cpu"), "test", checkpoint=str(folder / "checkpoint_00001.pth.tar"))
    trainer.test_singly() if cfg.INFERENCE.DO_SINGLY else trainer.test()  # as PyTC's main.py
    written = sorted((folder / "out").glob("*.h5"))  # result*.h5, or the volume's name (DO_SINGLY)
    assert len(written) == 1, written
    with h5py.File(written[0], "r") as f:
        output = np.asarray(f["vol0"])
    out = {f"{case.name}/output": output}
    out.update({f"{case.name}/state/{k}": v.numpy() for k, v in model.state_dict().items()})
    return out


def store(arrays: dict[str, np.ndarray], target: Path) -> None:
    """Each distinct state dict once (``weights/<first case>/<key>``, floats as float16, which
    hold them exactly), each case naming its own (``<case>/weights``), and PyTC's outputs."""
    stored: dict[str, np.ndarray] = {}
    seen: dict[bytes, str] = {}
    drawn = {case.name for case in load_cases() if case.drawn}
    for name in dict.fromkeys(k.split("/")[0] for k in arrays if "/" in k):
        prefix = f"{name}/state/"
        state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        digest = hashlib.sha256(
            b"".join(k.encode() + str(v.dtype).encode() + v.tobytes() for k, v in sorted(state.items()))
        ).digest()
        owner = seen.setdefault(digest, name)
        if owner == name:
            floats = {k: v for k, v in state.items() if name in drawn and v.dtype.kind == "f"}
            if floats:  # only their keys, shapes and dtypes: unstore draws them again
                shapes = {k: (v.shape, str(v.dtype)) for k, v in floats.items()}
                again = draw_state(shapes)
                assert all(np.array_equal(again[k], v) for k, v in floats.items()), name
                spec = [[k, list(shape), dtype] for k, (shape, dtype) in shapes.items()]
                stored[f"drawn/{name}"] = np.array(json.dumps(spec))
            for k, v in state.items():
                if k in floats:
                    continue
                half = v.astype(np.float16) if v.dtype == np.float32 else v
                assert np.array_equal(half.astype(v.dtype), v), k
                stored[f"weights/{name}/{k}"] = half
        stored[f"{name}/weights"] = np.array(owner)
        stored[f"{name}/output"] = arrays[f"{name}/output"]
    stored["image"] = arrays["image"]
    np.savez_compressed(target, **stored)


def main() -> None:
    stub_unused_modules()
    monai_renames()
    pass_test_singly_names_by_keyword()
    work = Path(sys.argv[1]).resolve()
    only = set(sys.argv[2:])
    image = volume()
    arrays: dict[str, np.ndarray] = {"image": image}
    target = Path(__file__).with_name("golden.npz")
    if only and target.exists():  # regenerate some cases, keep the others
        with np.load(target) as stored:
            kept = unstore({k: stored[k] for k in stored.files})
        arrays.update({k: v for k, v in kept.items() if k != "image" and k.split("/")[0] not in only})
    for case in load_cases():
        if not only or case.name in only:
            arrays.update(run_case(case, work, image))
            store(arrays, target)  # after each case: a failing case keeps those before it


if __name__ == "__main__":
    main()
