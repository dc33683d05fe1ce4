"""One nnU-Net training of the study: the :class:`Training` record (what runs where) and
:func:`train_fold`, which runs it, resuming a fold a killed run left behind.

A fold is done when its validation finished and its final checkpoint loads with the safe loader
(:func:`fold_done`): that is what a rerun skips. A pretraining trains and validates in two steps: the
trainings that start from its checkpoint need only :func:`fold_trained`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_joint.errors import InputError, warn
from nnunet_joint.names import CLASSIFICATION_FILE, DATASET_FOLDERS, DEFAULT_PLANS, results_folder_name
from nnunet_joint.study.folder import RunFolder, nnunet_bin, run_nnunet
from nnunet_joint.training.settings import ENV_FINAL_VALIDATION


def checkpoint_problem(path: Path) -> str | None:
    """``None`` when ``path`` loads with the safe loader, else why not (missing, truncated, refused)."""
    from nnunet_joint.checkpoints import safe_torch_load

    try:
        safe_torch_load(path)
    except InputError as e:
        return e.problem
    except Exception as e:  # noqa: BLE001 - a cut-short pickle fails inside torch's weights-only unpickler
        return f"not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})"
    return None


def fold_trained(fold_dir: Path) -> bool:
    """A trained fold: nnU-Net's final checkpoint is readable (a half-written one, from a killed run, is
    not); its final validation may still be to run."""
    return checkpoint_problem(fold_dir / "checkpoint_final.pth") is None


def fold_done(fold_dir: Path) -> bool:
    """A finished fold: trained (:func:`fold_trained`) and its final validation finished."""
    validation = fold_dir / "validation"
    return ((validation / "summary.json").is_file() or (validation / CLASSIFICATION_FILE).is_file()) and (
        fold_trained(fold_dir))


def trainer_dir(run: RunFolder, trainer: str, dataset: int, plans: str) -> Path:
    """nnU-Net's results folder ``<Dataset>/<trainer>__<plans>__2d``."""
    return run.results / DATASET_FOLDERS[dataset] / results_folder_name(trainer, plans)


def train_fold(run: RunFolder, trainer: str, dataset: int, fold: str, device: str, budget: dict[str, str],
               extra_env: dict[str, str], plans: str = DEFAULT_PLANS, npz: bool = False, validate: bool = True
               ) -> Path:
    """``nnUNetv2_train DATASET 2d FOLD -tr TRAINER -p PLANS -device DEVICE [--npz]``, skipped when done.

    ``validate=False`` trains only (``nnUNet_joint_final_validation=0``: done once the final checkpoint is
    saved, :func:`fold_trained`); a later call with ``validate=True`` then runs only the validation
    (``--val``), as for a fold whose validation a kill interrupted.

    A fold a killed run left behind resumes: with ``checkpoint_final.pth`` only its validation runs
    again (``--val``); with only ``checkpoint_latest.pth`` (saved every tenth of a budgeted run,
    :meth:`~nnunet_joint.training.settings.Budget.apply`) nnU-Net continues from that epoch (``--c``).
    A checkpoint the safe loader refuses (cut short by the kill, or unsafe) is set aside as evidence
    and the fold trains from scratch.

    ``npz`` exports the validation probabilities (nnU-Net's ``--npz``): plain nnU-Net on the joint
    dataset needs them for the same no-lesion fallback of the type vote as our joint trainer.
    """
    fold_dir = trainer_dir(run, trainer, dataset, plans) / f"fold_{fold}"
    cmd = [nnunet_bin("nnUNetv2_train"), str(dataset), "2d", fold, "-tr", trainer, "-p", plans, "-device", device]
    if npz:
        cmd.append("--npz")
    if (fold_done if validate else fold_trained)(fold_dir):
        return fold_dir
    from nnunet_joint.checkpoints import set_aside_refused_checkpoint

    if not validate and (fold_dir / "validation").is_dir():  # of a checkpoint this call replaces
        shutil.rmtree(fold_dir / "validation")
    for checkpoint, resume in ((fold_dir / "checkpoint_final.pth", "--val"),  # trained, validation interrupted
                               (fold_dir / "checkpoint_latest.pth", "--c")):  # killed during training
        if not checkpoint.is_file():
            continue
        refused = set_aside_refused_checkpoint(checkpoint, run.root)
        if refused is None:
            cmd.append(resume)
            break
        # half-written (killed while saving) or refused: kept as evidence
        warn(checkpoint, f"{refused[1]}; kept as {refused[0]}; retraining fold {fold} of {trainer} from scratch")
        break
    run_nnunet(cmd, run, run.logs / f"{trainer}_{dataset}_fold{fold}.log",
               **{**cpu_augmentation(device), **budget, **extra_env, ENV_FINAL_VALIDATION: "1" if validate else "0"})
    return fold_dir


#: nnU-Net's data-augmentation processes per training on the CPU (``nnUNet_n_proc_DA``), unless the
#: user set it: none, the augmentation runs in the training process. On the 2-core development machine,
#: two trainings side by side (the demo's and the study's two jobs), an iteration of the LiTS model (batch
#: 12 of 64²) took 538 ms with one augmentation process each and 460 ms without, a joint row's (batch 3) 265
#: and 200 ms (``benchmarks/bench_augmentation_processes.py``; docs/measured_figures.md). The CPU is the budget there:
#: a worker process only adds a process competing for the cores the trainings already fill. On another
#: device the run folder's environment gives one worker (:meth:`RunFolder.environment`), as before.
CPU_DA_PROCESSES = "0"


def cpu_augmentation(device: str) -> dict[str, str]:
    """``nnUNet_n_proc_DA`` for a training on ``device`` (see :data:`CPU_DA_PROCESSES`)."""
    if device == "cpu" and "nnUNet_n_proc_DA" not in os.environ:
        return {"nnUNet_n_proc_DA": CPU_DA_PROCESSES}
    return {}


@dataclass
class Training:
    """One fold to train: what it runs and where; ``train_fold``'s arguments."""

    what: str
    trainer: str
    dataset: int
    fold: str
    budget: dict[str, str]
    plans: str = DEFAULT_PLANS
    env: dict[str, str] = field(default_factory=dict)
    npz: bool = False

    def fold_dir(self, run: RunFolder) -> Path:
        return trainer_dir(run, self.trainer, self.dataset, self.plans) / f"fold_{self.fold}"

    def command(self, device: str) -> str:
        """The ``nnUNetv2_train`` call as a user would type it (budget variables first), for the report."""
        variables = [f"{k}={v}" for k, v in self.budget.items()]
        return " ".join([*variables, "nnUNetv2_train", str(self.dataset), "2d", self.fold, "-tr", self.trainer,
                         "-p", self.plans, "-device", device, *(["--npz"] if self.npz else [])])

    def iterations(self) -> int:
        """Iterations planned: the budget's epochs x iterations, else nnU-Net's 1000 x 250."""
        return int(self.budget.get("nnUNet_joint_epochs", 1000)) * int(self.budget.get("nnUNet_joint_iterations", 250))


