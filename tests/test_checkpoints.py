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


# ----------------------------------------------------------------------------- refused files kept as evidence


def _hostile_checkpoint(path: Path, marker: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {"w": torch.zeros(2)}, "init_args": _CreatesMarker(marker)}, path)
    return path.read_bytes()


def _truncated_checkpoint(path: Path, marker: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {"w": torch.ones(64, 64)}}, path)
    path.write_bytes(path.read_bytes()[:3000])  # killed while torch.save wrote it
    return path.read_bytes()


@pytest.mark.parametrize("spoil,kind", [(_hostile_checkpoint, "unsafe"), (_truncated_checkpoint, "unreadable")])
def test_refused_checkpoint_met_on_resume_is_kept_aside_unchanged(tmp_path, monkeypatch, capsys, spoil, kind):
    """A resumed reproduce run moves a refused final checkpoint aside (same folder, a name saying why), never
    deletes or alters it, runs nothing from it, and names the new place; an unsafe one is a security event."""
    import hashlib
    import json
    import re

    from nnunet_joint.study import training
    from nnunet_joint.study.folder import RunFolder

    launched: list[list[str]] = []  # the nnUNetv2_train command, not run: only the resume decision is tested
    monkeypatch.setattr(training, "run_nnunet", lambda cmd, run, log, **env: launched.append(cmd))
    run = RunFolder(tmp_path / "run")
    fold_dir = run.results / "Dataset504_ShebaJoint" / "nnUNetTrainerJoint__nnUNetPlans__2d" / "fold_0"
    marker = tmp_path / "pwned"
    original = spoil(fold_dir / "checkpoint_final.pth", marker)

    training.train_fold(run, "nnUNetTrainerJoint", 504, "0", "cpu", {}, {})

    assert not marker.exists()  # nothing in the file ran
    (kept,) = [p for p in fold_dir.iterdir()]  # moved, not copied; nothing else written there
    assert re.fullmatch(rf"checkpoint_final\.pth\.refused-{kind}-\d{{8}}T\d{{6}}Z", kept.name), kept.name
    assert kept.read_bytes() == original
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {fold_dir / 'checkpoint_final.pth'}: ")
    assert f"; kept as {kept}; retraining fold 0 of nnUNetTrainerJoint from scratch" in warning
    assert "--val" not in launched[0]  # trained again from scratch
    events = checkpoints.security_events(run.root)
    if kind == "unsafe":
        (event,) = events
        assert event["kept_as"] == str(kept) and event["file"] == str(fold_dir / "checkpoint_final.pth")
        assert event["sha256"] == hashlib.sha256(original).hexdigest() and event["bytes"] == len(original)
        assert "would run code on load" in event["problem"]
        assert json.loads((run.root / checkpoints.SECURITY_EVENTS).read_text()) == events
    else:  # a killed run's half file is routine, not a security event
        assert events == [] and not (run.root / checkpoints.SECURITY_EVENTS).exists()


def test_evidence_is_never_overwritten_and_a_loadable_checkpoint_stays(tmp_path):
    marker = tmp_path / "pwned"
    first = _hostile_checkpoint(tmp_path / "c.pth", marker)
    kept_first, _ = checkpoints.set_aside_refused_checkpoint(tmp_path / "c.pth", tmp_path)
    torch.save({"x": _RunsShell(marker)}, tmp_path / "c.pth")  # a second one within the same second
    second = (tmp_path / "c.pth").read_bytes()
    kept_second, problem = checkpoints.set_aside_refused_checkpoint(tmp_path / "c.pth", tmp_path)
    assert kept_second != kept_first and kept_first.read_bytes() == first and kept_second.read_bytes() == second
    assert "posix.system" in problem and not marker.exists()
    assert [e["kept_as"] for e in checkpoints.security_events(tmp_path)] == [str(kept_first), str(kept_second)]
    torch.save({"network_weights": {"w": torch.ones(2)}}, tmp_path / "good.pth")
    assert checkpoints.set_aside_refused_checkpoint(tmp_path / "good.pth", tmp_path) is None
    assert (tmp_path / "good.pth").is_file()


def test_a_run_that_met_an_unsafe_checkpoint_finishes_with_exit_3(tmp_path, capsys):
    """Exit 3 only for events recorded during this run; a later resume of the same folder exits 0."""
    assert checkpoints.security_exit_code(tmp_path, 0) == 0 and capsys.readouterr().err == ""
    _hostile_checkpoint(tmp_path / "fold_0" / "checkpoint_final.pth", tmp_path / "pwned")
    kept, _ = checkpoints.set_aside_refused_checkpoint(tmp_path / "fold_0" / "checkpoint_final.pth", tmp_path)
    assert checkpoints.security_exit_code(tmp_path, 0) == checkpoints.EXIT_SECURITY_EVENT == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {tmp_path / checkpoints.SECURITY_EVENTS}: 1 checkpoint(s) would have run code")
    assert str(kept) in line
    assert checkpoints.security_exit_code(tmp_path, 1) == 0


def test_torch_warnings_are_held_back_on_refusal_and_issued_on_success(tmp_path, recwarn):
    """torch warns about pickle protocols above 2; a refused file's warning would precede the error line."""
    import io
    import warnings

    with open(tmp_path / "plain.pth", "wb") as f:
        pickle.dump({"x": _RunsShell(tmp_path / "pwned")}, f, protocol=4)
    with pytest.raises(checkpoints.UnsafeCheckpoint):
        safe_torch_load(tmp_path / "plain.pth")
    assert [str(w.message) for w in recwarn] == []
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer, pickle_protocol=3)
    (tmp_path / "p3.pth").write_bytes(buffer.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.warns(UserWarning, match="pickle protocol 3"):
            assert torch.equal(safe_torch_load(tmp_path / "p3.pth")["w"], torch.ones(2))


def test_reproduce_exits_3_after_a_run_that_met_an_unsafe_checkpoint_and_0_on_the_next(tmp_path, monkeypatch, capsys):
    """The console script's exit status: the pipeline is a stand-in that resumes one fold whose final checkpoint
    was planted; the nnUNetv2_train it would start is not run."""
    from nnunet_joint.reproduce import main
    from nnunet_joint.study import cli, training
    from nnunet_joint.study.folder import RunFolder

    monkeypatch.setattr(training, "run_nnunet", lambda cmd, run, log, **env: None)
    fold_dir = tmp_path / "run" / "nnUNet_results" / "Dataset504_ShebaJoint" / "nnUNetTrainerJoint__nnUNetPlans__2d"

    def resume_one_fold(out, *args, **kwargs):
        training.train_fold(RunFolder(out.resolve()), "nnUNetTrainerJoint", 504, "0", "cpu", {}, {})
        return {}

    monkeypatch.setattr(cli, "reproduce", resume_one_fold)
    _hostile_checkpoint(fold_dir / "fold_0" / "checkpoint_final.pth", tmp_path / "pwned")
    assert main(["--out", str(tmp_path / "run"), "--profile", "tiny", "--device", "cpu"]) == 3
    assert capsys.readouterr().err.splitlines()[-1].endswith("the run finished, exit status 3")
    assert main(["--out", str(tmp_path / "run"), "--profile", "tiny", "--device", "cpu"]) == 0
    assert capsys.readouterr().err == "" and not (tmp_path / "pwned").exists()
