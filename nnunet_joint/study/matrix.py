"""The study's matrix and the papers' questions, in the words of :mod:`nnunet_joint.names`.

An experiment is a framework, its initialisation and fine-tuning schedule, on one dataset; the
reproduce pipeline, the papers' published numbers and the report name experiments by these keys, so a
row of the report, a results folder and a published number meet.

Plain nnU-Net also runs from LiTS on the joint labels (``nnUNetTrainer_JointBudget_LiTS`` on 504:
nnU-Net's own U-Net pretrained on the LiTS lesion dataset), the papers' transfer question asked of
nnU-Net's network; it has no ImageNet initialisation and no fine-tuning schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nnunet_joint.names import (
    DATASET_FOLDERS,
    DEFAULT_PLANS,
    FINE_TUNING_SCHEDULES,
    FRAMEWORKS,
    INITS,
    JOINT_DATASET,
    NO_FREEZING,
    PAPER_FRAMEWORKS,
    SCRATCH,
    trainer_name,
)


@dataclass(frozen=True)
class Experiment:
    """One row of the matrix: a framework, its initialisation and schedule, on one dataset."""

    framework: str
    init: str
    schedule: str
    dataset: int

    @property
    def trainer(self) -> str:
        return trainer_name(self.framework, self.init, self.schedule)

    @property
    def name(self) -> str:
        """``TRAINER@DatasetXXX_Name``: unique in the matrix (plain nnU-Net runs on two datasets)."""
        return f"{self.trainer}@{DATASET_FOLDERS[self.dataset]}"

    @property
    def row(self) -> str:
        return FRAMEWORKS[self.framework].name

    def plans(self, seresnet_plans: str) -> str:
        """Plain nnU-Net rows keep nnU-Net's default plans; ours use the SE-ResNet preset's."""
        return DEFAULT_PLANS if self.framework == "nnunet" else seresnet_plans


def experiment(framework: str, init: str = SCRATCH, schedule: str = NO_FREEZING, dataset: int | None = None
               ) -> Experiment:
    datasets = FRAMEWORKS[framework].datasets
    return Experiment(framework, init, schedule, datasets[0] if dataset is None else dataset)


def experiment_matrix() -> list[Experiment]:
    """The papers' matrix: 4 frameworks x 3 inits, joint from LiTS x the fine-tuning schedules,
    plain nnU-Net on both Sheba datasets, and plain nnU-Net from LiTS on the joint labels."""
    rows = [experiment(f, i) for f in PAPER_FRAMEWORKS for i in INITS]
    rows += [experiment("joint", "LiTS", s) for s in FINE_TUNING_SCHEDULES]
    rows += [experiment("nnunet", dataset=d) for d in FRAMEWORKS["nnunet"].datasets]
    rows.append(experiment("nnunet", "LiTS", dataset=JOINT_DATASET))
    return rows


@dataclass(frozen=True)
class Comparison:
    """A difference the papers report: ``better`` is the method they found better than ``baseline``.

    ``dataset``: the dataset both rows train on, where a framework runs on several (plain nnU-Net);
    ``paper``: the paper that reports the difference, empty for a question the papers did not ask.
    """

    name: str
    better: tuple[str, str, str]  # framework, init, schedule
    baseline: tuple[str, str, str]
    metrics: tuple[str, ...]
    paper: str
    dataset: int | None = None


def comparisons() -> list[Comparison]:
    """The papers' questions: joint vs Y-Net (each init), LiTS vs scratch (each framework), each
    fine-tuning schedule vs no freezing (joint from LiTS); and whether the papers' SE-ResNet rows
    beat plain nnU-Net trained on the same labels (both from scratch: the method differs, network and
    loss weighting included, since plain nnU-Net trains an unweighted CE); and LiTS vs scratch for plain
    nnU-Net on the joint labels."""
    out = [Comparison("joint vs Y-Net", ("joint", i, NO_FREEZING), ("ynet", i, NO_FREEZING), ("cls_acc", "dice"),
                      "MIDL") for i in INITS]
    out += [Comparison("LiTS vs scratch", (f, "LiTS", NO_FREEZING), (f, SCRATCH, NO_FREEZING),
                       FRAMEWORKS[f].metrics[:2], "MIDL") for f in PAPER_FRAMEWORKS]
    out += [Comparison("fine-tuning vs no freezing", ("joint", "LiTS", s), ("joint", "LiTS", NO_FREEZING),
                       ("cls_acc", "dice"), "EMBC") for s in FINE_TUNING_SCHEDULES]
    out += [Comparison("SE-ResNet vs plain nnU-Net", (f, SCRATCH, NO_FREEZING), ("nnunet", SCRATCH, NO_FREEZING),
                       FRAMEWORKS[f].metrics[:2], "", FRAMEWORKS[f].datasets[0]) for f in ("seg", "joint")]
    # the papers' transfer question asked of nnU-Net's own U-Net, on the joint labels
    out.append(Comparison("LiTS vs scratch", ("nnunet", "LiTS", NO_FREEZING), ("nnunet", SCRATCH, NO_FREEZING),
                          ("cls_acc", "dice"), "", JOINT_DATASET))
    return out


def central_comparison() -> tuple[Experiment, Experiment]:
    """The papers' central question, the one ``--repeats`` measures the run-to-run spread of: the
    joint model from LiTS (MIDL's best row) against the same model from scratch, no freezing."""
    return experiment("joint", "LiTS"), experiment("joint")


def step_id(exp: Experiment, fold: int | str) -> str:
    """``Joint_LiTS-f0``: the trainer without nnU-Net's prefix (plain nnU-Net: ``nnUNet503``, from LiTS
    ``nnUNet504_LiTS``), and the fold."""
    if exp.framework == "nnunet":
        short = f"nnUNet{exp.dataset}" + ("" if exp.init == SCRATCH else f"_{exp.init}")
    else:
        short = exp.trainer.removeprefix("nnUNetTrainer")
    return f"{short}-f{fold}"


def selected(rows: Sequence[str] | None) -> list[Experiment]:
    """The matrix's experiments a profile's ``rows`` name: a trainer (every dataset it runs on) or
    ``TRAINER@DatasetXXX_Name`` (one); ``None``: every experiment."""
    return [e for e in experiment_matrix() if rows is None or e.trainer in rows or e.name in rows]
