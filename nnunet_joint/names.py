"""Every name the project writes or reads, defined once: datasets, frameworks, initialisations,
fine-tuning schedules, trainer and plans names, results folders, record files, the crop margin and
the 2-D spacing of single-slice crops.

This module imports nothing heavier than the standard library (no torch), so converters, the
report and the tests can use it cheaply. ``tests/test_names.py`` fails if a dataset folder name, the
``__2d`` results-folder rule or a schedule name is written as a literal anywhere else.
:mod:`nnunet_joint.study.matrix` builds the study's matrix from these words; the freezing tables of the
schedules are data in :mod:`nnunet_joint.freezing`.

==========  ==========================  ===============================  =======================
framework   row name (the papers')      trainer base                     dataset
==========  ==========================  ===============================  =======================
cls         classification baseline     nnUNetTrainerSEResNetCls         Dataset503_ShebaSeg
seg         segmentation baseline       nnUNetTrainerSEResNetSeg         Dataset503_ShebaSeg
ynet        Y-Net                       nnUNetTrainerYNet                Dataset503_ShebaSeg
joint       joint                       nnUNetTrainerJoint               Dataset504_ShebaJoint
nnunet      plain nnU-Net               nnUNetTrainer_JointBudget        503 and 504
==========  ==========================  ===============================  =======================

Initialisations ``scratch | ImageNet | LiTS`` and fine-tuning schedules ``NoFreeze | FreezeEnc |
HierFreeze | HierUnfreeze`` are part of the trainer's name: ``<base>``, ``<base>_<Init>``,
``<base>_<Init>_<Schedule>`` (single underscores: nnU-Net splits results folder names on ``__``).
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------------------- datasets

#: Dataset ids by role: LiTS whole volumes (stage 1, liver), LiTS liver slices (the lesion model
#: that is pretrained), Sheba slices with one lesion label (cls, seg, Y-Net), Sheba slices with a
#: label per lesion type (joint).
DATASET_IDS: dict[str, int] = {"liver": 501, "lits_lesion": 502, "seg": 503, "joint": 504}
LIVER_DATASET = DATASET_IDS["liver"]
LITS_LESION_DATASET = DATASET_IDS["lits_lesion"]
SEG_DATASET = DATASET_IDS["seg"]
JOINT_DATASET = DATASET_IDS["joint"]
#: The ``Name`` of our ``DatasetXXX_Name`` folders (the converters' defaults).
DATASET_NAMES: dict[int, str] = {LIVER_DATASET: "LiTSLiver", LITS_LESION_DATASET: "LiTSLesion",
                                 SEG_DATASET: "ShebaSeg", JOINT_DATASET: "ShebaJoint"}


def dataset_folder(dataset_id: int, name: str) -> str:
    """nnU-Net's dataset folder name ``DatasetXXX_Name`` (three-digit id)."""
    return f"Dataset{int(dataset_id):03d}_{name}"


#: nnU-Net's folder names of our datasets, e.g. ``Dataset504_ShebaJoint``.
DATASET_FOLDERS: dict[int, str] = {i: dataset_folder(i, name) for i, name in DATASET_NAMES.items()}


# ----------------------------------------------------------------------------- frameworks, inits, schedules

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
    Framework("cls", "classification baseline", "nnUNetTrainerSEResNetCls", ("cls_acc",), (SEG_DATASET,)),
    Framework("seg", "segmentation baseline", "nnUNetTrainerSEResNetSeg", ("dice", "recall"), (SEG_DATASET,)),
    Framework("ynet", "Y-Net", "nnUNetTrainerYNet", ("cls_acc", "dice", "recall"), (SEG_DATASET,)),
    Framework("joint", "joint", "nnUNetTrainerJoint", ("cls_acc", "dice", "recall"), (JOINT_DATASET,)),
    Framework("nnunet", "plain nnU-Net", "nnUNetTrainer_JointBudget", ("cls_acc", "dice", "recall"),
              (SEG_DATASET, JOINT_DATASET)),
)}
#: The papers' four frameworks, in their row order.
PAPER_FRAMEWORKS: tuple[str, ...] = ("cls", "seg", "ynet", "joint")
#: The frameworks whose network types the slice with a classification head (the joint model types by pixel)
HEAD_FRAMEWORKS: tuple[str, ...] = ("cls", "ynet")

SCRATCH = "scratch"
#: Weight initialisations, in the papers' column order.
INITS: tuple[str, ...] = (SCRATCH, "ImageNet", "LiTS")
PRETRAINED_INITS: tuple[str, ...] = ("ImageNet", "LiTS")
#: Plain nnU-Net's: its own U-Net has no ImageNet weights (``nnUNetTrainer_JointBudget_LiTS``).
PLAIN_INITS: tuple[str, ...] = (SCRATCH, "LiTS")

NO_FREEZING = "NoFreeze"
FREEZE_ENCODER = "FreezeEnc"
HIERARCHICAL_FREEZING = "HierFreeze"
HIERARCHICAL_UNFREEZING = "HierUnfreeze"
#: Fine-tuning schedules, no freezing first (the EMBC paper's rows); their tables: :mod:`nnunet_joint.freezing`.
SCHEDULE_NAMES: tuple[str, ...] = (NO_FREEZING, FREEZE_ENCODER, HIERARCHICAL_FREEZING, HIERARCHICAL_UNFREEZING)
FINE_TUNING_SCHEDULES: tuple[str, ...] = SCHEDULE_NAMES[1:]

# ----------------------------------------------------------------------------- trainers and plans

#: nnU-Net's default plans: stage 1 and the plain nnU-Net rows.
DEFAULT_PLANS = "nnUNetPlans"
#: A faster stage 1 (chosen by the user, not the default): nnU-Net's default plans with every target
#: spacing at least :data:`COARSE_SPACING_MM` (the liver needs no sub-millimetre pixels;
#: TotalSegmentator's fast models run at 3 mm). Planner ``nnUNetPlannerCoarse``
#: (:mod:`nnunet_joint.planning`).
COARSE_PLANS = "nnUNetPlansCoarse"
COARSE_SPACING_MM = 3.0
#: Stage 1 of the cascade and the plain rows: nnUNetTrainer, length from our budget variables.
PLAIN_TRAINER = FRAMEWORKS["nnunet"].trainer_base
#: nnU-Net's own trainer (a stage-1 model a user trained with plain ``nnUNetv2_train``).
NNUNET_TRAINER = "nnUNetTrainer"
#: The LiTS lesion model (pretraining): the segmentation baseline's trainer on Dataset502.
LITS_TRAINER = FRAMEWORKS["seg"].trainer_base


def trainer_name(framework: str, init: str = SCRATCH, schedule: str = NO_FREEZING) -> str:
    """``nnUNetTrainerJoint_LiTS_HierFreeze`` from ``("joint", "LiTS", "HierFreeze")``."""
    if framework not in FRAMEWORKS or init not in INITS or schedule not in SCHEDULE_NAMES:
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


def parse_trainer_name(name: str) -> tuple[str, str, str]:
    """``(framework, init, schedule)`` of one of our trainer names: the inverse of :func:`trainer_name`.

    Raises:
        ValueError: a name :func:`trainer_name` does not build.
    """
    for framework in FRAMEWORKS:
        for init in INITS:
            for schedule in SCHEDULE_NAMES:
                try:
                    if trainer_name(framework, init, schedule) == name:
                        return framework, init, schedule
                except ValueError:
                    continue
    raise ValueError(f"not one of our trainer names: {name!r}")


def variant_names(base_name: str) -> list[str]:
    """The pretrained variants of a framework's trainer base: ``<base>_<Init>`` and ``<base>_<Init>_<Schedule>``."""
    (framework,) = [key for key, f in FRAMEWORKS.items() if f.trainer_base == base_name]
    return [trainer_name(framework, init, schedule) for init in PRETRAINED_INITS for schedule in SCHEDULE_NAMES]


# ----------------------------------------------------------------------------- results folders and records

#: The one nnU-Net configuration the project trains: every case is a 2-D slice.
CONFIGURATION = "2d"
#: nnU-Net's separator in results folder names (which is why our names use single underscores).
_FOLDER_SEPARATOR = "__"


def results_folder_name(trainer: str, plans: str, configuration: str = CONFIGURATION) -> str:
    """nnU-Net's results folder name ``<trainer>__<plans>__<configuration>``."""
    return _FOLDER_SEPARATOR.join((trainer, plans, configuration))


def results_folder_pattern(trainer: str = "*", plans: str = "*", configuration: str = CONFIGURATION) -> str:
    """A glob for results folders, e.g. ``nnUNetTrainerJoint*__*__2d``."""
    return results_folder_name(trainer, plans, configuration)


def parse_results_folder_name(name: str) -> tuple[str, str, str] | None:
    """``(trainer, plans, configuration)`` of a results folder name; ``None`` when it is not one."""
    parts = name.split(_FOLDER_SEPARATOR)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


#: Per-case type probabilities and predicted type of a classifier / Y-Net, ``fold_N/validation/``.
CLASSIFICATION_FILE = "classification.json"
#: How our trainers were configured (budget, architecture, init, schedule), ``fold_N/``.
JOINT_CONFIG_FILE = "joint_config.json"
#: Validation lesion Dice and type accuracy per epoch, ``fold_N/``.
LEARNING_CURVE_FILE = "learning_curve.json"
#: The evaluation's and the report's numbers as data.
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"

# ----------------------------------------------------------------------------- crops

#: Context kept around the liver bounding box of a stage-1 crop (converters and prediction).
CROP_MARGIN_MM = 10.0
#: Out-of-plane spacing of single-slice (2-D) crops, in mm, in the converted datasets and in
#: prediction alike. nnU-Net puts the axis of largest spacing first and trains its 2d configuration on
#: the other two (it never resamples that axis); a slice thinner than its pixel size (0.6 mm slices
#: at 0.8 mm pixels, or the tiny phantom) would otherwise be cut along the wrong axis. The crop box
#: keeps the true geometry for mapping predictions back.
SLICE_AXIS_SPACING_2D = 999.0


def slice_spacing_zyx(pixel_spacing_yx: tuple[float, float]) -> tuple[float, float, float]:
    """The spacing nnU-Net is given for a 1 x H x W crop with in-plane spacing ``pixel_spacing_yx``."""
    return (SLICE_AXIS_SPACING_2D, float(pixel_spacing_yx[0]), float(pixel_spacing_yx[1]))
