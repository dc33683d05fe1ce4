"""The study's profiles: which folds, phantom, encoder and rows each runs, and how long each model trains.

A profile's budgets are our trainers' variables (``nnUNet_joint_epochs``, ``nnUNet_joint_iterations``,
...; :mod:`nnunet_joint.training.settings`); ``--nnunet-length`` replaces them all with nnU-Net's
standard length (:func:`with_nnunet_length`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from nnunet_joint.names import (
    FREEZE_ENCODER,
    HIERARCHICAL_FREEZING,
    HIERARCHICAL_UNFREEZING,
    PLAIN_TRAINER,
    trainer_name,
)


@dataclass(frozen=True)
class Profile:
    """What a profile runs, and how long each training is (our budget variables; {} = nnU-Net's length)."""

    name: str
    folds: tuple[int, ...]
    phantom_size: str
    encoder: str  # the SE-ResNet preset of our rows and the LiTS pretraining
    budget: dict[str, str]  # every Sheba row, plain nnU-Net included: one budget for all
    stage1_budget: dict[str, str]  # stage 1 (liver) on the LiTS volumes
    lits_budget: dict[str, str]  # the LiTS lesion model (pretraining)
    lits_fold: str  # fold of the LiTS lesion model our LiTS init loads
    max_lits_cases: int | None
    rows: tuple[str, ...] | None  # trainers (every dataset) or TRAINER@DatasetXXX_Name to run (None = all)
    jobs: int = 1  # trainings at a time
    #: seconds per step kind measured on the 2-core development machine with --device cpu, nothing else
    #: running: the progress line's estimate before this machine has timed a step of a kind
    cpu_step_costs: Mapping[str, float] = field(default_factory=dict)


def _budget(epochs: int, iterations: int, max_batch_size: int | None = None, val_mirroring: bool = True
            ) -> dict[str, str]:
    budget = {"nnUNet_joint_epochs": str(epochs), "nnUNet_joint_iterations": str(iterations)}
    if max_batch_size is not None:
        budget["nnUNet_joint_max_batch_size"] = str(max_batch_size)
    if not val_mirroring:
        budget["nnUNet_joint_val_mirroring"] = "0"
    return budget


#: Stage 1's batch on the CPU profiles. nnU-Net plans the batch for a GPU's memory, capped at 5 % of
#: the dataset: 64 slices of 128 x 128 for the small phantom's 48 LiTS-like volumes. On 2 CPU cores
#: one such step of nnU-Net's U-Net costs about 6-10 s, so the 100 iterations that reach a liver
#: pseudo-Dice of 0.9 (measured when the phantom's 8 volumes planned a batch of about 10) would take
#: most of an hour; 12 keeps stage 1 a few minutes, as measured. The full profile (a GPU) keeps
#: nnU-Net's batch. Its final validation also predicts without test-time mirroring there: with it,
#: the 10 validation volumes took 14 min of the demo on 2 cores (sharing them with the LiTS model's
#: training), 4 forward passes per tile; the rows' validations (30 slices) keep nnU-Net's mirroring.
CPU_STAGE1_BATCH = 12
CPU_STAGE1 = _budget(4, 25, CPU_STAGE1_BATCH, val_mirroring=False)
#: The demo's stage 1: 50 iterations at a batch of 8. Stage 1 lies on the demo's critical path (data, stage 1,
#: crops, rows); its pseudo-Dice on the small phantom (study profile, fold 0, batch 12) by iterations was 0.75
#: at 25, 0.84 at 50, 0.85 at 75 and 0.86 at 100 (final validation Dice 0.87, liver Dice on the Sheba slices
#: it crops median 0.92, every lesion inside its crop): past 50 iterations the curve is flat. At a batch of 8
#: (two demo runs, docs/measured_figures.md) its validation Dice was 0.82-0.83 and the liver Dice on the 90
#: Sheba slices median 0.89 (minimum 0.68-0.71), every lesion pixel inside its crop, as at 12; the step took
#: 3.2-4.3 min instead of 4.4. Stage 1 only places the crop, with a margin. The study keeps 100 at 12.
DEMO_STAGE1 = _budget(2, 25, 8, val_mirroring=False)


#: The LiTS lesion models' batch on the CPU profiles (ours and plain nnU-Net's alike). nnU-Net plans 45
#: patches of 64² for the small phantom's LiTS crops (a GPU's batch, capped at 5 % of the dataset): about 2 s a step on one CPU core,
#: so its 600 iterations were the demo's critical path (17 of 22.5 min). At a batch of 12 its validation
#: lesion Dice reached 0.82 at 300 iterations and flattened at about 0.85 from 450 on (0.90 at 1,500;
#: docs/model_diagnosis.md), above the 0.75 the batch of 45 reached in 600: the demo trains it 600
#: iterations, the study 900. 450 were tried for the demo: its lesion Dice was 0.691 and still rising at the
#: end (docs/measured_figures.md), below the 0.7 with a flattened curve the demo must show; 600 gave 0.722,
#: flattened. The full profile (a GPU) keeps nnU-Net's batch.
CPU_LITS_BATCH = 12


#: The demo's steps on the 2-core development machine, idle (docs/measured_figures.md): what the first
#: progress line estimates from before this machine has timed any step.
DEMO_CPU_STEP_COSTS = {"data preparation": 15.0, "preprocessing": 40.0, "stage 1": 110.0, "stage 1 validation": 85.0,
                       "LiTS pretraining": 280.0, "LiTS pretraining validation": 60.0, "crops (cascade)": 55.0,
                       "row training (joint)": 250.0, "report": 10.0}
#: The study's rows: the papers' questions (MIDL: 4 frameworks from scratch and from LiTS; EMBC: the
#: joint model from LiTS with each fine-tuning schedule) and plain nnU-Net on both Sheba datasets.
STUDY_ROWS = (
    *(trainer_name(framework, init) for framework in ("cls", "seg", "ynet", "joint") for init in ("scratch", "LiTS")),
    *(trainer_name("joint", "LiTS", schedule) for schedule in (FREEZE_ENCODER, HIERARCHICAL_FREEZING,
                                                               HIERARCHICAL_UNFREEZING)),
    PLAIN_TRAINER, trainer_name("nnunet", "LiTS"))

#: Budgets, chosen from measured learning curves (docs/measured_figures.md): on the small phantom
#: (fold 0, 60 training slices, batch 6 of 64 x 64) the joint model's validation type accuracy was
#: still at chance after 600 iterations and flattened after about 1,500 (full-slice type accuracy
#: 0.43 at 600, 0.77 at 1,800 iterations); stage 1 reaches a liver pseudo-Dice of 0.9 in about 100.
PROFILES = {
    # The README's main command: about 10 minutes on 2 idle CPU cores (10.1 measured; 12.1 before 501 and 502
    # were preprocessed side by side, 12.0 and 13.0 before the pretrainings were validated beside the rows, 14.8
    # with the rows at 1,200 iterations and stage 1 at a batch of 12, 22.5 before the LiTS model's CPU batch;
    # docs/measured_figures.md). The small phantom, fold 0, the papers' central comparison
    # (joint from scratch and from LiTS), two trainings at a time. The rows train 1,000 iterations (the
    # study 1,500): their type accuracy in the demo runs was 0.55-0.65 at 1,000 and 0.61-0.68 at 1,200.
    "demo": Profile("demo", (0,), "small", "seresnet18", _budget(40, 25), DEMO_STAGE1,
                    _budget(20, 30, CPU_LITS_BATCH), "0", None,
                    (trainer_name("joint"), trainer_name("joint", "LiTS")), jobs=2,
                    cpu_step_costs=DEMO_CPU_STEP_COSTS),
    # Every row that answers the papers' questions, 3 folds, at the budget where the curves flatten, on the
    # papers' target (332 slices of 140 patients) at 128²: about 4.6 h on 2 idle CPU cores as measured, 5-20 min
    # per training two at a time (docs/measured_figures.md; the small phantom's study took about 3.8 h). On this
    # target nnU-Net's plans give the rows batches of 13-15 instead of 3-4 and each validation predicts 111
    # slices instead of 30: that, not the 5 min of data preparation, is the difference.
    "study": Profile("study", (0, 1, 2), "paper", "seresnet18", _budget(50, 30), CPU_STAGE1,
                     _budget(30, 30, CPU_LITS_BATCH), "0", None, STUDY_ROWS, jobs=2),
    # The papers' protocol on the default phantom, every row, 3 folds, SE-ResNet-50: the small phantom's
    # converging length scaled to the default phantom's 3.7 times more training slices, with margin
    # (docs/measured_figures.md); --nnunet-length trains nnU-Net's standard 1000 x 250 instead.
    "full": Profile("full", (0, 1, 2), "default", "seresnet50", _budget(40, 100), _budget(20, 100), _budget(40, 100),
                    "all", None, None),
    # For tests: the tiny phantom and a minimal budget.
    "tiny": Profile("tiny", (0,), "tiny", "seresnet18", _budget(1, 2), _budget(1, 2), _budget(1, 2), "0", None,
                    (*(trainer_name(framework, "LiTS") for framework in ("cls", "seg", "ynet", "joint")),
                     PLAIN_TRAINER)),
}
NNUNET_LENGTH = {}  # nnU-Net's standard length: no budget variables at all


#: Appended to a profile's name when ``--nnunet-length`` replaces its budgets.
NNUNET_LENGTH_SUFFIX = "-nnunet-length"


def with_nnunet_length(profile: Profile) -> Profile:
    """The profile with nnU-Net's standard training length for every model."""
    return dataclasses.replace(profile, name=profile.name + NNUNET_LENGTH_SUFFIX, budget=NNUNET_LENGTH,
                               stage1_budget=NNUNET_LENGTH, lits_budget=NNUNET_LENGTH, cpu_step_costs={})


