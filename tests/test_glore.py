"""The GloRe unit (docs/method.md §1) and the classifier / integral attention model built on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nsrom_lib.models.classifier import (
    VGG16_WEIGHTS_FILE,
    Classifier,
    vgg16_backbone,
    vgg16_weights_path,
)
from nsrom_lib.models.glore import GloRe


def glore_by_hand(unit: GloRe, x: torch.Tensor) -> torch.Tensor:
    """docs/method.md §1 restated with einsum from the unit's weights (eval mode), for parity."""
    B, D, H, W = x.shape
    state = torch.einsum("sd,bdhw->bshw", unit.conv_state.weight[:, :, 0, 0], x)
    state = state + unit.conv_state.bias[None, :, None, None]  # (B, S, H, W)
    proj = torch.einsum("nd,bdhw->bnhw", unit.conv_proj.weight[:, :, 0, 0], x)
    proj = proj + unit.conv_proj.bias[None, :, None, None]  # (B, N, H, W)
    # V[s, n] = sum over pixels of state[s, pixel] * proj[n, pixel]
    v = torch.einsum("bshw,bnhw->bsn", state, proj)
    # H = V + A(V): A mixes nodes (N x N matrix plus a bias per node)
    a, a_bias = unit.gcn.adjacency.weight[:, :, 0], unit.gcn.adjacency.bias
    h = v + torch.einsum("mn,bsn->bsm", a, v) + a_bias[None, None, :]
    # Z = W_g ReLU(H): W_g mixes state channels
    z = torch.einsum("ts,bsn->btn", unit.gcn.state_update.weight[:, :, 0], h.clamp(min=0))
    # Y[s, pixel] = sum over nodes of Z[s, n] * proj[n, pixel]
    y = torch.einsum("bsn,bnhw->bshw", z, proj)
    ext = torch.einsum("ds,bshw->bdhw", unit.conv_extend.weight[:, :, 0, 0], y)
    bn = unit.bn
    ext = (ext - bn.running_mean[None, :, None, None]) / torch.sqrt(
        bn.running_var[None, :, None, None] + bn.eps
    ) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return x + ext


def randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running stats and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (1, 32, 5, 11), (3, 8, 1, 1), (2, 24, 17, 4)])
def test_glore_output_shape_equals_input(shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    unit = GloRe(shape[1], num_nodes=4, num_state=8)
    x = torch.randn(*shape)
    assert unit.eval()(x).shape == x.shape
    assert unit.train()(x).shape == x.shape


def test_glore_parts_shapes_and_by_hand_parity() -> None:
    torch.manual_seed(0)
    B, D, H, W, N, S = 2, 12, 6, 7, 5, 10
    unit = GloRe(D, num_nodes=N, num_state=S).eval()
    randomize_bn(unit)
    x = torch.randn(B, D, H, W)
    out, parts = unit(x, return_parts=True)
    assert parts["state"].shape == (B, S, H, W)
    assert parts["proj"].shape == (B, N, H, W)
    for key in ("V", "H", "Z"):
        assert parts[key].shape == (B, S, N)
    assert parts["Y"].shape == (B, S, H, W)
    # V = state · projᵀ, Y = Z · proj (same projection weights both ways)
    state, proj = parts["state"].flatten(2), parts["proj"].flatten(2)
    torch.testing.assert_close(parts["V"], state @ proj.transpose(1, 2))
    torch.testing.assert_close(parts["Y"].flatten(2), parts["Z"] @ proj)
    # H is returned before the ReLU: it keeps its negative values
    assert (parts["H"] < 0).any()
    torch.testing.assert_close(out, glore_by_hand(unit, x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, unit(x))


def test_glore_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    unit = GloRe(16, num_nodes=4, num_state=8).train()
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    unit(x).square().mean().backward()
    for name, p in unit.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_glore_receptive_field_is_global_unlike_a_conv_stack() -> None:
    """Changing the bottom-right input pixel changes the top-left output pixel through GloRe,
    not through a stack of as many 3x3 convs (receptive field 9x9 on a 16x16 map)."""
    torch.manual_seed(0)
    D, size = 8, 16
    unit = GloRe(D, num_nodes=4, num_state=8).eval()
    randomize_bn(unit)
    # The GloRe path has four learned layers: state / proj, adjacency, state update, extend.
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Conv2d(D, D, 3, padding=1), nn.BatchNorm2d(D), nn.ReLU()]
    convs = nn.Sequential(*layers).eval()
    randomize_bn(convs)

    x = torch.randn(1, D, size, size)
    x2 = x.clone()
    x2[:, :, -1, -1] += 5.0  # a distant pixel
    with torch.no_grad():
        glore_change = (unit(x2) - unit(x))[:, :, 0, 0].abs().max()
        conv_change = (convs(x2) - convs(x))[:, :, 0, 0].abs().max()
        conv_near = (convs(x2) - convs(x))[:, :, -3, -3].abs().max()
    assert glore_change > 1e-4
    assert conv_change == 0
    assert conv_near > 0  # the stack does react nearby: the test can see a change


@pytest.mark.parametrize("glore", [True, False])
@pytest.mark.parametrize("iam", [False, True])
@pytest.mark.parametrize("output_stride", [4, 8])
def test_small_classifier_shapes(glore: bool, iam: bool, output_stride: int) -> None:
    torch.manual_seed(0)
    B, C, H, W = 2, 5, 48, 40
    model = Classifier(
        C, backbone="small", glore=glore, iam=iam, width=16, output_stride=output_stride
    )
    assert isinstance(model.glore, GloRe) == glore
    x = torch.randn(B, 3, H, W)
    logits = model(x)
    assert logits.shape == (B, C)
    logits2, cam = model.forward_cam(x)
    assert cam.shape == (B, C, H // output_stride, W // output_stride)
    torch.testing.assert_close(logits2, logits)
    # logits = global average pooling of the CAM
    torch.testing.assert_close(logits, cam.mean(dim=(2, 3)))
    logits3, cam3 = model(x, return_cam=True)
    torch.testing.assert_close(cam3, cam)


def test_channels_last_classifier_matches_default_layout() -> None:
    torch.manual_seed(0)
    model = Classifier(4, width=16).eval()
    model_cl = Classifier(4, width=16, channels_last=True).eval()
    model_cl.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model_cl.forward_cam(x)[1], model.forward_cam(x)[1], rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("glore", [True, False])
def test_relu_sits_after_glore_in_the_classifier_and_before_it_in_the_iam(glore: bool) -> None:
    torch.manual_seed(0)
    seen: dict[str, dict[str, torch.Tensor]] = {}
    for iam in (False, True):
        model = Classifier(3, width=16, glore=glore, iam=iam).eval()
        randomize_bn(model)
        record: dict[str, torch.Tensor] = {}
        model.glore.register_forward_hook(
            lambda m, inp, out, r=record: r.update(glore_in=inp[0].clone(), glore_out=out.clone())
        )
        head_conv = model.head[-1]
        head_conv.register_forward_hook(
            lambda m, inp, out, r=record: r.update(head_in=inp[0].clone())
        )
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        seen["iam" if iam else "cls"] = record
    # Classifier: GloRe sees signed features; the CAM conv sees ReLU(GloRe(.)) >= 0.
    assert (seen["cls"]["glore_in"] < 0).any()
    assert (seen["cls"]["head_in"] >= 0).all()
    torch.testing.assert_close(seen["cls"]["head_in"], seen["cls"]["glore_out"].clamp(min=0))
    # IAM: GloRe sees ReLU'd features; the CAM conv sees GloRe's output directly.
    assert (seen["iam"]["glore_in"] >= 0).all()
    torch.testing.assert_close(seen["iam"]["head_in"], seen["iam"]["glore_out"])
    if glore:  # GloRe's residual adds signed values
        assert (seen["iam"]["head_in"] < 0).any()


def test_vgg16_backbone_layout_and_classifier_shapes() -> None:
    from torchvision.models.vgg import cfgs, make_layers

    feats = vgg16_backbone()
    tv = make_layers(cfgs["D"])  # torchvision's vgg16().features, without the classifier
    ours_sd, tv_sd = feats.state_dict(), tv.state_dict()
    assert set(ours_sd) == set(tv_sd)
    assert all(ours_sd[k].shape == tv_sd[k].shape for k in ours_sd)
    pools = [(i, m) for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    assert [(i, m.kernel_size, m.stride) for i, m in pools] == [
        (4, 2, 2),
        (9, 2, 2),
        (16, 2, 2),
        (23, 3, 1),
    ]
    dilated = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d) and m.dilation == (2, 2)]
    assert dilated == [24, 26, 28]

    torch.manual_seed(0)
    for iam in (False, True):
        model = Classifier(20, backbone="vgg16", iam=iam).eval()
        assert model.glore.num_nodes == 64 and model.glore.num_state == 128  # the reference's
        with torch.no_grad():
            logits, cam = model.forward_cam(torch.randn(1, 3, 64, 48))
        assert logits.shape == (1, 20)
        assert cam.shape == (1, 20, 8, 6)  # output stride 8


@pytest.fixture
def hub_dir(tmp_path: Path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        yield tmp_path
    finally:
        torch.hub.set_dir(old)


def test_pretrained_vgg16_without_cache_names_the_path(hub_dir: Path) -> None:
    expected = hub_dir / "checkpoints" / VGG16_WEIGHTS_FILE
    assert vgg16_weights_path() == expected
    with pytest.raises(FileNotFoundError) as err:
        Classifier(20, backbone="vgg16", pretrained=True)
    assert str(expected) in str(err.value)
    assert "download.pytorch.org" in str(err.value)


def test_pretrained_vgg16_loads_from_the_cache(hub_dir: Path) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    tv = make_layers(cfgs["D"])
    fake = {f"features.{k}": v for k, v in tv.state_dict().items()}
    fake["classifier.0.weight"] = torch.zeros(2, 2)  # ignored, like the real classifier layers
    (hub_dir / "checkpoints").mkdir()
    torch.save(fake, hub_dir / "checkpoints" / VGG16_WEIGHTS_FILE)
    model = Classifier(20, backbone="vgg16", pretrained=True)
    for k, v in model.features.state_dict().items():
        torch.testing.assert_close(v, fake[f"features.{k}"])


def test_small_backbone_rejects_pretrained_and_bad_options() -> None:
    with pytest.raises(ValueError, match="vgg16"):
        Classifier(3, pretrained=True)
    with pytest.raises(ValueError, match="backbone"):
        Classifier(3, backbone="resnet")
    with pytest.raises(ValueError, match="output_stride"):
        Classifier(3, output_stride=16)


def test_param_groups_follow_the_reference_multipliers() -> None:
    model = Classifier(3, width=16)
    groups = model.param_groups(1e-3)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx(
        {"backbone_weight": 1e-3, "backbone_bias": 2e-3, "new_weight": 1e-2, "new_bias": 2e-2}
    )
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    new = {id(p) for g in groups if g["name"].startswith("new") for p in g["params"]}
    assert {id(p) for p in model.glore.parameters()} <= new
    assert {id(p) for p in model.features.parameters()}.isdisjoint(new)
    opt = torch.optim.SGD(groups, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss = F.multilabel_soft_margin_loss(model(torch.randn(2, 3, 32, 32)), torch.ones(2, 3))
    loss.backward()
    opt.step()
