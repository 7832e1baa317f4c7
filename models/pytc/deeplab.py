"""PyTC v1's 2D ``DeepLabV3`` (``deeplabv3a`` / ``b`` / ``c``; ``connectomics/model/arch/deeplab.py``)
on its torchvision-style 2D ResNet backbones (``resnet18`` ... ``wide_resnet101_2``), with PyTC's
keys: ``backbone.conv1/bn1/layer1-4`` (PyTC's ``IntermediateLayerGetter`` drops the pooling and
the classifier of the ResNet), ``classifier.*`` and, with ``aux_out``, ``aux_classifier.*``.

PyTC builds the backbone with ImageNet weights downloaded at construction (``pretrained=True``);
nothing downloads here: a checkpoint holds every weight anyway. Layers 3 and 4 use dilation
instead of stride (output stride 8). The heads are fixed at 2048 input channels, as in PyTC, so
only the Bottleneck backbones (``resnet50`` and up) build. Over (N, C, Z, Y, X) windows the model
runs slice by slice (see :func:`models.pytc.layers.slicewise`); the output is PyTC's ``"out"``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelConfigError
from models.pytc.layers import activation, norm, padding_mode, slicewise

# name: (bottleneck?, blocks per layer, groups, width per group)
RESNETS: dict[str, tuple[bool, tuple[int, int, int, int], int, int]] = {
    "resnet18": (False, (2, 2, 2, 2), 1, 64),
    "resnet34": (False, (3, 4, 6, 3), 1, 64),
    "resnet50": (True, (3, 4, 6, 3), 1, 64),
    "resnet101": (True, (3, 4, 23, 3), 1, 64),
    "resnet152": (True, (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": (True, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": (True, (3, 4, 23, 3), 32, 8),
    "wide_resnet50_2": (True, (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": (True, (3, 4, 23, 3), 1, 128),
}


def _conv(cin: int, cout: int, kernel: int, pad_mode: str = "zeros", **kwargs: Any) -> nn.Conv2d:
    return nn.Conv2d(
        cin, cout, kernel, bias=kwargs.pop("bias", False), padding_mode=padding_mode(pad_mode), **kwargs
    )


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, groups: int,
                 base_width: int, dilation: int, pad_mode: str, act_mode: str, norm_mode: str,
    ) -> None:  # fmt: skip
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv(inplanes, width, 1)
        self.bn1 = norm(norm_mode, width, 2)
        self.conv2 = _conv(
            width, width, 3, pad_mode, stride=stride, padding=dilation, groups=groups, dilation=dilation
        )
        self.bn2 = norm(norm_mode, width, 2)
        self.conv3 = _conv(width, planes * 4, 1)
        self.bn3 = norm(norm_mode, planes * 4, 2)
        self.relu = activation(act_mode)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, groups: int,
                 base_width: int, dilation: int, pad_mode: str, act_mode: str, norm_mode: str,
    ) -> None:  # fmt: skip
        super().__init__()
        if dilation > 1:
            raise ModelConfigError("deeplab: resnet18/34 (basic blocks) cannot replace strides by dilation")
        self.conv1 = _conv(inplanes, planes, 3, pad_mode, stride=stride, padding=1)
        self.bn1 = norm(norm_mode, planes, 2)
        self.relu = activation(act_mode)
        self.conv2 = _conv(planes, planes, 3, pad_mode, padding=1)
        self.bn2 = norm(norm_mode, planes, 2)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet2D(nn.Module):
    """The torchvision ResNet as PyTC builds it for DeepLab, without its pooling and classifier
    (``replace_stride_with_dilation = [False, True, True]``); torchvision's init."""

    def __init__(self, name: str, in_channel: int, pad_mode: str, act_mode: str, norm_mode: str) -> None:
        super().__init__()
        bottleneck, layers, self.groups, self.base_width = RESNETS[name]
        block: Any = Bottleneck if bottleneck else BasicBlock
        self.shared = (pad_mode, act_mode, norm_mode)
        self.inplanes, self.dilation = 64, 1
        self.conv1 = _conv(in_channel, 64, 7, pad_mode, stride=2, padding=3)
        self.bn1 = norm(norm_mode, 64, 2)
        self.relu = activation(act_mode)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, False)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, False)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, True)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, True)
        # PyTC's ResNet2D builds a 10-class classifier here, dropped with the pooling by its
        # IntermediateLayerGetter; built and dropped too, so the random init draws as PyTC's.
        nn.Linear(512 * block.expansion, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: Any, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        downsample = None
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv(self.inplanes, planes * block.expansion, 1, stride=stride),
                norm(self.shared[2], planes * block.expansion, 2),
            )
        layers = [
            block(
                self.inplanes,
                planes,
                stride,
                downsample,
                self.groups,
                self.base_width,
                previous,
                *self.shared,
            )
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(
                    self.inplanes, planes, 1, None, self.groups, self.base_width, self.dilation, *self.shared
                )
            )
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {"layer1": self.layer1(x)}
        out["layer2"] = self.layer2(out["layer1"])
        out["layer3"] = self.layer3(out["layer2"])
        out["layer4"] = self.layer4(out["layer3"])
        return out


def _cna(
    cin: int, cout: int, kernel: int, pad_mode: str, act_mode: str, norm_mode: str, **kwargs: Any
) -> list[nn.Module]:
    return [_conv(cin, cout, kernel, pad_mode, **kwargs), norm(norm_mode, cout, 2), activation(act_mode)]


class ASPP(nn.Module):
    def __init__(self, cin: int, pad_mode: str, act_mode: str, norm_mode: str, out: int = 256) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_cna(cin, out, 1, "zeros", act_mode, norm_mode))]
        for rate in (12, 24, 36):
            branches.append(
                nn.Sequential(*_cna(cin, out, 3, pad_mode, act_mode, norm_mode, padding=rate, dilation=rate))
            )
        branches.append(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), *_cna(cin, out, 1, "zeros", act_mode, norm_mode))
        )
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_cna(5 * out, out, 1, "zeros", act_mode, norm_mode))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        results = [conv(x) for conv in self.convs[:-1]]
        pooled = self.convs[-1](x)
        results.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(results, dim=1))


class HeadA(nn.Sequential):
    def __init__(self, cin: int, classes: int, pad_mode: str, act_mode: str, norm_mode: str) -> None:
        conv = _conv(256, 256, 3, pad_mode, padding=1)  # built before the ASPP, as in PyTC
        aspp = ASPP(cin, pad_mode, act_mode, norm_mode)
        super().__init__(
            aspp, conv, norm(norm_mode, 256, 2), activation(act_mode), _conv(256, classes, 1, bias=True)
        )


class HeadB(nn.Module):
    def __init__(self, cin: int, classes: int, pad_mode: str, act_mode: str, norm_mode: str) -> None:
        super().__init__()
        self.aspp = ASPP(cin, pad_mode, act_mode, norm_mode)
        self.conv1 = nn.Sequential(*_cna(256, 128, 3, pad_mode, act_mode, norm_mode, padding=1))
        self.conv2 = nn.Sequential(
            *_cna(128, 128, 3, pad_mode, act_mode, norm_mode, padding=1),
            _conv(128, classes, 3, pad_mode, padding=1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.aspp(x)
        size = [2 * s - 1 if s % 2 else 2 * s for s in x.shape[-2:]]
        return self.conv2(F.interpolate(self.conv1(x), size=size, mode="bilinear", align_corners=True))


class HeadC(nn.Module):
    def __init__(self, cin: int, classes: int, pad_mode: str, act_mode: str, norm_mode: str) -> None:
        super().__init__()
        self.aspp = ASPP(cin, pad_mode, act_mode, norm_mode)
        self.conv = nn.Sequential(*_cna(256, 32, 1, "zeros", act_mode, norm_mode))
        self.classifier = nn.Sequential(
            *_cna(288, 256, 3, pad_mode, act_mode, norm_mode, padding=1), _conv(256, classes, 1, bias=True)
        )

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.aspp(x), size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(torch.cat([x, self.conv(low)], dim=1))


class DeepLabV3(nn.Module):
    spatial_dims = 2

    def __init__(
        self,
        name: str,
        backbone_type: str = "resnet50",
        in_channel: int = 3,
        out_channel: int = 1,
        aux_out: bool = False,
        pad_mode: str = "replicate",
        act_mode: str = "elu",
        norm_mode: str = "bn",
    ) -> None:
        super().__init__()
        if backbone_type not in RESNETS:
            raise ModelConfigError(
                f"{name}: backbone_type must be one of {list(RESNETS)}, got {backbone_type!r}"
            )
        if not RESNETS[backbone_type][0]:
            raise ModelConfigError(f"{name}: PyTC's heads take 2048 channels; {backbone_type!r} gives 512")
        self.name, self.in_channels, self.out_channels = name, in_channel, out_channel
        self.backbone = ResNet2D(backbone_type, in_channel, pad_mode, act_mode, norm_mode)
        shared = (pad_mode, act_mode, norm_mode)
        self.aux_classifier: nn.Module | None = None
        if aux_out:
            self.aux_classifier = nn.Sequential(
                *_cna(1024, 256, 3, pad_mode, act_mode, norm_mode, padding=1),
                _conv(256, out_channel, 1, bias=True),
            )
        head = {"deeplabv3a": HeadA, "deeplabv3b": HeadB, "deeplabv3c": HeadC}[name]
        self.classifier = head(2048, out_channel, *shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            return slicewise(self._forward, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.features(x)
        if self.name == "deeplabv3c":
            y = self.classifier(features["layer4"], features["layer1"])
        else:
            y = self.classifier(features["layer4"])
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)
