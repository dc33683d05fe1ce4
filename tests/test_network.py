"""SE-ResNet encoder (timm-compatible), U-Net / Y-Net / classifier, ImageNet weight loading."""

from __future__ import annotations

import warnings

import pytest
import torch

from nnunet_joint.errors import InputError
from nnunet_joint.network import ENCODER_DEPTHS, SEResNetEncoder, SEResNetUNet
from nnunet_joint.network.heads import ClassificationHead
from nnunet_joint.network.imagenet import (
    adapt_input_conv,
    checkpoint_filter_fn,
    describe_checkpoint_depth,
    load_imagenet_weights,
)
from nnunet_joint.network.seresnet import normalize_strides, se_reduced_channels

EXPANSION = {18: 1, 34: 1, 50: 4}


def _timm_model(name: str) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False).eval()


@pytest.mark.parametrize("name", sorted(ENCODER_DEPTHS))
def test_encoder_keys_and_shapes_equal_timm(name):
    reference = {k: v.shape for k, v in _timm_model(name).state_dict().items() if not k.startswith("fc.")}
    ours = {k: v.shape for k, v in SEResNetEncoder(3, ENCODER_DEPTHS[name]).state_dict().items()}
    assert list(ours) == list(reference)
    assert ours == reference


def test_se_width_follows_timm_rounding():
    assert [se_reduced_channels(c) for c in (64, 128, 256, 512, 1024, 2048)] == [8, 8, 16, 32, 64, 128]


@pytest.mark.parametrize("depth, size", [(18, (64, 64)), (18, (64, 96)), (34, (64, 96)), (50, (64, 96))])
def test_encoder_skip_shapes(depth, size):
    encoder = SEResNetEncoder(1, depth).eval()
    with torch.no_grad():
        skips = encoder(torch.zeros(1, 1, *size))
    e = EXPANSION[depth]
    h, w = size
    assert [tuple(s.shape) for s in skips] == [
        (1, 64, h // 2, w // 2), (1, 64 * e, h // 4, w // 4), (1, 128 * e, h // 8, w // 8),
        (1, 256 * e, h // 16, w // 16), (1, 512 * e, h // 32, w // 32)]
    assert encoder.output_channels == [64, 64 * e, 128 * e, 256 * e, 512 * e]


def test_strides_of_one_and_anisotropic_keep_resolution():
    encoder = SEResNetEncoder(1, 18, strides=(1, (2, 1), 1, 2, (1, 2)))
    assert encoder.strides == [[1, 1], [2, 1], [1, 1], [2, 2], [1, 2]]
    with torch.no_grad():
        skips = encoder.eval()(torch.zeros(1, 1, 32, 24))
    assert [tuple(s.shape[2:]) for s in skips] == [(32, 24), (16, 24), (16, 24), (8, 12), (8, 6)]
    with pytest.raises(ValueError, match="expected 5 strides"):
        normalize_strides((2, 2, 2))


@pytest.mark.parametrize("name, size", [("seresnet18", (64, 64)), ("seresnet18", (64, 96)),
                                        ("seresnet34", (32, 64)), ("seresnet50", (32, 32))])
def test_unet_output_is_full_resolution(name, size):
    net = SEResNetUNet(1, 3, name).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, *size))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 3, *size)


@pytest.mark.parametrize("name", sorted(ENCODER_DEPTHS))
def test_encoder_downsamples_like_imagenet_and_decoder_is_light(name):
    """Standard strides (stem 2, pool 2, stages 1/2/2/2) and decoder widths 256..16 whatever the encoder."""
    net = SEResNetUNet(1, 3, name)
    assert net.encoder.conv1.stride == (2, 2) and net.encoder.maxpool.stride == (2, 2)
    assert net.strides == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]] and net.input_divisor == [32, 32]
    assert [stage.output_channels for stage in net.decoder.stages] == [256, 128, 64, 32, 16]
    widest_decoder_conv = max(m.in_channels for n, m in net.named_modules()
                              if isinstance(m, torch.nn.Conv2d) and n.startswith("decoder.stages."))
    assert widest_decoder_conv == 512  # 256 upsampled + 256 projected skip; never 1024/2048-channel convs
    e = EXPANSION[ENCODER_DEPTHS[name]]
    assert [lat.conv.in_channels for lat in net.lateral] == [64, 64 * e, 128 * e, 256 * e]
    assert net.decoder.transpconvs[0].in_channels == 512 * e  # the deepest feature enters directly
    with torch.no_grad():
        skips = net.skips(torch.zeros(1, 1, 64, 96), net.encoder(torch.zeros(1, 1, 64, 96)))
    assert [tuple(s.shape[1:]) for s in skips] == [
        (16, 64, 96), (32, 32, 48), (64, 16, 24), (128, 8, 12), (256, 4, 6), (512 * e, 2, 3)]


def test_deep_supervision_outputs_match_scales_and_can_be_switched_off():
    net = SEResNetUNet(1, 4, "seresnet18", deep_supervision=True).eval()
    scales = net.deep_supervision_scales()
    assert scales == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25], [0.125, 0.125], [0.0625, 0.0625]]
    x = torch.zeros(1, 1, 64, 96)
    with torch.no_grad():
        outs = net(x)
    assert isinstance(outs, list) and len(outs) == len(scales) == 5
    assert [tuple(o.shape) for o in outs] == [(1, 4, int(64 * a), int(96 * b)) for a, b in scales]
    net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
    with torch.no_grad():
        assert tuple(net(x).shape) == (1, 4, 64, 96)


def test_deep_supervision_scales_are_nnunets_from_the_plans_strides():
    """nnU-Net derives its scales from the plans' strides (pool_op_kernel_sizes) in its own trainer
    method; ours must agree, also for anisotropic strides (worked out by hand below)."""
    from types import SimpleNamespace

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    net = SEResNetUNet(1, 4, "seresnet18", strides=((1, 1), (2, 1), (2, 2), (1, 2), (2, 2), (2, 2)))
    assert net.deep_supervision_scales() == [[1.0, 1.0], [0.5, 1.0], [0.25, 0.5], [0.25, 0.25], [0.125, 0.125]]
    trainer_like = SimpleNamespace(enable_deep_supervision=True,
                                   configuration_manager=SimpleNamespace(pool_op_kernel_sizes=net.strides))
    nnunet_scales = nnUNetTrainer._get_deep_supervision_scales(trainer_like)
    assert net.deep_supervision_scales() == [[float(v) for v in row] for row in nnunet_scales]


def test_whole_slice_type_probabilities_pad_to_the_divisor_and_do_not_depend_on_the_batch():
    """Odd-sized slices are zero-padded at the end to 32 x 32 multiples, each classified on its own."""
    torch.manual_seed(0)
    net = SEResNetUNet(1, 3, "seresnet18", num_cls_classes=3).eval()
    slices = torch.randn(5, 1, 40, 70)
    with torch.no_grad():
        probs = net.slice_type_probabilities(slices, batch_size=2)
        padded = torch.zeros(5, 1, 64, 96)
        padded[:, :, :40, :70] = slices
        one_by_one = torch.cat([torch.softmax(net.cls_head(net.encoder(padded[i:i + 1])[-1]), dim=1) for i in range(5)])
    assert tuple(probs.shape) == (5, 3) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, one_by_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))


def test_lesion_pooling_weighs_each_feature_cell_by_its_share_of_the_hand_made_mask():
    """A 4 x 4 map under a 128 x 128 mask (cells of 32 x 32 pixels): the pooled feature is the
    mean of the cells weighted by the lesion pixels each holds, computed here cell by cell."""
    from nnunet_joint.network.heads import lesion_pool

    features = torch.arange(2 * 3 * 16, dtype=torch.float32).reshape(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 128, 128)
    mask[0, 0, 40:50, 70:80] = 1  # 100 pixels, all in cell (1, 2)
    mask[0, 0, 0:8, 0:4] = 1  # 32 pixels in cell (0, 0)
    # sample 1: no lesion at all
    pooled = lesion_pool(features, mask)
    expected0 = (100 * features[0, :, 1, 2] + 32 * features[0, :, 0, 0]) / 132
    torch.testing.assert_close(pooled[0], expected0)
    torch.testing.assert_close(pooled[1], features[1].mean(dim=(1, 2)))  # empty mask: the global average

    head = ClassificationHead(3, 2, pooling="lesion")
    torch.testing.assert_close(head(features, mask), head.fc(pooled))
    torch.testing.assert_close(head(features), head.fc(features.mean(dim=(2, 3))))  # no mask given
    global_head = ClassificationHead(3, 2, pooling="global")
    global_head.load_state_dict(head.state_dict())  # parameter-free pooling: the same weights
    torch.testing.assert_close(global_head(features, mask), head.fc(features.mean(dim=(2, 3))))
    with pytest.raises(ValueError, match="unknown pooling"):
        ClassificationHead(3, 2, pooling="max")


def test_a_lesion_pooling_head_reads_the_reference_mask_given_else_the_lesion_the_ynet_segments():
    torch.manual_seed(0)
    net = SEResNetUNet(1, 3, "seresnet18", num_cls_classes=3, cls_pooling="lesion").eval()
    x = torch.randn(2, 1, 64, 64)
    reference = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    reference[:, :, 40:48, 8:16] = True  # in the 1/32 map's cell (1, 0)
    with torch.no_grad():
        deepest = net.encoder(x)[-1]
        with net.pooling_inside(reference):
            seg, cls = net(x, return_cls=True)
        assert net.cls_pool_mask is None  # the block's mask does not outlive it
        torch.testing.assert_close(cls, net.cls_head.fc(deepest[:, :, 1, 0]))
        torch.testing.assert_close(net.classify(x, reference), cls)
        # without a mask: inside the lesion of its own segmentation (labels >= 2 of the argmax)
        seg, cls = net(x, return_cls=True)
        own = seg.argmax(1, keepdim=True) >= 2
        torch.testing.assert_close(cls, net.cls_head(deepest, own))
        torch.testing.assert_close(net.slice_type_probabilities(x), torch.softmax(cls, 1))
        torch.testing.assert_close(net.slice_type_probabilities(x, lesion_masks=reference),
                                   torch.softmax(net.cls_head.fc(deepest[:, :, 1, 0]), 1))
    clf = SEResNetUNet(1, 0, "seresnet18", segmentation=False, num_cls_classes=3, cls_pooling="lesion").eval()
    with torch.no_grad():
        deepest = clf.encoder(x)[-1]
        torch.testing.assert_close(clf.classify(x, reference), clf.cls_head.fc(deepest[:, :, 1, 0]))
        torch.testing.assert_close(clf.classify(x), clf.cls_head.fc(deepest.mean(dim=(2, 3))))  # no mask, no decoder


def test_unwrap_network_removes_the_compile_wrapper():
    from nnunet_joint.network import unwrap_network

    net = SEResNetUNet(1, 3, "seresnet18")
    assert unwrap_network(net) is net
    assert unwrap_network(torch.compile(net)) is net


def test_ynet_returns_seg_and_cls_but_plain_call_returns_seg_only():
    torch.manual_seed(0)
    net = SEResNetUNet(1, 3, "seresnet18", deep_supervision=True, num_cls_classes=3).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        seg, cls = net(x, return_cls=True)
        assert [tuple(s.shape) for s in seg] == [(2, 3, 64, 64), (2, 3, 32, 32), (2, 3, 16, 16), (2, 3, 8, 8),
                                                 (2, 3, 4, 4)]
        assert tuple(cls.shape) == (2, 3)
        net.decoder.deep_supervision = False
        predictor_out = net(x)  # nnU-Net's predictor: network(x) -> one tensor
        assert isinstance(predictor_out, torch.Tensor) and tuple(predictor_out.shape) == (2, 3, 64, 64)
        expected_cls = net.cls_head(net.encoder(x)[-1])  # the head reads the 1/32 feature
        assert torch.equal(cls, expected_cls)
        assert tuple(net.encoder(x)[-1].shape[2:]) == (2, 2)


def test_classifier_only_and_invalid_configurations():
    clf = SEResNetUNet(1, 0, "seresnet18", segmentation=False, num_cls_classes=3).eval()
    assert clf.decoder is None and clf.full_res is None and clf.lateral is None
    assert all(k.startswith(("encoder.", "cls_head.")) for k in clf.state_dict())  # the plain SE-ResNet + head
    with torch.no_grad():
        assert tuple(clf(torch.zeros(2, 1, 32, 32)).shape) == (2, 3)
    seg_only = SEResNetUNet(1, 3, "seresnet18").eval()
    with pytest.raises(ValueError, match="no classification head"):
        seg_only(torch.zeros(1, 1, 32, 32), return_cls=True)
    with pytest.raises(ValueError, match="needs a classification head"):
        SEResNetUNet(1, 3, segmentation=False)
    with pytest.raises(ValueError, match="unknown encoder 'resnet18'"):
        SEResNetUNet(1, 3, "resnet18")
    with pytest.raises(ValueError, match="full-resolution"):
        SEResNetUNet(1, 3, strides=(2, 2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="decoder_channels"):
        SEResNetUNet(1, 3, decoder_channels=(16, 32, 64))


def test_state_dict_holds_encoder_once():
    net = SEResNetUNet(1, 3, "seresnet18", num_cls_classes=3)
    keys = list(net.state_dict())
    assert not any(k.startswith("decoder.encoder.") for k in keys)
    assert sum(k.startswith("encoder.") for k in keys) == len(net.encoder.state_dict())
    assert {k.split(".")[0] for k in keys} == {"encoder", "full_res", "lateral", "decoder", "cls_head"}


def _count_by_hooks(module: torch.nn.Module, size) -> int:
    """Feature-map elements counted from a real forward pass: every conv output, plus residual sums."""
    from nnunet_joint.network.seresnet import SEBasicBlock, SEBottleneck, SEModule

    se_convs = {id(c) for m in module.modules() if isinstance(m, SEModule) for c in m.modules()}
    counted = [m for m in module.modules()
               if (isinstance(m, torch.nn.Conv2d) and id(m) not in se_convs) or isinstance(m, (SEBasicBlock, SEBottleneck))]
    total = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: total.append(o[0].numel())) for m in counted]
    with torch.no_grad():
        module.eval()(torch.zeros(1, 1, *size))
    for h in hooks:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("depth", [18, 50])
def test_encoder_feature_map_count_equals_a_forward_pass(depth):
    """nnU-Net's memory model counts one unit per conv output and per residual sum: check against hooks."""
    encoder = SEResNetEncoder(1, depth)
    assert encoder.compute_conv_feature_map_size([64, 96]) == _count_by_hooks(encoder, (64, 96))


def test_macs_are_a_quarter_of_a_stride_one_stem():
    """The standard stem (stride 2) is what makes the network cheap: count multiply-adds."""
    from torch.utils.flop_counter import FlopCounterMode

    def macs(net):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.eval()(torch.zeros(1, 1, 128, 128))
        return counter.get_total_flops() / 2

    standard = SEResNetEncoder(1, 18)
    stride_one_stem = SEResNetEncoder(1, 18, strides=(1, 2, 2, 2, 2))
    assert macs(stride_one_stem) / macs(standard) == pytest.approx(4.0, rel=0.02)


def test_classification_head_is_pool_then_linear():
    head = ClassificationHead(2, 1)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, -2.0]]))
        head.fc.bias.fill_(0.5)
    features = torch.stack([torch.full((2, 2), 3.0), torch.arange(4.0).reshape(2, 2)])[None]  # means 3 and 1.5
    assert head(features).item() == 1.0 * 3.0 - 2.0 * 1.5 + 0.5


def test_adapt_input_conv_exact_values():
    weight = torch.arange(12.0).reshape(2, 3, 1, 2)  # out=2, rgb, 1x2 kernel
    one = adapt_input_conv(weight, 1)
    assert one.shape == (2, 1, 1, 2)
    assert one[:, 0].tolist() == [[[0 + 2 + 4, 1 + 3 + 5]], [[6 + 8 + 10, 7 + 9 + 11]]]
    two = adapt_input_conv(weight, 2)
    assert two.shape == (2, 2, 1, 2)
    assert two[0, 0].tolist() == two[0, 1].tolist() == [[2 * 1.5, 3 * 1.5]]
    assert torch.equal(adapt_input_conv(weight, 3), weight)
    with pytest.raises(ValueError, match="RGB"):
        adapt_input_conv(torch.zeros(2, 4, 1, 1), 1)


@pytest.fixture(scope="module")
def timm_seresnet18():
    return _timm_model("seresnet18")


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped-pth"])
def test_imagenet_load_uses_every_key(tmp_path, timm_seresnet18, fmt):
    from safetensors.torch import save_file

    state = timm_seresnet18.state_dict()
    path = tmp_path / f"seresnet18.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pth":
        torch.save(state, path)
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 90}, path)

    encoder = SEResNetEncoder(1, 18, strides=(1, 2, 2, 2, 2))
    report = load_imagenet_weights(encoder, path)

    ours = encoder.state_dict()
    assert report.loaded == list(ours)
    assert sorted(report.skipped_head) == ["fc.bias", "fc.weight"]
    assert torch.allclose(ours["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert all(torch.equal(ours[k], state[k]) for k in ours if k != "conv1.weight")


def test_imagenet_features_equal_timm(tmp_path, timm_seresnet18):
    torch.manual_seed(0)
    path = tmp_path / "w.pth"
    torch.save(timm_seresnet18.state_dict(), path)
    rgb = SEResNetEncoder(3, 18).eval()
    grey = SEResNetEncoder(1, 18).eval()
    load_imagenet_weights(rgb, path)
    load_imagenet_weights(grey, path)
    x = torch.randn(2, 3, 64, 96)
    g = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        reference = timm_seresnet18.forward_features(x)
        assert torch.allclose(rgb(x)[-1], reference, atol=1e-5)
        # summing conv1 over RGB: a grey image behaves like the same image on all three channels
        assert torch.allclose(grey(g)[-1], timm_seresnet18.forward_features(g.repeat(1, 3, 1, 1)), atol=1e-4)


def test_imagenet_load_refuses_other_depth(tmp_path):
    path = tmp_path / "seresnet34.pth"
    torch.save(SEResNetEncoder(3, 34).state_dict(), path)
    encoder = SEResNetEncoder(1, 18)
    before = encoder.conv1.weight.clone()
    with pytest.raises(InputError, match="checkpoint is seresnet34 but the encoder is seresnet18") as err:
        load_imagenet_weights(encoder, path)
    assert err.value.where == str(path)
    assert torch.equal(encoder.conv1.weight, before)


def test_checkpoint_architecture_is_named_from_its_keys():
    def keys(layer3_blocks: int, bottleneck: bool) -> dict[str, torch.Tensor]:
        names = ["conv1.weight"] + [f"layer3.{i}.conv1.weight" for i in range(layer3_blocks)]
        return dict.fromkeys(names + (["layer1.0.conv3.weight"] if bottleneck else []), torch.empty(0))

    assert describe_checkpoint_depth(keys(2, False)) == "seresnet18"
    assert describe_checkpoint_depth(keys(6, False)) == "seresnet34"
    assert describe_checkpoint_depth(keys(6, True)) == "seresnet50"
    assert describe_checkpoint_depth(keys(23, True)) == "not a timm seresnet18/34/50"
    assert describe_checkpoint_depth({"layer0.conv1.weight": torch.empty(0)}).startswith("a Cadene-style")


def test_imagenet_load_tolerates_missing_batch_counters_only(tmp_path):
    state = {k: v for k, v in SEResNetEncoder(3, 18).state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "no_counters.pth"
    torch.save(state, path)
    report = load_imagenet_weights(SEResNetEncoder(1, 18), path)
    assert len(report.loaded) == len(state)
    del state["layer4.1.se.fc2.bias"]
    torch.save(state, path)
    with pytest.raises(InputError, match=r"first problem: layer4\.1\.se\.fc2\.bias missing"):
        load_imagenet_weights(SEResNetEncoder(1, 18), path)


def test_checkpoint_filter_fn_drops_classifier_and_adapts_conv1():
    state = {"conv1.weight": torch.ones(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512), "bn1.bias": torch.zeros(64)}
    out = checkpoint_filter_fn({"model": state}, SEResNetEncoder(2, 18))
    assert sorted(out) == ["bn1.bias", "conv1.weight"]
    assert out["conv1.weight"].shape == (64, 2, 7, 7) and out["conv1.weight"].unique().tolist() == [1.5]
