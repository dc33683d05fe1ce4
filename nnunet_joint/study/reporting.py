"""The study's report step: evaluate stage 1 and every row of the matrix, and write ``DIR/report/``.

Each row of the matrix reaches the report as one entry whose ``status`` is a typed
:class:`~nnunet_joint.evaluation.report.experiments.Outcome` (ran, not in this profile, needs
ImageNet weights, failed with a reason), decided here from the study and its folds
(:func:`training_outcome`); the report words it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from nnunet_joint.errors import InputError
from nnunet_joint.names import (DATASET_FOLDERS, JOINT_DATASET, LITS_LESION_DATASET, LITS_TRAINER, LIVER_DATASET,
                                PLAIN_TRAINER)
from nnunet_joint.study.folder import RunFolder
from nnunet_joint.study import matrix
from nnunet_joint.study.matrix import Experiment, central_comparison, experiment_matrix, step_id
from nnunet_joint.study.training import Training, fold_done, trainer_dir

if TYPE_CHECKING:
    from nnunet_joint.study.steps import Study


def evaluate_dir(trainer_dir: Path, run: RunFolder, dataset: int, folds: Sequence[int | str]) -> dict:
    from nnunet_joint.evaluation.evaluate import evaluate_trainer_dir, write_summary

    summary = evaluate_trainer_dir(trainer_dir, gt_dir=run.preprocessed / DATASET_FOLDERS[dataset] / "gt_segmentations",
                                   folds=[int(f) for f in folds if str(f).isdigit()] or None,
                                   raw_dataset=run.raw / DATASET_FOLDERS[dataset])
    write_summary(summary, trainer_dir)
    return summary


def versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "nnunetv2", "dynamic_network_architectures", "nnunet_joint", "SimpleITK", "numpy"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing optional package is reported as such
            out[pkg] = "not installed"
    return out



def report(study: Study) -> None:
    """Evaluate stage 1 and every row, and write ``DIR/report/`` (kept in the study's ``reported``)."""
    from nnunet_joint.evaluation.coverage import cascade_coverage
    from nnunet_joint.evaluation.report import build_report

    folds, profile = list(study.folds), study.profile
    liver_summary = evaluate_dir(study.stage1().fold_dir(study.run).parent, study.run, LIVER_DATASET, ["0"])
    trainings = study.row_trainings()
    experiments = []
    for exp in experiment_matrix():
        directory = trainer_dir(study.run, exp.trainer, exp.dataset, exp.plans(study.plans))
        entry = {**report_entry(study, exp, directory), "plans": exp.plans(study.plans),
                 "budget": {"epochs": int(profile.budget.get("nnUNet_joint_epochs", 0)) or "nnU-Net default",
                            "iterations": int(profile.budget.get("nnUNet_joint_iterations", 0))
                            or "nnU-Net default",
                            "encoder": profile.encoder if exp.framework != "nnunet" else "-"}}
        entry["status"] = training_outcome(study, exp, trainings)
        if entry["status"] is None:
            evaluate_entry(study, entry, exp)
        experiments.append(entry)
    joint = study.run.raw / DATASET_FOLDERS[JOINT_DATASET]
    commands = [" ".join(["nnunet_joint_reproduce", "--profile", profile.name, "--out", str(study.run.root)]
                         + (["--oracle-crops"] if study.oracle_crops else []))]
    commands += [t.command(study.device) for t in (study.stage1(), study.lits())
                 + ((study.plain_lits(),) if study.needs_plain_lits() else ())]
    commands += [t.command(study.device) for _, _, t in trainings]
    meta = {"profile": profile.name, "folds": folds, "commands": commands, "versions": versions(),
            "wall_time_s": time.time() - study.started, "raw_root": study.run.raw, "jobs": study.jobs,
            "images_dataset": DATASET_FOLDERS[JOINT_DATASET],
            "stage1": {"trainer": PLAIN_TRAINER, "summary": liver_summary},
            "cascade": cascade_coverage(
                joint, study.run.preprocessed / DATASET_FOLDERS[JOINT_DATASET] / "splits_final.json", folds),
            "stage_budget": {"stage 1": profile.stage1_budget, "LiTS pretraining": profile.lits_budget},
            "device": study.device,
            "phantom": None if not study.own_data else {"size": profile.phantom_size, "seed": study.seed},
            "pretraining": pretraining_record(study), "repeats": repeat_record(study),
            "handcrafted": handcrafted_record(study)}
    study.reported = {"experiments": experiments, "report": build_report(experiments, study.run.report, meta)}


def report_entry(study: Study, exp: Experiment, directory: Path) -> dict:
    """What the report needs to know of a row trained in ``directory`` (``build_report``'s entry)."""
    return {"row": exp.row, "framework": exp.framework, "init": exp.init, "schedule": exp.schedule,
            "trainer": exp.trainer, "dataset": DATASET_FOLDERS[exp.dataset], "trainer_dir": directory,
            "summary": None, "folds": list(study.folds)}


def evaluate_entry(study: Study, entry: dict, exp: Experiment) -> None:
    """Evaluate the entry's folds into its ``summary`` and ``status`` (ran; or failed, with the evaluation's error)."""
    from nnunet_joint.evaluation.report.experiments import Outcome

    try:
        entry["summary"] = evaluate_dir(entry["trainer_dir"], study.run, exp.dataset, entry["folds"])
        entry["status"] = Outcome.ran()
    except (RuntimeError, InputError) as e:
        entry["status"] = Outcome.failed(str(e))


def repeat_record(study: Study) -> list[dict] | None:
    """Per repeat 0 .. ``repeats - 1``, the central comparison's report entries (repeat 0: the main run's);
    ``None`` without ``--repeats`` (:mod:`nnunet_joint.evaluation.report.spread`)."""
    from nnunet_joint.evaluation.report.experiments import Outcome

    if study.repeats <= 1:
        return None
    folds = list(study.folds)
    out = []
    for repeat in range(study.repeats):
        entries = []
        for exp in (e for e in central_comparison() if e in study.runnable()):
            directory = trainer_dir(study.run.repeated(repeat), exp.trainer, exp.dataset, exp.plans(study.plans))
            entry = {**report_entry(study, exp, directory), "status": Outcome.failed("not every fold finished")}
            if all(fold_done(directory / f"fold_{f}") for f in folds):
                evaluate_entry(study, entry, exp)
            entries.append(entry)
        out.append({"repeat": repeat, "seed": repeat or None, "experiments": entries})
    return out


def handcrafted_record(study: Study) -> dict:
    """The handcrafted reference row (no network: features inside the reference lesion mask, a random forest)
    on the joint dataset's folds, written to ``DIR/handcrafted/``: how separable the types are on this data, the
    yardstick every deep row's typing is read against (:mod:`nnunet_joint.evaluation.handcrafted`).

    A reference that cannot be computed (e.g. a fold whose training slices lack a type the forest needs,
    user data without lesion types) becomes ``{"error": first line}``, which the report shows in its row:
    the deep rows' report is never lost to it.
    """
    from nnunet_joint.evaluation.handcrafted import handcrafted_row, write_outputs

    joint = DATASET_FOLDERS[JOINT_DATASET]
    try:
        summary = handcrafted_row(study.run.raw / joint, study.run.preprocessed / joint / "splits_final.json",
                                  list(study.folds))
        write_outputs(summary, study.run.handcrafted)
    except Exception as e:  # noqa: BLE001 - a reference row must not take the report down with it
        return {"error": (str(e).splitlines() or [type(e).__name__])[0]}
    return {key: summary[key] for key in ("per_fold", "aggregate", "classification")} | {
        "outputs": str(study.run.handcrafted)}


def pretraining_record(study: Study) -> dict | None:
    """The report's pretraining section (:mod:`nnunet_joint.evaluation.pretraining`): ``None`` when no
    LiTS row ran."""
    from nnunet_joint.evaluation.pretraining import pretraining_record

    if not any(e.init == "LiTS" for e in study.runnable()):
        return None
    models = [(f"SE-ResNet LiTS model ({LITS_TRAINER})", study.lits().fold_dir(study.run))]
    if study.needs_plain_lits():
        models.append((f"plain nnU-Net LiTS model ({PLAIN_TRAINER})", study.plain_lits().fold_dir(study.run)))
    source = study.run.raw / DATASET_FOLDERS[LITS_LESION_DATASET]
    target = study.run.preprocessed / DATASET_FOLDERS[JOINT_DATASET]
    lesion_label = json.loads((source / "dataset.json").read_text(encoding="utf-8"))["labels"]["lesion"]
    return pretraining_record(source, target / "splits_final.json", study.folds, target / f"{study.plans}.json",
                              models, lesion_label)


def training_outcome(study: Study, exp: Experiment, trainings: Sequence[tuple[Experiment, int, Training]]):
    """Why ``exp`` has no evaluation to show (an ``Outcome``: needs ImageNet weights, not in the profile, or
    failed with its first fold's reason), or ``None`` when every fold trained and it is to be evaluated."""
    from nnunet_joint.evaluation.report.experiments import Outcome

    if exp.init == "ImageNet" and study.imagenet_weights is None:
        return Outcome.needs_imagenet_weights()
    if exp not in matrix.selected(study.profile.rows):
        return Outcome.not_in_profile(study.profile.name)
    if exp not in study.selected():  # left out by --rows: shown when an earlier call trained all its folds
        directory = trainer_dir(study.run, exp.trainer, exp.dataset, exp.plans(study.plans))
        return None if all(fold_done(directory / f"fold_{f}") for f in study.folds) else Outcome.not_selected()
    for e, fold, t in trainings:
        if e == exp and (study.failures.get(step_id(exp, fold)) or not fold_done(t.fold_dir(study.run))):
            return Outcome.failed(study.failures.get(step_id(exp, fold)) or f"fold {fold} did not finish (see its log)")
    return None
