"""DeepLab-v2-style segmentation networks for both rounds (paper §3.3–3.4; docs/method.md §5, §7).

    image (B, 3, H, W) -> backbone at output stride 8 -> ASPP -> logits (B, C + 1, H/8, W/8)
                       -> bilinear upsampling -> logits (B, C + 1, H, W)

ASPP as in DeepLab-v2: parallel 3x3 convolutions with different dilation rates, each mapping
the features straight to class scores, and their outputs **summed** (v3's concatenation and
image pooling are not used). The reference uses rates (6, 12, 18, 24) on 321 px crops at output
stride 8; here the rates are scaled with the input side (`aspp_rates`), so a branch looks at the
same share of the image: at 96 px they are (2, 4, 5, 7).

Backbones: ``"small"`` (the classifier's VGG-style conv-BN-ReLU stack, from scratch on a CPU)
or torchvision ``"resnet50"`` / ``"resnet101"`` dilated to output stride 8, whose ImageNet
weights load only from the torch hub cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier import small_backbone
from .pretrained import load_cached_state

__all__ = ["RESNET_WEIGHTS_FILES", "REFERENCE_RATES", "REFERENCE_CROP", "aspp_rates", "ASPP", "DeepLabV2"]

REFERENCE_RATES = (6, 12, 18, 24)
REFERENCE_CROP = 321
RESNET_WEIGHTS_FILES = {"resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}


def aspp_rates(image_size: int, reference: tuple[int, ...] = REFERENCE_RATES) -> tuple[int, ...]:
    """The reference's ASPP rates scaled from 321 px crops to `image_size` (at least 1 each).

    Rule: rate = max(1, round(r * image_size / 321)); duplicates are kept so the number of
    branches stays four. 96 px -> (2, 4, 5, 7); 321 px -> (6, 12, 18, 24).
    """
    return tuple(max(1, round(r * image_size / REFERENCE_CROP)) for r in reference)


class ASPP(nn.Module):
    """DeepLab-v2 atrous spatial pyramid pooling: sum of dilated 3x3 convs to class scores.

    x: (B, D, h, w) -> (B, L, h, w), L = number of labels (C + 1).
    """

    def __init__(self, in_channels: int, num_labels: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_labels, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)  # (B, L, h, w)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def _resnet_os8(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=[False, True, True])
    if pretrained:
        state = load_cached_state(RESNET_WEIGHTS_FILES[name], f"torchvision.models.{name}(weights='IMAGENET1K_V1')")
        net.load_state_dict(state)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                         net.layer1, net.layer2, net.layer3, net.layer4)
    return body, 2048


class DeepLabV2(nn.Module):
    """Backbone at output stride 8 + ASPP; logits upsampled to the input size.

    num_classes: C foreground classes (the network predicts C + 1 labels, 0 = background);
    image_size: the training crop side, which sets the ASPP rates unless `rates` is given;
    backbone: "small" (width `width`) | "resnet50" | "resnet101"; output_stride: 8 (DeepLab-v2),
    or 4 for the small backbone on small images (a 96 px image at stride 8 leaves a 12x12 grid,
    coarser relative to the image than the reference's 41x41 on 321 px crops);
    channels_last: keep weights and activations channels_last (faster on CPU).
    forward(x: (B, 3, H, W)) -> (B, C + 1, H, W) logits.
    """

    def __init__(self, num_classes: int, *, backbone: str = "small", width: int = 96,
                 image_size: int = 96, rates: tuple[int, ...] | None = None,
                 pretrained: bool = False, output_stride: int = 8, channels_last: bool = False):
        super().__init__()
        self.num_labels = num_classes + 1
        self.rates = tuple(rates) if rates is not None else aspp_rates(image_size)
        if backbone == "small":
            if pretrained:
                raise ValueError("the small backbone trains from scratch: pretrained=True needs "
                                 "backbone='resnet50' or 'resnet101'")
            self.backbone, channels = small_backbone(width, output_stride=output_stride), width
        elif backbone in RESNET_WEIGHTS_FILES:
            if output_stride != 8:
                raise ValueError(f"backbone={backbone!r} is dilated to output stride 8, got {output_stride}")
            self.backbone, channels = _resnet_os8(backbone, pretrained)
        else:
            raise ValueError(f"unknown backbone {backbone!r}: use 'small', 'resnet50' or 'resnet101'")
        self.aspp = ASPP(channels, self.num_labels, self.rates)
        self.output_stride = output_stride
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(x)  # (B, D, H/8, W/8)
        logits = self.aspp(feats)  # (B, C + 1, H/8, W/8)
        return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
