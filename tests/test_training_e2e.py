"""End to end through nnU-Net's own command lines on the tiny phantom (slow; CI runs it).

tiny phantom → converters → ``nnUNetv2_plan_and_preprocess`` → ``nnUNetv2_train`` of the LiTS
lesion model → every framework × init → the freezing schedules → ``nnUNetv2_predict``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_joint import LESION_TYPES
from nnunet_joint.checkpoints import safe_torch_load
from nnunet_joint.freezing import SCHEDULES, epoch_boundaries
from nnunet_joint.names import DATASET_FOLDERS
from nnunet_joint.study.folder import RunFolder, nnunet_bin

pytestmark = pytest.mark.slow

FRAMEWORK_DATASET = {"nnUNetTrainerSEResNetSeg": 503, "nnUNetTrainerSEResNetCls": 503,
                     "nnUNetTrainerYNet": 503, "nnUNetTrainerJoint": 504}
BUDGET = {"nnUNet_joint_epochs": "1", "nnUNet_joint_iterations": "2"}
#: The tiny run's SE-ResNet preset (planned on 502, carried to 503/504); plain nnU-Net keeps nnUNetPlans.
PLANS = "nnUNetSEResNet18Plans"


def train(run: RunFolder, dataset: int, trainer: str, fold: int = 0, plans: str | None = None, **env: str) -> Path:
    """The fold folder of ``trainer``, trained through ``nnUNetv2_train`` unless the tiny reproduce
    run already trained it (with the same budget)."""
    plans = plans or ("nnUNetPlans" if trainer == "nnUNetTrainer_JointBudget" else PLANS)
    fold_dir = run.results / DATASET_FOLDERS[dataset] / f"{trainer}__{plans}__2d" / f"fold_{fold}"
    if (fold_dir / "checkpoint_final.pth").is_file():
        return fold_dir
    cmd = [nnunet_bin("nnUNetv2_train"), str(dataset), "2d", str(fold), "-tr", trainer, "-p", plans,
           "-device", "cpu"]
    proc = subprocess.run(cmd, env=run.environment(**{**BUDGET, **env}), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return fold_dir


def record(fold_dir: Path) -> dict:
    return json.loads((fold_dir / "joint_config.json").read_text(encoding="utf-8"))


def log_text(fold_dir: Path) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(fold_dir.glob("training_log_*.txt")))


@pytest.fixture(scope="module")
def run(tiny_reproduced) -> RunFolder:
    return tiny_reproduced


@pytest.fixture(scope="module")
def lits_checkpoint(run) -> Path:
    return train(run, 502, "nnUNetTrainerSEResNetSeg") / "checkpoint_final.pth"


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory) -> Path:
    """An ImageNet-style checkpoint in timm's seresnet18 layout (random weights: nothing is downloaded)."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("seresnet18", pretrained=False)
    path = tmp_path_factory.mktemp("imagenet") / "seresnet18_imagenet.pth"
    torch.save(model.state_dict(), path)
    return path


def test_lits_model_is_a_complete_nnunet_run(run, lits_checkpoint):
    fold_dir = lits_checkpoint.parent
    assert lits_checkpoint.is_file()
    assert sorted(p.name for p in (fold_dir / "validation").glob("*.nii.gz"))  # nnU-Net's validation ran
    rec = record(fold_dir)
    assert rec["num_epochs"] == 1 and rec["num_iterations_per_epoch"] == 2
    assert "budget 1 epochs x 2 iterations" in log_text(fold_dir)
    plans = json.loads((fold_dir.parent / "plans.json").read_text(encoding="utf-8"))
    assert plans["plans_name"] == PLANS
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["encoder_name"] == "seresnet18"
    assert rec["architecture"]["plans"] == PLANS and rec["architecture"]["patch_size"] == \
        plans["configurations"]["2d"]["patch_size"]


# Every framework with the LiTS init (the papers' best), the ImageNet init on the Y-Net, scratch on the
# joint model (test_nnunetv2_predict_with_our_trainer) and on the LiTS model itself. The remaining
# framework x init x schedule names are generated from the same table and checked by nnU-Net's lookup
# in test_training_units.py; each nnUNetv2_train run costs ~20-40 s on 2 cores, so not all 36 run here.
@pytest.mark.parametrize("framework,init", [(f, "LiTS") for f in FRAMEWORK_DATASET]
                         + [("nnUNetTrainerYNet", "ImageNet")])
def test_frameworks_train_validate_and_initialise(run, lits_checkpoint, imagenet_checkpoint, framework, init):
    trainer = framework if init == "scratch" else f"{framework}_{init}"
    dataset = FRAMEWORK_DATASET[framework]
    fold_dir = train(run, dataset, trainer, nnUNet_joint_lits_checkpoint=str(lits_checkpoint),
                     **({"nnUNet_joint_imagenet_weights": str(imagenet_checkpoint)} if init == "ImageNet" else {}))
    assert (fold_dir / "checkpoint_final.pth").is_file()
    rec = record(fold_dir)
    assert rec["initialisation"]["init"] == init
    weights = safe_torch_load(fold_dir / "checkpoint_final.pth")["network_weights"]
    if init == "ImageNet":
        # every encoder tensor came from the ImageNet file, key for key
        encoder_keys = {k[len("encoder."):] for k in weights if k.startswith("encoder.")}
        assert set(rec["initialisation"]["loaded"]) == encoder_keys
        assert not rec["initialisation"]["missing_in_checkpoint"] and not rec["initialisation"]["shape_mismatch"]
    if init == "LiTS":
        loaded = set(rec["initialisation"]["loaded"])
        heads = ("decoder.seg_layers.", "cls_head.")
        assert {k for k in weights if not k.startswith(heads)} <= loaded  # every non-head weight loaded
    splits = json.loads((run.preprocessed / DATASET_FOLDERS[dataset] / "splits_final.json").read_text(encoding="utf-8"))
    val_cases = sorted(splits[0]["val"])
    if framework != "nnUNetTrainerSEResNetCls":
        predicted = sorted(p.name[: -len(".nii.gz")] for p in (fold_dir / "validation").glob("*.nii.gz"))
        assert predicted == val_cases
    if framework in ("nnUNetTrainerSEResNetCls", "nnUNetTrainerYNet"):
        cls = json.loads((fold_dir / "validation" / "classification.json").read_text(encoding="utf-8"))
        assert sorted(cls) == val_cases
        assert rec["cls_pooling"] == "lesion"
        for entry in cls.values():
            assert entry["predicted"] in LESION_TYPES
            assert sum(entry["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    if framework == "nnUNetTrainerJoint":
        assert sorted(p.name[: -len(".npz")] for p in (fold_dir / "validation").glob("*.npz")) == val_cases
        check_class_weights_match_training_fold(run, rec, splits[0]["train"])


def check_class_weights_match_training_fold(run: RunFolder, rec: dict, train_cases: list[str]) -> None:
    """The joint CE weights follow the default rule (lesion-balanced) on the label counts of the fold's
    training cases, counted on the preprocessed segmentations the network trains on (resampled, so not
    the raw label counts; nnU-Net's -1 outside-the-crop marker is not a class): background and liver 1,
    the lesion as a whole min(5, rest / lesion) per voxel, shared equally by the types present, none above 15."""
    import blosc2

    folder = run.preprocessed / "Dataset504_ShebaJoint" / f"{PLANS}_2d"
    counts = np.zeros(5, dtype=np.int64)
    for case in train_cases:
        seg = np.asarray(blosc2.open(urlpath=str(folder / f"{case}_seg.b2nd"), mode="r")[:])
        counts += np.bincount(seg[seg >= 0].astype(np.int64), minlength=5)[:5]
    assert rec["class_weights"]["label_counts"] == counts.tolist()
    assert rec["class_weights"]["rule"] == "lesion-balanced"
    rest, lesion = counts[:2].sum(), counts[2:].sum()
    per_type = min(5.0, rest / lesion) * lesion / np.count_nonzero(counts[2:])  # each present type's total weight
    expected = [1.0, 1.0, *(min(per_type / n, 15.0) if n else 0.0 for n in counts[2:])]  # no type above 3 x 5
    expected[2:] = [w if w else max(expected[2:]) for w in expected[2:]]  # an absent type: the largest
    np.testing.assert_allclose(rec["class_weights"]["weights"], expected, rtol=1e-6)


@pytest.mark.parametrize("schedule", ["FreezeEnc", "HierFreeze", "HierUnfreeze"])
def test_freezing_schedules_follow_their_table(run, lits_checkpoint, schedule):
    fold_dir = train(run, 504, f"nnUNetTrainerJoint_LiTS_{schedule}", nnUNet_joint_epochs="5",
                     nnUNet_joint_iterations="1", nnUNet_joint_lits_checkpoint=str(lits_checkpoint))
    rec = record(fold_dir)
    epochs = rec["num_epochs"]
    assert rec["schedule_table"] == [list(e) for e in SCHEDULES[schedule]]
    changes = {int(e): int(n) for n, e in re.findall(r"freezing: (\d+) encoder group\(s\) frozen from epoch (\d+)",
                                                        log_text(fold_dir))}
    expected = {}
    last = None
    for epoch in range(epochs):
        from nnunet_joint.freezing import frozen_groups_at
        n = frozen_groups_at(SCHEDULES[schedule], epoch, epochs)
        if n != last:
            expected[epoch] = n
            last = n
    assert changes == expected
    assert rec["freezing_epochs"] == epoch_boundaries(SCHEDULES[schedule], epochs)
    if schedule == "FreezeEnc":
        # the whole encoder, BatchNorm statistics included, never moved from the LiTS weights
        before = safe_torch_load(lits_checkpoint)["network_weights"]
        after = safe_torch_load(fold_dir / "checkpoint_final.pth")["network_weights"]
        encoder_keys = [k for k in after if k.startswith("encoder.") and "num_batches_tracked" not in k]
        assert encoder_keys
        for k in encoder_keys:
            assert torch.equal(before[k], after[k]), k
        moved = [k for k in after if k.startswith("decoder.stages") and not torch.equal(before[k], after[k])]
        assert moved  # the decoder did train


def test_nnunetv2_predict_with_our_trainer(run, tmp_path):
    fold_dir = train(run, 504, "nnUNetTrainerJoint_LiTS")
    images = sorted((run.raw / "Dataset504_ShebaJoint" / "imagesTr").glob("*_0000.nii.gz"))[:2]
    inp = tmp_path / "in"
    inp.mkdir()
    for p in images:
        (inp / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    cmd = [nnunet_bin("nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", "504", "-c", "2d",
           "-tr", "nnUNetTrainerJoint_LiTS", "-p", PLANS, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"]
    proc = subprocess.run(cmd, env=run.environment(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert fold_dir.is_dir()
    for p in images:
        pred = sitk.ReadImage(str(out / p.name.replace("_0000", "")))
        img = sitk.ReadImage(str(p))
        assert pred.GetSize() == img.GetSize() and pred.GetSpacing() == pytest.approx(img.GetSpacing())
        assert pred.GetOrigin() == pytest.approx(img.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3, 4}


def test_sheba_conversion_crops_from_the_stage1_liver_model(run, tmp_path):
    """``convert_sheba --liver-model``: the paper's cascade crop, for raw data without liver masks."""
    import csv
    import shutil

    from nnunet_joint.dataset_conversion.convert_sheba import convert_sheba
    from nnunet_joint.names import SLICE_AXIS_SPACING_2D
    from nnunet_joint.crops import crop_to_roi
    from nnunet_joint.inference.models import PredictorSettings, load_model

    fold_dir = train(run, 501, "nnUNetTrainer_JointBudget")  # the tiny reproduce run's stage 1
    raw = tmp_path / "sheba"
    shutil.copytree(run.phantom / "Sheba", raw)
    with open(raw / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    with open(raw / "cases.csv", "w", newline="") as f:  # no liver masks: stage 1 must provide the crop
        writer = csv.DictWriter(f, ["case_id", "patient_id", "lesion_type", "image", "mask"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    convert_sheba(raw, raw_root=tmp_path / "raw", seg_id=603, joint_id=604, liver_model=fold_dir.parent,
                  liver_folds=[0])
    crops = json.loads((tmp_path / "raw" / "Dataset603_ShebaSeg" / "crops.json").read_text(encoding="utf-8"))["cases"]
    assert sorted(crops) == sorted(r["case_id"] for r in rows)
    # the converter predicts with nnunet_joint_predict's CPU default (no test-time mirroring): the same here
    model = load_model(fold_dir.parent, [0], torch.device("cpu"), settings=PredictorSettings(tta=False))
    sources = []
    for row in rows:
        image = sitk.ReadImage(str(raw / row["image"]))
        sx, sy = image.GetSpacing()[:2]
        liver = model.predict(sitk.GetArrayFromImage(image).astype(np.float32),
                              (SLICE_AXIS_SPACING_2D, sy, sx)).segmentation > 0
        entry = crops[row["case_id"]]
        sources.append(entry["crop_source"])
        if liver.any():
            assert entry["crop_source"] == "stage-1 liver model"
            assert entry["crop"] == crop_to_roi(image, liver, 10.0).to_dict()  # every sizeable stage-1 piece
        else:
            assert entry["crop_source"] == "whole slice (stage 1 found no liver)"
        assert 0.0 <= entry["lesion_fraction_in_crop"] <= 1.0
    print("crop sources:", {s: sources.count(s) for s in set(sources)})


@pytest.mark.parametrize("encoder", ["seresnet34", "seresnet50"])
def test_each_preset_plans_trains_and_predicts_through_the_commands(run, tmp_path, encoder):
    """Preset planned by ``nnunet_joint_plan_and_preprocess -pl``, trained by ``nnUNetv2_train -p``, and the
    network rebuilt from the results folder's plans by ``nnUNetv2_predict -p`` and ``nnunet_joint_predict``.
    (SE-ResNet-18, the tiny run's preset, goes the same way in the tests above.)"""
    from nnunet_joint.planning import planner_of, plans_name_of

    plans = plans_name_of(encoder)
    proc = subprocess.run([nnunet_bin("nnunet_joint_plan_and_preprocess"), "-d", "504", "-c", "2d",
                           "-pl", planner_of(encoder)], env=run.environment(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"plans {plans}" in proc.stdout
    fold_dir = train(run, 504, "nnUNetTrainerJoint", plans=plans)
    assert fold_dir.parent.name == f"nnUNetTrainerJoint__{plans}__2d"  # the folder says the encoder
    saved = json.loads((fold_dir.parent / "plans.json").read_text(encoding="utf-8"))
    assert saved["configurations"]["2d"]["architecture"]["arch_kwargs"]["encoder_name"] == encoder
    weights = safe_torch_load(fold_dir / "checkpoint_final.pth")["network_weights"]
    assert weights["encoder.conv1.weight"].shape == (64, 1, 7, 7)
    assert ("encoder.layer1.0.conv3.weight" in weights) == (encoder == "seresnet50")  # bottleneck blocks

    image = sorted((run.raw / "Dataset504_ShebaJoint" / "imagesTr").glob("*_0000.nii.gz"))[0]
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / image.name).write_bytes(image.read_bytes())
    proc = subprocess.run([nnunet_bin("nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", "504", "-c", "2d",
                           "-tr", "nnUNetTrainerJoint", "-p", plans, "-f", "0", "-device", "cpu", "-npp", "1",
                           "-nps", "1"], env=run.environment(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sitk.ReadImage(str(out / image.name.replace("_0000", ""))).GetSize() == sitk.ReadImage(str(image)).GetSize()

    liver = train(run, 501, "nnUNetTrainer_JointBudget").parent
    ct = sorted((run.phantom / "Sheba" / "slices").glob("*.nii.gz"))[0]
    proc = subprocess.run([nnunet_bin("nnunet_joint_predict"), "-i", str(ct), "-o", str(tmp_path / "cascade"),
                           "--liver-model", str(liver), "--lesion-model", str(fold_dir.parent), "--device", "cpu",
                           "--quiet"], env=run.environment(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "cascade" / "lesions.json").read_text(encoding="utf-8"))
    assert report["models"]["lesion"]["trainer"] == "nnUNetTrainerJoint"
    assert sitk.ReadImage(str(tmp_path / "cascade" / "lesions.nii.gz")).GetSize() == sitk.ReadImage(str(ct)).GetSize()


def test_a_training_killed_mid_run_continues_from_its_latest_checkpoint(run):
    """A row killed after two of its four epochs (``kill -9`` of nnU-Net's process group, as a session's
    end or a scheduler's preemption does) resumes at epoch 2 through ``train_fold`` (``--c``), not at 0."""
    import os
    import signal
    import time

    from nnunet_joint.study.training import train_fold

    # 10 iterations an epoch: the kill lands inside epoch 2, well before its end saves the next checkpoint
    trainer, budget = "nnUNetTrainerJoint_LiTS", {"nnUNet_joint_epochs": "4", "nnUNet_joint_iterations": "10"}
    env = {"nnUNet_joint_lits_checkpoint": str(train(run, 502, "nnUNetTrainerSEResNetSeg") / "checkpoint_final.pth")}
    fold_dir = run.results / DATASET_FOLDERS[504] / f"{trainer}__{PLANS}__2d" / "fold_1"
    cmd = [nnunet_bin("nnUNetv2_train"), "504", "2d", "1", "-tr", trainer, "-p", PLANS, "-device", "cpu"]
    proc = subprocess.Popen(cmd, env=run.environment(**budget, **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while "Epoch 2" not in log_text(fold_dir):  # epochs 0 and 1 ended: checkpoint_latest holds epoch 2's start
        assert proc.poll() is None and time.time() < deadline, "the training ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (fold_dir / "checkpoint_final.pth").exists()
    assert safe_torch_load(fold_dir / "checkpoint_latest.pth")["current_epoch"] == 2

    first_log = set(fold_dir.glob("training_log_*.txt"))
    time.sleep(1.1)  # nnU-Net names its log by the second it started
    train_fold(run, trainer, 504, "1", "cpu", budget, env, PLANS)
    (second_log,) = set(fold_dir.glob("training_log_*.txt")) - first_log
    epochs = [int(e) for e in re.findall(r": Epoch (\d+) *$", second_log.read_text(encoding="utf-8"), re.MULTILINE)]
    assert epochs == [2, 3]  # continued, not started again
    assert safe_torch_load(fold_dir / "checkpoint_final.pth")["current_epoch"] == 4
    assert not (fold_dir / "checkpoint_latest.pth").exists()  # nnU-Net removes it at the end
    curve = json.loads((fold_dir / "learning_curve.json").read_text(encoding="utf-8"))
    assert [row["epoch"] for row in curve["epochs"]] == [0, 1, 2, 3]  # each epoch once across the two processes
