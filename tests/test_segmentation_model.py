"""DeepLab-v2-style segmentation network: shapes, ASPP rates, backbones, cached weights."""

from __future__ import annotations

import pytest
import torch

from nsrom_lib.models.segmentation import ASPP, DeepLabV2, aspp_rates


def test_aspp_rates_scale_with_image_size():
    assert aspp_rates(321) == (6, 12, 18, 24)
    assert aspp_rates(96) == (2, 4, 5, 7)
    assert aspp_rates(16) == (1, 1, 1, 1)


@pytest.mark.parametrize("size", [64, 96, 100])
def test_small_deeplab_logits_have_input_size(size):
    net = DeepLabV2(6, image_size=size, width=32).eval()
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7, size, size)


def test_aspp_sums_branches():
    aspp = ASPP(4, 3, (1, 2))
    x = torch.randn(1, 4, 9, 9)
    expected = aspp.branches[0](x) + aspp.branches[1](x)
    torch.testing.assert_close(aspp(x), expected)


def test_gradients_reach_every_parameter():
    net = DeepLabV2(3, image_size=64, width=16)
    out = net(torch.randn(2, 3, 64, 64))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 4, (2, 64, 64)), ignore_index=255).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_resnet_backbone_is_output_stride_8():
    net = DeepLabV2(2, backbone="resnet50", image_size=64).eval()
    with torch.no_grad():
        feats = net.backbone(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 2048, 8, 8)


def test_pretrained_resnet_without_cache_names_the_file(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="resnet101-63fe2227.pth") as e:
            DeepLabV2(2, backbone="resnet101", pretrained=True)
        assert str(tmp_path) in str(e.value)
    finally:
        torch.hub.set_dir(old)


def test_bad_backbone_is_refused():
    with pytest.raises(ValueError, match="unknown backbone"):
        DeepLabV2(2, backbone="vit")
    with pytest.raises(ValueError, match="from scratch"):
        DeepLabV2(2, pretrained=True)
