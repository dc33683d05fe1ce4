"""Safe checkpoint loading: hostile pickles refused without running, nnU-Net checkpoints accepted."""

from __future__ import annotations

import os
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from nnunet_joint import checkpoints
from nnunet_joint.checkpoints import (
    LoadReport,
    load_state_dict_file,
    load_transfer_weights,
    safe_torch_load,
)
from nnunet_joint.errors import InputError
from nnunet_joint.network import SEResNetUNet


class _CreatesMarker:
    """Unpickling this calls ``open(marker, 'w')``: a file appears if the loader runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def torch_load_calls(monkeypatch):
    """Record every ``torch.load`` call's ``weights_only`` to prove there is no unsafe retry."""
    calls: list[object] = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return calls


@pytest.mark.parametrize("payload", [_CreatesMarker, _RunsShell])
@pytest.mark.parametrize("legacy_format", [False, True])
def test_hostile_pickle_is_refused_without_running(tmp_path, torch_load_calls, payload, legacy_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    checkpoint = {"network_weights": {"w": torch.zeros(2)}, "init_args": payload(marker)}
    if legacy_format:
        with open(path, "wb") as f:
            pickle.dump(checkpoint, f, protocol=2)
    else:
        torch.save(checkpoint, path)

    with pytest.raises(InputError) as err:
        safe_torch_load(path)

    assert not marker.exists()
    assert err.value.where == str(path)
    assert "refused: the file would run code on load" in err.value.problem
    assert torch_load_calls == [True]  # one safe attempt, never weights_only=False
    with pytest.raises(InputError):
        load_state_dict_file(path)
    assert not marker.exists()


def test_refusal_names_the_offending_global(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": _RunsShell(tmp_path / "m")}, path)
    with pytest.raises(InputError, match=r"system"):
        safe_torch_load(path)


@pytest.fixture(scope="module")
def nnunet_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    """A checkpoint written by nnU-Net's own ``nnUNetTrainer.save_checkpoint`` with real logger values."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    folder = tmp_path_factory.mktemp("nnunet_ckpt")
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    network(torch.ones(2, 1, 5, 5)).sum().backward()
    optimizer.step()

    logger = MetaLogger(str(folder), resume=False)
    for epoch in range(2):  # the types nnU-Net logs: np.float32 loss means, np.float64 dice, floats
        batch_losses = [np.array(0.5 + epoch, dtype=np.float32), np.array(0.25, dtype=np.float32)]
        tp, fp, fn = np.array([3.0, 4.0]), np.array([1.0, 0.0]), np.array([0.0, 2.0])
        dice = [2 * i / (2 * i + j + k) for i, j, k in zip(tp, fp, fn)]
        logger.log("mean_fg_dice", np.nanmean(dice), epoch)
        logger.log("dice_per_class_or_region", dice, epoch)
        logger.log("train_losses", np.mean(batch_losses), epoch)
        logger.log("val_losses", np.mean(batch_losses), epoch)
        logger.log("lrs", 0.01 * (1 - epoch / 2) ** 0.9, epoch)
        logger.log("epoch_start_timestamps", 1000.0 + epoch, epoch)
        logger.log("epoch_end_timestamps", 1001.5 + epoch, epoch)

    trainer = types.SimpleNamespace(
        local_rank=0, disable_checkpointing=False, is_ddp=False, network=network, optimizer=optimizer,
        grad_scaler=None, logger=logger, _best_ema=logger.get_value("ema_fg_dice", step=-1), current_epoch=1,
        my_init_kwargs={"plans": {"dataset_name": "Dataset501_Sheba", "configurations": {"2d": {"patch_size": [64, 64]}}},
                        "configuration": "2d", "fold": 0, "dataset_json": {"labels": {"background": 0}},
                        "device": torch.device("cpu")},
        inference_allowed_mirroring_axes=(0, 1),
    )
    path = folder / "checkpoint_final.pth"
    nnUNetTrainer.save_checkpoint(trainer, str(path))
    return path, {"network": network, "optimizer": optimizer, "logger": logger}


def test_real_nnunet_checkpoint_loads_safely(nnunet_checkpoint, torch_load_calls):
    path, made = nnunet_checkpoint
    loaded = safe_torch_load(path)

    assert torch_load_calls == [True]
    assert loaded["init_args"]["device"] == torch.device("cpu")
    assert loaded["init_args"]["fold"] == 0
    assert loaded["current_epoch"] == 2
    assert loaded["inference_allowed_mirroring_axes"] == (0, 1)
    assert loaded["grad_scaler_state"] is None
    logging = loaded["logging"]
    assert type(logging["train_losses"][0]) is np.float32 and logging["train_losses"][0] == np.float32(0.375)
    assert type(logging["mean_fg_dice"][1]) is np.float64
    assert logging["dice_per_class_or_region"][0] == [2 * 3 / 7, 2 * 4 / 10]
    assert loaded["_best_ema"] == made["logger"].get_value("ema_fg_dice", step=-1)
    for key, tensor in made["network"].state_dict().items():
        assert torch.equal(loaded["network_weights"][key], tensor)
    momentum = loaded["optimizer_state"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, made["optimizer"].state_dict()["state"][0]["momentum_buffer"])
    assert loaded["optimizer_state"]["param_groups"][0]["nesterov"] is True

    weights = load_state_dict_file(path)
    assert sorted(weights) == sorted(made["network"].state_dict())


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", b"PK\x03\x04broken zip"])
def test_not_a_checkpoint_is_an_input_error(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        safe_torch_load(path)
    assert err.value.where == str(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="not found"):
        safe_torch_load(tmp_path / "nope.pth")
    with pytest.raises(InputError, match="not found"):
        load_state_dict_file(tmp_path / "nope.safetensors")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown weights format '.npz'"):
        load_state_dict_file(odd)
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x00" * 3)
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_state_dict_file(bad)


@pytest.mark.parametrize("wrapper", ["network_weights", "state_dict", "model", None])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_load_state_dict_file_unwraps_and_strips_prefixes(tmp_path, wrapper, prefix):
    weights = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.tensor([1.0, -1.0])}
    stored = {prefix + k: v for k, v in weights.items()}
    obj = stored if wrapper is None else {wrapper: stored, "epoch": 3}
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    loaded = load_state_dict_file(path)
    assert list(loaded) == ["a.weight", "a.bias"]
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_non_tensor_entries_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"a": torch.zeros(1), "b": [1, 2]}}, path)
    with pytest.raises(InputError, match="entry 'b' is a list"):
        load_state_dict_file(path)


def _tiny_unet(**kwargs) -> SEResNetUNet:
    kwargs.setdefault("encoder_name", "seresnet18")
    return SEResNetUNet(1, kwargs.pop("num_classes", 3), **kwargs)


def test_transfer_loads_every_non_head_weight(tmp_path):
    torch.manual_seed(0)
    source = _tiny_unet(num_classes=3)  # LiTS lesion model: background / liver / lesion
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": source.state_dict(), "current_epoch": 5}, path)

    torch.manual_seed(1)
    target = _tiny_unet(num_classes=5, num_cls_classes=3)  # joint labels + Y-Net head
    fresh_heads = {k: v.clone() for k, v in target.state_dict().items() if k.startswith(target.head_prefixes)}
    report = load_transfer_weights(target, path)

    target_state, source_state = target.state_dict(), source.state_dict()
    non_head = [k for k in target_state if not k.startswith(target.head_prefixes)]
    assert report.loaded == non_head
    assert sorted(report.skipped_head) == sorted(fresh_heads)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in report.skipped_head} == {"decoder.seg_layers", "cls_head.fc"}
    assert report.missing_in_checkpoint == [] and report.shape_mismatch == [] and report.unexpected == []
    assert all(torch.equal(target_state[k], source_state[k]) for k in non_head)
    assert all(torch.equal(target_state[k], v) for k, v in fresh_heads.items())
    assert report.summary().startswith(f"loaded {len(non_head)} tensors, {len(fresh_heads)} head tensors")


def test_transfer_into_classifier_reports_decoder_as_unused(tmp_path):
    source = _tiny_unet()
    path = tmp_path / "lits.safetensors"
    save_file({k: v.clone() for k, v in source.state_dict().items()}, str(path))  # shared storages copied
    target = _tiny_unet(segmentation=False, num_cls_classes=3)
    report = load_transfer_weights(target, path)
    assert report.loaded == ["encoder." + k for k in target.encoder.state_dict()]
    assert report.skipped_head == ["cls_head.fc.weight", "cls_head.fc.bias"]
    decoder_side = [k for k in source.state_dict() if k.split(".")[0] in ("decoder", "full_res", "lateral")]
    assert decoder_side and sorted(report.unexpected) == sorted(decoder_side)
    assert torch.equal(target.encoder.conv1.weight, source.encoder.conv1.weight)


def test_transfer_refuses_other_architecture(tmp_path):
    path = tmp_path / "seresnet18.pth"
    torch.save({"network_weights": _tiny_unet().state_dict()}, path)
    target = SEResNetUNet(1, 3, "seresnet34")
    before = target.encoder.conv1.weight.clone()
    with pytest.raises(InputError, match=r"non-head weights missing.*first missing: encoder\.layer1\.2\."):
        load_transfer_weights(target, path)
    assert torch.equal(target.encoder.conv1.weight, before)  # nothing half-loaded

    wider = SEResNetUNet(2, 3, "seresnet18")
    with pytest.raises(InputError, match=r"first mismatch: encoder\.conv1\.weight is \(64, 1, 7, 7\)"):
        load_transfer_weights(wider, path)


def test_load_report_summary_names_first_problem():
    report = LoadReport(loaded=["a"], skipped_head=["h"], missing_in_checkpoint=[], shape_mismatch=[],
                        unexpected=["decoder.x", "decoder.y"])
    assert report.summary() == ("loaded 1 tensors, 1 head tensors re-initialised, 0 missing in checkpoint, "
                                "0 shape mismatches, 2 unused checkpoint tensors; first unused: decoder.x")


def test_allow_list_has_no_code_running_globals():
    names = {getattr(g, "__name__", str(g)) for g in checkpoints.SAFE_GLOBALS if not isinstance(g, tuple)}
    assert "ObjectDType" not in names and "_reconstruct" not in names
    assert {"scalar", "dtype", "Float64DType", "Float32DType"} <= names
