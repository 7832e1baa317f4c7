# ruff: noqa: E501  (the table of cases reads best one case a line)
"""Make the golden files of tests/unit/models/test_pytc_architectures.py from PyTC v1 itself.

Not run by the test suite; it needs PyTorch Connectomics v1 on the path. How they were made:

    git -C /work/.mirror/PytorchConnectomics+pytorch_connectomics/repo archive v1.0 | tar -x -C /tmp/pytc-v1
    pip install --target /tmp/pytc-extra einops           # botnet imports it; nothing else is needed
    PYTHONPATH=/tmp/pytc-v1:/tmp/pytc-extra python tests/data/pytc_arch/make_golden.py

run with torch 2.13.0 and MONAI 1.6 (the project's venv: UNETR and SwinUNETR are MONAI blocks).
The model classes are imported directly (``connectomics.model``), as ``build_model`` would build
them from a config: ``MODEL_MAP[arch](**kwargs)`` with the case's kwargs.

For each case in ``CASES`` it writes, into this folder:

- ``keys.json``: {case: [[key, shape], ...]} of the model's state dict, in PyTC's order;
- ``<case>.pt`` (cases in ``STORED``): the state dict of the model built after ``torch.manual_seed(SEED)``, with every
  floating tensor then moved a little by seeded noise (so that norm weights and running statistics
  are not the defaults and a swapped key cannot go unnoticed);
- ``outputs.npz``: ``<case>/output``, the forward of the perturbed model in eval mode, float32 on
  the CPU, on the input ``torch.rand(shape, generator=torch.Generator().manual_seed(SEED + 2))``; ``fpn_3d_repvgg/deploy_output`` the same input through
  PyTC's deploy-mode model with the training weights folded as PyTC folds them for inference;
- ``cases.json``: each case's architecture, config, input shape and the sha256 of the state dict
  right after the seeded build (before the noise), to prove the random init follows PyTC's order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

SEED = 1234
HERE = Path(__file__).resolve().parent

SMALL3D = [4, 8, 8, 8, 8]
SMALL2D = [16, 16, 32, 32, 32]
COMMON = {"pad_mode": "replicate", "act_mode": "elu", "norm_mode": "bn"}

# case name: (architecture, kwargs as PyTC's build_model passes them, input shape)
CASES: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "unet_3d_residual": ("unet_3d", {**COMMON, "filters": SMALL3D, "in_channel": 1, "out_channel": 3}, (1, 1, 5, 17, 17)),
    "unet_3d_residual_pa": ("unet_3d", {**COMMON, "filters": SMALL3D, "block_type": "residual_pa", "out_channel": 2}, (1, 1, 5, 17, 17)),
    "unet_3d_residual_se": ("unet_3d", {**COMMON, "filters": SMALL3D, "block_type": "residual_se", "act_mode": "relu"}, (1, 1, 5, 17, 17)),
    "unet_3d_residual_se_pa": ("unet_3d", {**COMMON, "filters": SMALL3D, "block_type": "residual_se_pa"}, (1, 1, 5, 17, 17)),
    "unet_3d_pooling_iso": ("unet_3d", {**COMMON, "filters": SMALL3D, "pooling": True, "is_isotropic": True, "in_channel": 2}, (2, 2, 16, 16, 16)),
    "unet_3d_gn_zeros_swish": ("unet_3d", {"filters": [8, 8, 16, 16, 16], "norm_mode": "gn", "pad_mode": "zeros", "act_mode": "swish", "isotropy": [False, False, True, True, True]}, (1, 1, 5, 17, 17)),
    "unet_3d_in_leaky": ("unet_3d", {"filters": [4, 8, 8], "norm_mode": "in", "act_mode": "leaky_relu", "isotropy": [False, True, True]}, (1, 1, 5, 17, 17)),
    "unet_3d_xavier": ("unet_3d", {**COMMON, "filters": SMALL3D, "init_mode": "xavier"}, (1, 1, 3, 9, 9)),
    "unet_3d_kaiming": ("unet_3d", {**COMMON, "filters": SMALL3D, "init_mode": "kaiming"}, (1, 1, 3, 9, 9)),
    "unet_3d_selu": ("unet_3d", {**COMMON, "filters": SMALL3D, "init_mode": "selu"}, (1, 1, 3, 9, 9)),
    "unet_plus_3d": ("unet_plus_3d", {**COMMON, "filters": SMALL3D}, (1, 1, 5, 17, 17)),
    "unet_plus_3d_pooling_gn": ("unet_plus_3d", {"filters": [8, 8, 16, 16, 16], "norm_mode": "gn", "pooling": True, "block_type": "residual_se"}, (1, 1, 8, 32, 32)),
    "unet_2d": ("unet_2d", {"filters": SMALL2D, "act_mode": "leaky_relu", "norm_mode": "gn", "pad_mode": "replicate"}, (2, 1, 33, 33)),
    "unet_2d_se_pooling_bn": ("unet_2d", {"filters": [4, 8, 8, 16], "block_type": "residual_se", "pooling": True, "norm_mode": "bn", "act_mode": "relu"}, (1, 1, 32, 32)),
    "unet_plus_2d": ("unet_plus_2d", {"filters": [4, 8, 8, 16], "norm_mode": "bn", "act_mode": "elu", "in_channel": 2}, (1, 2, 33, 33)),
    "fpn_3d_resnet": ("fpn_3d", {**COMMON, "backbone_type": "resnet", "filters": SMALL3D, "blocks": [2, 1, 1, 1]}, (1, 1, 5, 17, 17)),
    "fpn_3d_resnet_se_iso": ("fpn_3d", {**COMMON, "backbone_type": "resnet", "block_type": "residual_se", "filters": SMALL3D, "blocks": [1, 1, 1, 1], "is_isotropic": True, "act_mode": "relu"}, (1, 1, 9, 9, 9)),
    "fpn_3d_repvgg": ("fpn_3d", {**COMMON, "backbone_type": "repvgg", "filters": [4, 8, 12, 16, 20], "blocks": [2, 1, 1, 1]}, (1, 1, 5, 17, 17)),
    "fpn_3d_repvgg_deploy": ("fpn_3d", {**COMMON, "backbone_type": "repvgg", "filters": [4, 8, 12, 16, 20], "blocks": [2, 1, 1, 1], "deploy": True}, (1, 1, 5, 17, 17)),
    "fpn_3d_botnet": ("fpn_3d", {**COMMON, "backbone_type": "botnet", "filters": SMALL3D, "blocks": [1, 1, 1, 1], "fmap_size": [8, 32, 32]}, (1, 1, 8, 32, 32)),
    "fpn_3d_efficientnet": ("fpn_3d", {**COMMON, "backbone_type": "efficientnet", "block_type": "inverted_res", "filters": [8, 8, 16, 16, 16], "blocks": [1, 1, 1, 1, 1], "ks": [3, 3, 5, 3, 3], "attn": "squeeze_excitation"}, (1, 1, 5, 17, 17)),
    "fpn_3d_efficientnet_dilated": ("fpn_3d", {**COMMON, "backbone_type": "efficientnet", "block_type": "inverted_res_dilated", "filters": [8, 8, 16, 16, 16], "blocks": [1, 2, 1, 1, 1], "ks": [3, 5, 3, 3, 3], "attn": "strip_pool"}, (1, 1, 5, 16, 16)),
    "fpn_3d_efficientnet_plane": ("fpn_3d", {**COMMON, "backbone_type": "efficientnet", "filters": [8, 8, 16, 16, 16], "blocks": [1, 1, 1, 1, 1], "attn": "plane_pool", "is_isotropic": True, "block_type": "inverted_res"}, (1, 1, 9, 9, 9)),
    "deeplabv3a": ("deeplabv3a", {**COMMON, "backbone_type": "resnet50", "in_channel": 1, "out_channel": 2}, (1, 1, 33, 33)),
    "deeplabv3b_aux": ("deeplabv3b", {**COMMON, "backbone_type": "resnet50", "in_channel": 1, "out_channel": 2, "aux_out": True, "act_mode": "relu"}, (1, 1, 33, 33)),
    "deeplabv3c_resnext": ("deeplabv3c", {**COMMON, "backbone_type": "resnext50_32x4d", "in_channel": 1, "out_channel": 3, "norm_mode": "gn", "pad_mode": "zeros"}, (1, 1, 32, 32)),
    "deeplabv3b_wide_resnet50_2": ("deeplabv3b", {**COMMON, "backbone_type": "wide_resnet50_2", "in_channel": 1, "out_channel": 1}, (1, 1, 32, 32)),
    "deeplabv3c_resnext101": ("deeplabv3c", {**COMMON, "backbone_type": "resnext101_32x8d", "in_channel": 1, "out_channel": 2}, (1, 1, 33, 33)),
    "unetr": ("unetr", {"in_channel": 1, "out_channel": 2, "img_size": [16, 32, 32], "feature_size": 4, "hidden_size": 24, "mlp_dim": 32, "num_heads": 2, "pos_embed": "perceptron", "norm_name": "instance", "conv_block": True, "res_block": True, "dropout_rate": 0.0, "is_isotropic": False}, (1, 1, 16, 32, 32)),
    "unetr_iso_batch": ("unetr", {"in_channel": 1, "out_channel": 1, "img_size": [32, 32, 32], "feature_size": 4, "hidden_size": 16, "mlp_dim": 16, "num_heads": 4, "pos_embed": "conv", "norm_name": "batch", "conv_block": False, "res_block": False, "is_isotropic": True}, (1, 1, 32, 32, 32)),
    "unetr_conv_no_res": ("unetr", {"in_channel": 1, "out_channel": 1, "img_size": [16, 32, 32], "feature_size": 4, "hidden_size": 24, "mlp_dim": 32, "num_heads": 2, "pos_embed": "perceptron", "norm_name": "instance", "conv_block": True, "res_block": False, "is_isotropic": False}, (1, 1, 16, 32, 32)),
    "swinunetr": ("swinunetr", {"in_channel": 1, "out_channel": 1, "img_size": [8, 64, 64], "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "norm_name": "instance", "is_isotropic": False, "isotropy": [False, True, True, True], "downsample": "merging", "use_v2": False, "normalize": True, "spatial_dims": 3, "drop_rate": 0.0, "attn_drop_rate": 0.0, "dropout_path_rate": 0.0, "use_checkpoint": False}, (1, 1, 8, 64, 64)),
    "swinunetr_iso_v2": ("swinunetr", {"in_channel": 2, "out_channel": 1, "img_size": [32, 32, 32], "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 2], "norm_name": "batch", "is_isotropic": True, "downsample": "mergingv2", "use_v2": True}, (1, 2, 32, 32, 32)),
}  # fmt: skip
# Cases whose perturbed state dict is stored (<case>.pt, loaded by the test with weights_only=True).
# (PyTC's own RepVGG folding needs a shape change at every strided block: distinct filters.)
# The others are too large (ResNet-50 backbones) or repeat a stored layout: the test rebuilds them
# from the seed, checks the init's hash, perturbs them as perturb() does and compares the output.
STORED = {
    "unet_3d_residual_pa", "unet_3d_residual_se_pa", "unet_3d_pooling_iso", "unet_plus_3d",
    "unet_2d_se_pooling_bn", "unet_plus_2d", "fpn_3d_resnet", "fpn_3d_repvgg", "fpn_3d_efficientnet",
}  # fmt: skip


def build(architecture: str, kwargs: dict) -> torch.nn.Module:
    from connectomics.model.backbone import resnet
    from connectomics.model.build import MODEL_MAP

    resnet.load_state_dict_from_url = lambda *_a, **_k: {}  # no ImageNet download: random init stays
    _vit_takes_pos_embed()
    extra = {"name": architecture} if architecture.startswith("deeplab") else {}
    return MODEL_MAP[architecture](**kwargs, **extra)


def _vit_takes_pos_embed() -> None:
    """PyTC v1 passes ``pos_embed`` to MONAI's ViT, which MONAI 1.6 names ``proj_type``."""
    from connectomics.model.arch import unetr
    from monai.networks.nets.vit import ViT

    class PosEmbedViT(ViT):
        def __init__(self, *args, pos_embed="conv", **kwargs):
            super().__init__(*args, proj_type=pos_embed, **kwargs)

    unetr.ViT = PosEmbedViT


def allow_pooling_attention(model: torch.nn.Module) -> None:
    """PyTC's strip/plane pooling attention applies an in-place ReLU to an expanded tensor, which
    torch refuses at run time; made out-of-place here (same values) so that PyTC can run at all."""
    for module in model.modules():
        if type(module).__name__ in ("StripPoolingAttention3D", "PlanePoolingAttention3D"):
            relu = getattr(module, "relu", None)
            if hasattr(relu, "inplace"):
                relu.inplace = False


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def perturb(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED + 1)
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            noise = torch.rand(value.shape, generator=generator) * 0.2 - 0.1
            value = value.abs() + 0.5 + noise if key.endswith("running_var") else value + noise
        out[key] = value.clone()
    return out


def repvgg_deploy_output() -> np.ndarray:
    """The fpn_3d_repvgg training weights as PyTC runs them for inference: folded by its
    ``update_state_dict(cfg, state, mode='test')`` into a model built with ``DEPLOY_MODE`` true."""
    from connectomics.model.backbone import RepVGG3D

    architecture, kwargs, shape = CASES["fpn_3d_repvgg"]
    model = build(architecture, {**kwargs, "deploy": True})
    state = torch.load(HERE / "fpn_3d_repvgg.pt", weights_only=True)
    model.load_state_dict(RepVGG3D.repvgg_convert_as_backbone(state))
    model.eval()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(SEED + 2))
    with torch.no_grad():
        return model(x).numpy()


def main() -> None:
    keys: dict[str, list] = {}
    cases: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, (architecture, kwargs, shape) in CASES.items():
        torch.manual_seed(SEED)
        model = build(architecture, kwargs)
        allow_pooling_attention(model)
        init = {k: v.clone() for k, v in model.state_dict().items()}  # load_state_dict writes in place
        state = perturb(init)
        model.load_state_dict(state)
        model.eval()
        x = torch.rand(shape, generator=torch.Generator().manual_seed(SEED + 2))
        with torch.no_grad():
            y = model(x)
        if isinstance(y, dict):
            y = y["out"]
        keys[name] = [[k, list(v.shape)] for k, v in init.items()]
        cases[name] = {"architecture": architecture, "config": kwargs, "input_shape": list(shape),
                       "init_sha256": state_sha256(init)}  # fmt: skip
        if name in STORED:
            torch.save(state, HERE / f"{name}.pt")
        arrays[f"{name}/output"] = y.numpy()
        print(name, tuple(y.shape), sum(v.numel() for v in state.values()))
    arrays["fpn_3d_repvgg/deploy_output"] = repvgg_deploy_output()
    (HERE / "keys.json").write_text(json.dumps(keys, indent=0) + "\n")
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    np.savez_compressed(HERE / "outputs.npz", **arrays)


if __name__ == "__main__":
    main()
