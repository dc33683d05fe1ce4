"""``nnunet_joint_reproduce`` end to end on the tiny phantom with a minimal budget (slow; CI runs it).

The report's tables and summary.json are checked against the fold folders, re-evaluated here
independently of the pipeline's own evaluation call.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import pytest

from nnunet_joint.evaluation.evaluate import evaluate_trainer_dir
from nnunet_joint.names import DATASET_FOLDERS, LITS_TRAINER, PLAIN_TRAINER
from nnunet_joint.study.profiles import PROFILES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tiny_reproduced) -> Path:
    return tiny_reproduced.root


def experiments(run_dir: Path) -> dict[str, dict]:
    summary = json.loads((run_dir / "report" / "summary.json").read_text(encoding="utf-8"))
    return {e["key"]: e for e in summary["experiments"]}


def test_run_folder_is_self_contained(run_dir):
    for sub in ("phantom/LiTS", "phantom/Sheba", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "report"):
        assert (run_dir / sub).is_dir(), sub
    for name in ("report.md", "report.html", "summary.json", "summary.csv"):
        assert (run_dir / "report" / name).stat().st_size > 0
    # stage 1 and the LiTS lesion model where nnunet_joint_predict looks for them
    assert (run_dir / "nnUNet_results" / DATASET_FOLDERS[501] / f"{PLAIN_TRAINER}__nnUNetPlans__2d" / "fold_0"
            / "checkpoint_final.pth").is_file()
    assert (run_dir / "nnUNet_results" / DATASET_FOLDERS[502] / "nnUNetTrainerSEResNetSeg__nnUNetSEResNet18Plans__2d"
            / "fold_0" / "checkpoint_final.pth").is_file()


def test_the_handcrafted_reference_types_the_validation_slices_of_the_study_s_folds(run_dir):
    """The report step runs the handcrafted reference on the joint dataset's folds; the report shows its row."""
    summary = json.loads((run_dir / "handcrafted" / "summary.json").read_text(encoding="utf-8"))
    splits = json.loads((run_dir / "nnUNet_preprocessed" / DATASET_FOLDERS[504] / "splits_final.json")
                        .read_text(encoding="utf-8"))
    assert sorted(c["case_id"] for c in summary["cases"]) == sorted(splits[0]["val"])  # fold 0's validation slices
    assert (run_dir / "handcrafted" / "features.csv").is_file()
    report = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    assert "| handcrafted features (reference mask, random forest) |" in report


def test_summary_matches_the_fold_folders(run_dir):
    done = [e for e in experiments(run_dir).values() if e["status"] == "done"]
    trained = {e["trainer"] for e in done}
    assert set(PROFILES["tiny"].rows) <= trained  # every row of the profile ran
    for e in done:
        fresh = evaluate_trainer_dir(Path(e["trainer_dir"]), gt_dir=run_dir / "nnUNet_preprocessed" / e["dataset"]
                                     / "gt_segmentations", folds=[0], raw_dataset=run_dir / "nnUNet_raw" / e["dataset"])
        assert fresh["scored_on"] == "full slices"
        for metric, value in fresh["aggregate"]["metrics"].items():
            assert e["aggregate"]["metrics"][metric]["n"] == value["n"], (e["key"], metric)
            if value["mean"] is not None:
                assert e["aggregate"]["metrics"][metric]["mean"] == pytest.approx(value["mean"]), (e["key"], metric)


def test_report_tables_show_measured_cells_and_never_invent_numbers(run_dir):
    report = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    exps = experiments(run_dir)
    joint = next(e for e in exps.values() if e["trainer"] == "nnUNetTrainerJoint_LiTS")
    acc = joint["aggregate"]["metrics"]["cls_acc"]
    # one fold: the mean over its slices, its patient interval, and "1 fold" instead of a spread (never "± 0.00")
    assert acc["n_folds"] == 1 and re.search(rf"{acc['mean']:.2f} \[\d\.\d\d, \d\.\d\d\] \(n={acc['n']}; 1 fold\)",
                                             report)
    imagenet = [e for e in exps.values() if e["init"] == "ImageNet"]
    assert imagenet and all(e["status"] == "not run: no ImageNet weights given" for e in imagenet)
    assert all(e["aggregate"] is None for e in imagenet)
    assert "not run: no ImageNet weights given" in report
    with open(run_dir / "report" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["status"] != "done":
            assert row["mean"] == "", row  # an experiment that did not run has no number


def test_report_states_the_stage1_liver_dice(run_dir):
    folder = run_dir / "nnUNet_results" / DATASET_FOLDERS[501] / f"{PLAIN_TRAINER}__nnUNetPlans__2d"
    fresh = evaluate_trainer_dir(folder, gt_dir=run_dir / "nnUNet_preprocessed" / DATASET_FOLDERS[501]
                                 / "gt_segmentations", folds=[0])
    dice = fresh["aggregate"]["metrics"]["liver_dice"]
    assert dice["n"] >= 1 and 0.0 <= dice["mean"] <= 1.0
    line = f"liver Dice per validation volume {dice['mean']:.2f} (n={dice['n']} volumes; 1 fold)"  # fold 0 only
    assert line in (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    assert line in (run_dir / "report" / "report.html").read_text(encoding="utf-8")


def test_each_pretraining_trains_then_validates_in_a_step_of_its_own(run_dir):
    """Stage 1 and the LiTS model train without their final validation (their dependants need only the
    checkpoint), then ``nnUNetv2_train ... --val`` validates the saved checkpoint in the same log."""
    logs = {"stage 1": run_dir / "logs" / f"{PLAIN_TRAINER}_501_fold0.log",
            "LiTS model": run_dir / "logs" / f"{LITS_TRAINER}_502_fold0.log"}
    for what, log in logs.items():
        text = log.read_text(encoding="utf-8")
        commands = [line for line in text.splitlines() if line.startswith("$ ")]
        assert len(commands) == 2 and not commands[0].endswith("--val") and commands[1].endswith(" --val"), what
        trained, validated = text.split(commands[1])
        assert "final validation deferred (nnUNet_joint_final_validation=0)" in trained, what
        assert "Mean Validation Dice" not in trained and "Mean Validation Dice" in validated, what
    for dataset, trainer, plans in ((501, PLAIN_TRAINER, "nnUNetPlans"), (502, LITS_TRAINER, "nnUNetSEResNet18Plans")):
        fold = run_dir / "nnUNet_results" / DATASET_FOLDERS[dataset] / f"{trainer}__{plans}__2d" / "fold_0"
        assert (fold / "validation" / "summary.json").is_file() and (fold / "checkpoint_final.pth").is_file()


def test_the_cascade_crops_the_sheba_slices_and_the_report_says_so(run_dir):
    """Stage 1 cropped 503/504 (no reference liver mask), every crop is recorded, and the report names it."""
    for dataset in (DATASET_FOLDERS[503], DATASET_FOLDERS[504]):
        crops = json.loads((run_dir / "nnUNet_raw" / dataset / "crops.json").read_text(encoding="utf-8"))
        assert crops["crop_mode"] == "cascade"
        assert {c["crop_source"] for c in crops["cases"].values()} <= {
            "stage-1 liver model", "whole slice (stage 1 found no liver)"}
        assert all(0.0 <= c["lesion_fraction_in_crop"] <= 1.0 for c in crops["cases"].values())
    report = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    assert "Crops: cascade" in report and "fold 0 (" in report


def test_every_row_writes_a_learning_curve_and_plain_nnunet_exports_probabilities(run_dir):
    done = [e for e in experiments(run_dir).values() if e["status"] == "done"]
    for e in done:
        curve = json.loads((Path(e["trainer_dir"]) / "fold_0" / "learning_curve.json").read_text(encoding="utf-8"))
        assert [row["epoch"] for row in curve["epochs"]] == [0]  # the tiny profile trains one epoch
    plain = next(e for e in done if e["trainer"] == PLAIN_TRAINER and e["dataset"] == DATASET_FOLDERS[504])
    validation = Path(plain["trainer_dir"]) / "fold_0" / "validation"
    assert sorted(p.stem for p in validation.glob("*.npz")) == sorted(
        p.name[:-len(".nii.gz")] for p in validation.glob("*.nii.gz"))  # the same vote fallback as our joint model


def test_a_changed_stage1_recuts_the_crops_and_sets_the_rows_on_old_crops_aside(tiny_reproduced, tmp_path):
    """Provenance of the cascade: crops.json names the stage-1 checkpoint (by content) that cut the crops;
    when stage 1 changes, the crops are cut again and nothing trained on the old ones is kept in place."""
    import shutil

    import torch

    from nnunet_joint.checkpoints import safe_torch_load
    from nnunet_joint.io import file_sha256
    from nnunet_joint.study.cli import reproduce
    from nnunet_joint.study.folder import RunFolder
    from nnunet_joint.study.graph import steps_to_run
    from nnunet_joint.study.steps import Study

    run = RunFolder(tmp_path / "run")
    shutil.copytree(tiny_reproduced.root, run.root)
    crops_json = run.raw / DATASET_FOLDERS[504] / "crops.json"
    checkpoint = (run.results / DATASET_FOLDERS[501] / f"{PLAIN_TRAINER}__nnUNetPlans__2d" / "fold_0"
                  / "checkpoint_final.pth")
    old = file_sha256(checkpoint)
    assert json.loads(crops_json.read_text())["stage1_checkpoint_sha256"] == {"fold_0": old}
    study = Study(run, PROFILES["tiny"], folds=(0,))
    assert [s.id for s in steps_to_run(study.steps())] == ["report"]  # everything current

    state = safe_torch_load(checkpoint)  # "retrained": other weights, still a valid stage-1 model
    state["network_weights"] = {k: v + 0.01 if v.is_floating_point() else v
                                for k, v in state["network_weights"].items()}
    torch.save(state, checkpoint)
    new = file_sha256(checkpoint)
    assert new != old
    todo = {s.id for s in steps_to_run(study.steps())}
    assert {"crops", "report"} | {s.id for s in study.steps() if s.optional} == todo  # crops and every row

    trained = {p.name for p in run.results.iterdir()}
    reproduce(run.root, PROFILES["tiny"], stop_after="data", quiet=True)
    assert json.loads(crops_json.read_text())["stage1_checkpoint_sha256"] == {"fold_0": new}
    aside = run.root / "replaced" / f"crops_of_stage1_{old[:12]}"
    assert {p.name for p in aside.iterdir()} == {DATASET_FOLDERS[503], DATASET_FOLDERS[504]} & trained
    assert not (run.results / DATASET_FOLDERS[504]).exists() and not (run.results / DATASET_FOLDERS[503]).exists()
    rows = {s.id for s in study.steps() if s.optional}
    assert {s.id for s in steps_to_run(study.steps())} == rows | {"report"}  # the rows train again on the new crops
    cut = crops_json.stat().st_mtime_ns
    reproduce(run.root, PROFILES["tiny"], stop_after="data", quiet=True)
    assert crops_json.stat().st_mtime_ns == cut  # unchanged stage 1: the crops are kept


def test_a_run_folder_of_the_earlier_layout_resumes_to_its_report(tiny_reproduced, tmp_path):
    """A run folder made before the study became a package (its markers as that code wrote them, byte for
    byte; fold folders and crops.json are unchanged formats): the rerun finds every step done but the
    report, and writes the same report."""
    import shutil

    from test_reproduce_units import EARLIER_MARKERS

    from nnunet_joint.study.cli import reproduce
    from nnunet_joint.study.folder import RunFolder
    from nnunet_joint.study.graph import steps_to_run
    from nnunet_joint.study.steps import Study

    run = RunFolder(tmp_path / "run")
    shutil.copytree(tiny_reproduced.root, run.root, ignore=shutil.ignore_patterns("report", "slurm"))
    for name, content in EARLIER_MARKERS.items():
        (run.root / "logs" / f"{name}.done").write_text(content, encoding="utf-8")
    assert [s.id for s in steps_to_run(Study(run, PROFILES["tiny"], folds=(0,)).steps())] == ["report"]
    reproduce(run.root, PROFILES["tiny"], quiet=True)
    assert {k: e["status"] for k, e in experiments(run.root).items()} == {
        k: e["status"] for k, e in experiments(tiny_reproduced.root).items()}


def _session_processes(session: int) -> list[int]:
    """Processes of a session that still run (zombies waiting to be reaped have ended)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[-1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_kill_9_while_the_phantom_pool_works_leaves_no_process_and_the_rerun_reports(tmp_path):
    """``kill -9`` of ``nnunet_joint_reproduce --profile tiny`` while the phantom generator's process pool
    renders: every process it started dies with it, and the rerun on the same folder resumes to the report."""
    import signal
    import subprocess
    import time

    from nnunet_joint.reproduce import main

    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "nnunet_joint_reproduce"), "--profile", "tiny", "--out", str(out),
           "--device", "cpu", "--quiet"]
    study = subprocess.Popen(cmd, start_new_session=True)  # its own session: whatever it starts is found there
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and study.poll() is None:
            workers = [c for c in _children(study.pid) if (out / "phantom").exists()
                       and Path(f"/proc/{c}/cmdline").read_bytes() == Path(f"/proc/{study.pid}/cmdline").read_bytes()]
            time.sleep(0.02)
        assert len(workers) == 2, "the phantom's pool did not start"
        os.kill(study.pid, signal.SIGKILL)
        study.wait()
        deadline = time.monotonic() + 10
        while _session_processes(study.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session_processes(study.pid) == [], "processes outlived the killed study"
    finally:
        for pid in _session_processes(study.pid):
            os.kill(pid, signal.SIGKILL)
    assert main(cmd[1:]) == 0  # the rerun: not refused by a lock, resumes to the report
    assert (out / "report" / "report.md").is_file()
    assert {e["status"] for e in experiments(out).values() if e["trainer"] in PROFILES["tiny"].rows} == {"done"}
