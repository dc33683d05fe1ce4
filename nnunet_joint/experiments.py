"""The experiment vocabulary, defined once: frameworks, initialisations, fine-tuning schedules, datasets.

The trainer variants (``nnunet_joint.training.variants``), the reproduce pipeline, the papers'
published numbers and the report all name experiments with these words, so a row of the report,
a results folder and a published number meet by the same keys:

==========  ==========================  ===============================  =======================
framework   row name (the papers')      trainer base                     dataset
==========  ==========================  ===============================  =======================
cls         classification baseline     nnUNetTrainerSEResNetCls         Dataset503_ShebaSeg
seg         segmentation baseline       nnUNetTrainerSEResNetSeg         Dataset503_ShebaSeg
ynet        Y-Net                       nnUNetTrainerYNet                Dataset503_ShebaSeg
joint       joint                       nnUNetTrainerJoint               Dataset504_ShebaJoint
nnunet      plain nnU-Net               nnUNetTrainer_JointBudget        503 and 504
==========  ==========================  ===============================  =======================

Plain nnU-Net also runs from LiTS on the joint labels (``nnUNetTrainer_JointBudget_LiTS`` on 504:
nnU-Net's own U-Net pretrained on the LiTS lesion dataset), the papers' transfer question asked of
nnU-Net's network; it has no ImageNet initialisation and no fine-tuning schedules.

Initialisations ``scratch | ImageNet | LiTS`` and fine-tuning schedules ``NoFreeze | FreezeEnc |
HierFreeze | HierUnfreeze`` (their tables are data in :mod:`nnunet_joint.freezing`) are part of
the trainer's name: ``<base>``, ``<base>_<Init>``, ``<base>_<Init>_<Schedule>`` (single underscores:
nnU-Net splits results folder names on ``__``).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnunet_joint.freezing import SCHEDULES


@dataclass(frozen=True)
class Framework:
    """One of the papers' frameworks (or the plain nnU-Net baseline)."""

    key: str
    name: str
    trainer_base: str
    #: the metrics the framework produces (a classifier has no Dice, a segmentation baseline no type)
    metrics: tuple[str, ...]
    datasets: tuple[int, ...]


FRAMEWORKS: dict[str, Framework] = {f.key: f for f in (
    Framework("cls", "classification baseline", "nnUNetTrainerSEResNetCls", ("cls_acc",), (503,)),
    Framework("seg", "segmentation baseline", "nnUNetTrainerSEResNetSeg", ("dice", "recall"), (503,)),
    Framework("ynet", "Y-Net", "nnUNetTrainerYNet", ("cls_acc", "dice", "recall"), (503,)),
    Framework("joint", "joint", "nnUNetTrainerJoint", ("cls_acc", "dice", "recall"), (504,)),
    Framework("nnunet", "plain nnU-Net", "nnUNetTrainer_JointBudget", ("cls_acc", "dice", "recall"), (503, 504)),
)}
#: The papers' four frameworks, in their row order.
PAPER_FRAMEWORKS: tuple[str, ...] = ("cls", "seg", "ynet", "joint")

SCRATCH = "scratch"
#: Weight initialisations, in the papers' column order.
INITS: tuple[str, ...] = (SCRATCH, "ImageNet", "LiTS")
PRETRAINED_INITS: tuple[str, ...] = ("ImageNet", "LiTS")
#: Plain nnU-Net's: its own U-Net has no ImageNet weights.
PLAIN_INITS: tuple[str, ...] = (SCRATCH, "LiTS")

NO_FREEZING = "NoFreeze"
#: Fine-tuning schedules, no freezing first (the EMBC paper's rows).
SCHEDULE_NAMES: tuple[str, ...] = tuple(SCHEDULES)
FINE_TUNING_SCHEDULES: tuple[str, ...] = tuple(s for s in SCHEDULES if s != NO_FREEZING)

#: Dataset ids by role, and nnU-Net's folder names.
DATASET_IDS: dict[str, int] = {"liver": 501, "lits_lesion": 502, "seg": 503, "joint": 504}
DATASET_FOLDERS: dict[int, str] = {501: "Dataset501_LiTSLiver", 502: "Dataset502_LiTSLesion",
                                   503: "Dataset503_ShebaSeg", 504: "Dataset504_ShebaJoint"}
#: nnU-Net's default plans: stage 1 and the plain nnU-Net rows.
DEFAULT_PLANS = "nnUNetPlans"
#: Stage 1 of the cascade and the plain rows: nnUNetTrainer, length from our budget variables.
PLAIN_TRAINER = FRAMEWORKS["nnunet"].trainer_base
#: The LiTS lesion model (pretraining): the segmentation baseline's trainer on Dataset502.
LITS_TRAINER = FRAMEWORKS["seg"].trainer_base


def trainer_name(framework: str, init: str = SCRATCH, schedule: str = NO_FREEZING) -> str:
    """``nnUNetTrainerJoint_LiTS_HierFreeze`` from ``("joint", "LiTS", "HierFreeze")``."""
    if framework not in FRAMEWORKS or init not in INITS or schedule not in SCHEDULES:
        raise ValueError(f"unknown experiment ({framework}, {init}, {schedule})")
    if framework == "nnunet" and (init not in PLAIN_INITS or schedule != NO_FREEZING):
        raise ValueError("plain nnU-Net starts from scratch or from LiTS, without a fine-tuning schedule")
    if init == SCRATCH and schedule != NO_FREEZING:
        raise ValueError("a fine-tuning schedule needs pretrained weights")
    name = FRAMEWORKS[framework].trainer_base
    if init != SCRATCH:
        name += f"_{init}"
    if schedule != NO_FREEZING:
        name += f"_{schedule}"
    return name


def variant_names(base_name: str) -> list[str]:
    """The pretrained variants of a trainer base: ``<base>_<Init>`` and ``<base>_<Init>_<Schedule>``."""
    names = []
    for init in PRETRAINED_INITS:
        names.append(f"{base_name}_{init}")
        names += [f"{base_name}_{init}_{s}" for s in FINE_TUNING_SCHEDULES]
    return names


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
    rows.append(experiment("nnunet", "LiTS", dataset=DATASET_IDS["joint"]))
    return rows


@dataclass(frozen=True)
class Comparison:
    """A difference the papers report: ``better`` is the method they found better than ``baseline``."""

    name: str
    better: tuple[str, str, str]  # framework, init, schedule
    baseline: tuple[str, str, str]
    metrics: tuple[str, ...]
    paper: str


def comparisons() -> list[Comparison]:
    """The papers' questions: joint vs Y-Net (each init), LiTS vs scratch (each framework), each
    fine-tuning schedule vs no freezing (joint from LiTS)."""
    out = [Comparison("joint vs Y-Net", ("joint", i, NO_FREEZING), ("ynet", i, NO_FREEZING), ("cls_acc", "dice"),
                      "MIDL") for i in INITS]
    out += [Comparison("LiTS vs scratch", (f, "LiTS", NO_FREEZING), (f, SCRATCH, NO_FREEZING),
                       FRAMEWORKS[f].metrics[:2], "MIDL") for f in PAPER_FRAMEWORKS]
    out += [Comparison("fine-tuning vs no freezing", ("joint", "LiTS", s), ("joint", "LiTS", NO_FREEZING),
                       ("cls_acc", "dice"), "EMBC") for s in FINE_TUNING_SCHEDULES]
    return out
