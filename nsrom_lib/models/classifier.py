"""The NSROM classifier and its integral attention variant (paper §3.1; docs/method.md §1–§2).

    image -> backbone -> 3 extra 3x3 convs -> GloRe -> ReLU -> 1x1 conv (C maps = the CAM)
          -> global average pooling -> C logits            (trained with the loss of Eq. 4)

The integral attention model (IAM, docs/method.md §2) has the same layers, but as in the
reference (``vgg1.py``) its ReLU sits *before* the GloRe unit instead of after it:

    image -> backbone -> 3 extra 3x3 convs -> ReLU -> GloRe -> 1x1 conv (C maps) -> pooling

Two backbones:

- ``"small"``: a VGG-style stack of conv-BN-ReLU blocks (output stride 4 or 8) that trains from
  scratch on a CPU in minutes;
- ``"vgg16"``: torchvision's VGG-16 layers adapted to output stride 8 as in the reference (first
  three max-pools stride 2, the fourth 3x3 stride 1, the last block dilated by 2, no fifth pool).
  ImageNet weights are read only from the torch hub cache, never downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .glore import GloRe
from .pretrained import cached_weights_path, load_cached_state

__all__ = [
    "VGG16_WEIGHTS_FILE",
    "VGG16_WEIGHTS_URL",
    "Classifier",
    "small_backbone",
    "vgg16_backbone",
    "vgg16_weights_path",
    "load_vgg16_imagenet",
]

VGG16_WEIGHTS_FILE = "vgg16-397923af.pth"
VGG16_WEIGHTS_URL = f"https://download.pytorch.org/models/{VGG16_WEIGHTS_FILE}"

# The reference's cfg 'D1': VGG-16 with the fourth pool 3x3 stride 1 ('N') and no fifth pool.
_VGG16_OS8 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "N", 512, 512, 512]


def small_backbone(width: int = 96, output_stride: int = 8) -> nn.Sequential:
    """A small VGG-style backbone: conv3x3-BN-ReLU blocks and 2x2 max-pools.

    width: channels of the output (stages use width/4, width/2, width, width);
    output_stride: 4 or 8. Input (B, 3, H, W) -> output (B, width, H/os, W/os).
    """
    if output_stride not in (4, 8):
        raise ValueError(f"output_stride must be 4 or 8, got {output_stride}")
    if width < 8 or width % 4:
        raise ValueError(f"width must be a multiple of 4 and at least 8, got {width}")
    c1, c2, c3 = width // 4, width // 2, width

    def block(c_in: int, c_out: int, dilation: int = 1) -> list[nn.Module]:
        conv = nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    layers: list[nn.Module] = []
    layers += block(3, c1) + [nn.MaxPool2d(2, 2)]  # stride 2
    layers += block(c1, c2) + [nn.MaxPool2d(2, 2)]  # stride 4
    layers += block(c2, c3) + block(c3, c3)
    if output_stride == 8:
        layers += [nn.MaxPool2d(2, 2)]  # stride 8
    # Last block dilated by 2, like the reference's VGG-16 adaptation.
    layers += block(c3, c3, dilation=2)
    return nn.Sequential(*layers)


def vgg16_backbone() -> nn.Sequential:
    """VGG-16 conv layers at output stride 8, as the reference's ``make_layers(cfg['D1'])``.

    Layer indices match torchvision's ``vgg16().features`` (0..29), so its ImageNet weights load
    key for key. Input (B, 3, H, W) -> output (B, 512, ~H/8, ~W/8) (pools floor odd sizes).
    """
    layers: list[nn.Module] = []
    c_in = 3
    for i, v in enumerate(_VGG16_OS8):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "N":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
        else:
            # The last block (cfg index > 13) is dilated by 2, as in the reference.
            d = 2 if i > 13 else 1
            layers += [nn.Conv2d(c_in, int(v), 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            c_in = int(v)
    return nn.Sequential(*layers)


def vgg16_weights_path() -> Path:
    """Where the ImageNet VGG-16 weights must be.

    That is ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``, torchvision's own cache file.
    """
    return cached_weights_path(VGG16_WEIGHTS_FILE)


def load_vgg16_imagenet(features: nn.Sequential) -> None:
    """Load torchvision's ImageNet VGG-16 weights from the torch hub cache into ``features``.

    Never downloads. Raises FileNotFoundError naming the expected path and how to get the file.
    """
    path = vgg16_weights_path()
    state = load_cached_state(VGG16_WEIGHTS_FILE, "torchvision.models.vgg16(weights='IMAGENET1K_V1')")
    own = features.state_dict()
    picked = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    missing = [k for k in own if k not in picked]
    bad = [k for k in own if k in picked and picked[k].shape != own[k].shape]
    if missing or bad:
        raise ValueError(
            f"{path} does not hold torchvision VGG-16 weights (missing {missing}, wrong shape "
            f"{bad}); replace it with {VGG16_WEIGHTS_URL}"
        )
    features.load_state_dict({k: picked[k] for k in own})


class Classifier(nn.Module):
    """NSROM classifier (or, with ``iam=True``, the integral attention model): logits and CAMs.

    ``forward(x)`` returns logits (B, C); ``forward(x, return_cam=True)`` or ``forward_cam(x)``
    returns ``(logits, cam)`` with cam (B, C, h, w) at feature resolution (h = H / os).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "small",
        glore: bool = True,
        iam: bool = False,
        width: int = 96,
        num_nodes: int | None = None,
        num_state: int | None = None,
        pretrained: bool = False,
        output_stride: int = 8,
        channels_last: bool = False,
    ) -> None:
        """num_classes: C; backbone: "small" or "vgg16"; glore: use the GloRe unit (else
        identity, the ablation); iam: integral attention model (ReLU before GloRe);
        width: the small backbone's and extra convs' channels D (vgg16: always 512);
        num_nodes / num_state: N / S of GloRe (default D/8 and D/4, at least 8 and 16 — the
        reference's 64 / 128 for D = 512); pretrained: vgg16 only, ImageNet weights from the
        torch hub cache; output_stride: 4 or 8, small backbone only (vgg16: 8);
        channels_last: keep weights and activations channels_last (faster on CPU).
        """
        super().__init__()
        if backbone == "small":
            if pretrained:
                raise ValueError(
                    "pretrained=True needs backbone='vgg16'; the small one has no weights"
                )
            self.features = small_backbone(width, output_stride)
            dim = width
        elif backbone == "vgg16":
            if output_stride != 8:
                raise ValueError(f"backbone='vgg16' has output stride 8, got {output_stride}")
            self.features = vgg16_backbone()
            dim = 512
        else:
            raise ValueError(f"backbone must be 'small' or 'vgg16', got {backbone!r}")
        self.num_classes = num_classes
        self.backbone = backbone
        self.iam = iam
        self.output_stride = output_stride
        self.channels_last = channels_last
        num_nodes = num_nodes or max(8, dim // 8)
        num_state = num_state or max(16, dim // 4)

        # Three extra 3x3 convs (no BN, as in the reference); the classifier has no ReLU after
        # the third one, the IAM has.
        extra: list[nn.Module] = [
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1),
        ]
        if iam:
            extra.append(nn.ReLU(inplace=True))
        self.extra_convs = nn.Sequential(*extra)
        self.glore: nn.Module = GloRe(dim, num_nodes, num_state) if glore else nn.Identity()
        # CAM head: ReLU (classifier only) then 1x1 conv to C maps.
        head: list[nn.Module] = [] if iam else [nn.ReLU(inplace=False)]
        self.head = nn.Sequential(*head, nn.Conv2d(dim, num_classes, kernel_size=1))

        self._initialize_weights()
        if pretrained:
            load_vgg16_imagenet(self.features)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _initialize_weights(self) -> None:
        """The reference's init: conv weights N(0, 2 / (k·k·out)), zero biases, BN (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def new_modules(self) -> list[nn.Module]:
        """The layers added on top of the backbone (the reference's ``extra_*``, 10x / 20x lr)."""
        return [self.extra_convs, self.glore, self.head]

    def forward(self, x: Tensor, return_cam: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, 3, H, W) normalised image batch. Returns logits (B, C), or with
        ``return_cam=True`` ``(logits, cam)``, cam: (B, C, h, w) float, the raw class maps.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = self.features(x)  # (B, D, h, w)
        f = self.extra_convs(f)  # (B, D, h, w)
        f = self.glore(f)  # (B, D, h, w)
        cam = self.head(f)  # (B, C, h, w)
        # Global average pooling of the CAM gives the logits (§1).
        logits = F.adaptive_avg_pool2d(cam, 1).flatten(1)  # (B, C)
        if return_cam:
            return logits, cam
        return logits

    def forward_cam(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits (B, C), cam (B, C, h, w))`` for x: (B, 3, H, W)."""
        return self.forward(x, return_cam=True)  # type: ignore[return-value]

    def param_groups(self, lr: float) -> list[dict]:
        """SGD parameter groups as in the reference: backbone weights lr, backbone biases 2·lr,
        new layers' weights 10·lr and biases 20·lr (BatchNorm weights count as weights).

        Each group carries a ``name``; empty groups are dropped.
        """
        new_ids = {id(p) for m in self.new_modules() for p in m.parameters()}
        groups: dict[str, list[nn.Parameter]] = {
            "backbone_weight": [],
            "backbone_bias": [],
            "new_weight": [],
            "new_bias": [],
        }
        for name, p in self.named_parameters():
            kind = "weight" if name.endswith("weight") else "bias"
            where = "new" if id(p) in new_ids else "backbone"
            groups[f"{where}_{kind}"].append(p)
        mult = {"backbone_weight": 1, "backbone_bias": 2, "new_weight": 10, "new_bias": 20}
        return [{"name": k, "params": v, "lr": lr * mult[k]} for k, v in groups.items() if v]
