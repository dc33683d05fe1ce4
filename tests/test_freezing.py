"""Freezing schedules as data, and freezing that really stops both gradients and BatchNorm statistics."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from nnunet_joint.freezing import (
    SCHEDULES,
    epoch_boundaries,
    frozen_groups_at,
    set_frozen_encoder_groups,
    validate_schedule,
)
from nnunet_joint.network import PARAM_GROUPS, SEResNetUNet

# ----------------------------------------------------------------------------- schedules


def _per_epoch(name: str, num_epochs: int) -> list[int]:
    return [frozen_groups_at(SCHEDULES[name], e, num_epochs) for e in range(num_epochs)]


def test_schedule_boundaries_for_100_epochs():
    assert epoch_boundaries(SCHEDULES["HierFreeze"], 100) == [0, 20, 40, 60, 80]
    assert epoch_boundaries(SCHEDULES["HierUnfreeze"], 100) == [0, 17, 33, 50, 67, 83]
    freeze = _per_epoch("HierFreeze", 100)
    assert [freeze[e] for e in (0, 19, 20, 39, 40, 59, 60, 79, 80, 99)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    unfreeze = _per_epoch("HierUnfreeze", 100)
    assert [unfreeze[e] for e in (0, 16, 17, 32, 33, 49, 50, 66, 67, 82, 83, 99)] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    assert _per_epoch("NoFreeze", 100) == [0] * 100
    assert _per_epoch("FreezeEnc", 100) == [5] * 100


def test_schedule_boundaries_for_5_epochs_collapse_to_the_later_entry():
    assert epoch_boundaries(SCHEDULES["HierFreeze"], 5) == [0, 1, 2, 3, 4]
    assert _per_epoch("HierFreeze", 5) == [0, 1, 2, 3, 4]
    assert epoch_boundaries(SCHEDULES["HierUnfreeze"], 5) == [0, 1, 2, 3, 3, 4]
    assert _per_epoch("HierUnfreeze", 5) == [5, 4, 3, 1, 0]  # the "2 frozen" entry lasts zero epochs
    assert _per_epoch("HierUnfreeze", 1) == [3]


def test_hierarchical_schedules_keep_their_promises():
    assert max(n for _, n in SCHEDULES["HierFreeze"]) == 4  # stage4 never freezes
    assert SCHEDULES["HierUnfreeze"][0][1] == 5 and SCHEDULES["HierUnfreeze"][-1][1] == 0
    for schedule in SCHEDULES.values():
        validate_schedule(schedule)


@pytest.mark.parametrize("bad, message", [
    ([], "at least one entry"),
    ([(0.1, 0)], "must start at fraction 0.0"),
    ([(0.0, 0), (0.5, 1), (0.5, 2)], "increase strictly"),
    ([(0.0, 0), (1.0, 1)], "within \\[0, 1\\)"),
    ([(0.0, 6)], "0..5"),
])
def test_invalid_schedules_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_schedule(bad)
    with pytest.raises(ValueError):
        epoch_boundaries(SCHEDULES["NoFreeze"], 0)


# ----------------------------------------------------------------------------- freezing a network


@pytest.fixture
def net() -> SEResNetUNet:
    torch.manual_seed(0)
    return SEResNetUNet(1, 3, "seresnet18", num_cls_classes=3)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 1, 32, 32, generator=g), torch.randint(0, 3, (2, 32, 32), generator=g)


def _sgd_step(net: SEResNetUNet, optimizer: torch.optim.Optimizer) -> None:
    """One nnU-Net-style step: zero_grad(set_to_none=True), backward, clip, step."""
    x, y = _batch()
    optimizer.zero_grad(set_to_none=True)
    seg, cls = net(x, return_cls=True)
    loss = torch.nn.functional.cross_entropy(seg, y) + cls.logsumexp(1).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    optimizer.step()


def _snapshot(net: SEResNetUNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _first_groups_pattern(n: int) -> str:
    return "|".join(list(PARAM_GROUPS.values())[:n])


def test_every_encoder_parameter_is_in_exactly_one_group(net):
    for name, _ in net.encoder.named_parameters():
        assert sum(bool(re.match(p, name)) for p in PARAM_GROUPS.values()) == 1, name


def test_frozen_parameters_stay_bit_identical_under_momentum_and_weight_decay(net):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.99, weight_decay=3e-5, nesterov=True)
    net.train()
    _sgd_step(net, optimizer)  # momentum buffers now exist for every parameter, as mid-way in HierFreeze

    frozen = set_frozen_encoder_groups(net, 2)
    expected = [f"encoder.{n}" for n, _ in net.encoder.named_parameters() if re.match(_first_groups_pattern(2), n)]
    assert frozen == expected and any(k.startswith("encoder.layer1.") for k in frozen)
    assert not any(k.startswith("encoder.layer2.") for k in frozen)

    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net.train()  # nnU-Net calls this at every epoch start
    _sgd_step(net, optimizer)
    after = dict(net.named_parameters())

    # without deep supervision only the last (full-resolution) seg layer is used
    unused = tuple(f"decoder.seg_layers.{i}." for i in range(len(net.decoder.seg_layers) - 1))
    for name in before:
        if name in frozen:
            assert torch.equal(after[name], before[name]), name
        elif not name.startswith(unused):
            assert not torch.equal(after[name], before[name]), name


def test_frozen_batchnorm_statistics_do_not_move_in_train_mode(net):
    set_frozen_encoder_groups(net, 3)  # stem, stage1, stage2
    net.train()
    frozen_bn = {n for n, m in net.named_modules()
                 if isinstance(m, _BatchNorm) and re.match(r"encoder\.(bn1|layer1|layer2)\.", n + ".")}
    assert len(frozen_bn) == 1 + 2 * 2 + 2 * 2 + 1  # bn1, layer1 (2 blocks x 2), layer2 (+ downsample)
    for name, module in net.named_modules():
        if isinstance(module, _BatchNorm):
            assert module.training == (name not in frozen_bn), name

    before = _snapshot(net)
    with torch.no_grad():
        net(_batch()[0])
    after = net.state_dict()
    for key in before:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            module_name = key.rsplit(".", 1)[0]
            if module_name in frozen_bn:
                assert torch.equal(after[key], before[key]), key
            else:
                assert not torch.equal(after[key], before[key]), key


def test_unfreezing_makes_groups_train_again(net):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.99, weight_decay=3e-5)
    frozen = set_frozen_encoder_groups(net, 5)
    assert frozen == [f"encoder.{n}" for n, _ in net.encoder.named_parameters()]
    net.eval()
    net.train()
    assert not net.encoder.bn1.training and net.decoder.training

    assert set_frozen_encoder_groups(net, 0) == []
    net.train()
    assert all(p.requires_grad for p in net.parameters())
    assert all(m.training for m in net.modules())
    before = _snapshot(net)
    _sgd_step(net, optimizer)
    assert not torch.equal(net.encoder.conv1.weight, before["encoder.conv1.weight"])
    assert not torch.equal(net.encoder.bn1.running_mean, before["encoder.bn1.running_mean"])


def test_setting_frozen_groups_keeps_eval_mode(net):
    net.eval()
    set_frozen_encoder_groups(net, 1)
    assert not any(m.training for m in net.modules())
    with pytest.raises(ValueError, match="0..5"):
        set_frozen_encoder_groups(net, 6)
