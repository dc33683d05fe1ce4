"""``nnunet_joint_reproduce``: the whole pipeline in one self-contained run folder.

``DIR/phantom/`` (when no raw data is given) → LiTS datasets 501/502 (``DIR/nnUNet_raw``,
planned and preprocessed into ``DIR/nnUNet_preprocessed``) → stage 1 (plain nnU-Net, liver, on
501) → the Sheba slices cropped by stage 1 (the cascade; ``--oracle-crops`` for reference-mask
crops) into 503/504, planned, with 502's SE-ResNet plans carried over → the LiTS lesion model
(502) → the experiment matrix (``DIR/nnUNet_results``) → ``DIR/report/``. nnU-Net's three
variables point at the run folder for every step, so with the same variables set a user's
``nnunet_joint_predict`` finds the models.

The pipeline is described once as steps (:meth:`Study.steps`, :mod:`nnunet_joint.study`): the
local run performs them here, ``--scheduler slurm`` submits one job per step (:mod:`nnunet_joint.slurm`),
and ``--write-jobs`` lists them for any other scheduler.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from nnunet_joint import TRAINERS_DIR
from nnunet_joint.cpu import WAIT_POLICY, cpu_threads, passive_openmp
from nnunet_joint.errors import InputError, cli_entry, warn
from nnunet_joint.experiments import Experiment, central_comparison, experiment_matrix
from nnunet_joint.names import (
    CLASSIFICATION_FILE,
    DATASET_FOLDERS,
    DATASET_IDS,
    DEFAULT_PLANS,
    FREEZE_ENCODER,
    HIERARCHICAL_FREEZING,
    HIERARCHICAL_UNFREEZING,
    JOINT_DATASET,
    LITS_LESION_DATASET,
    LITS_TRAINER,
    LIVER_DATASET,
    PLAIN_TRAINER,
    SCRATCH,
    SEG_DATASET,
    results_folder_name,
    trainer_name,
)
from nnunet_joint.io import file_sha256
from nnunet_joint.process import lock_folder, run_tied
from nnunet_joint.study import Progress, Step, StepCosts, run_local
from nnunet_joint.training.curves import LEARNING_CURVE_FILE
from nnunet_joint.training.settings import ENV_SEED

#: The experiment vocabulary (nnunet_joint.names), re-exported for callers of this module.
__all__ = ["DATASET_FOLDERS", "DATASET_IDS", "DEFAULT_PLANS", "PLAIN_TRAINER", "PROFILES", "RunFolder", "reproduce"]


@dataclass
class RunFolder:
    """The layout of one reproduce run."""

    root: Path
    #: ``--repeats``: repeat r > 0 of the repeated rows trains into ``repeats/repeat_<r>/nnUNet_results``
    #: (nnU-Net's layout below it) and logs into ``logs/repeat_<r>``; data and pretraining are shared.
    repeat: int = 0

    def repeated(self, repeat: int) -> "RunFolder":
        return dataclasses.replace(self, repeat=repeat)

    @property
    def logs(self) -> Path:
        return self.root / "logs" / (f"repeat_{self.repeat}" if self.repeat else "")

    @property
    def phantom(self) -> Path:
        return self.root / "phantom"

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        if self.repeat:
            return self.root / "repeats" / f"repeat_{self.repeat}" / "nnUNet_results"
        return self.root / "nnUNet_results"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @contextlib.contextmanager
    def nnunet_environment(self) -> Iterator[None]:
        """This run's nnU-Net variables in ``os.environ`` while nnU-Net code runs in this process.

        nnU-Net 2.8 reads them at use time (``nnunetv2.paths``); the previous values come back after.
        """
        wanted = {k: v for k, v in self.environment().items() if k.startswith("nnUNet_")}
        saved = {k: os.environ.get(k) for k in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def environment(self, **extra: str) -> dict[str, str]:
        """The environment every nnU-Net step of this run gets."""
        env = dict(os.environ)
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results), nnUNet_extTrainer=str(TRAINERS_DIR))
        env.setdefault("nnUNet_n_proc_DA", "1")
        env.setdefault("nnUNet_def_n_proc", "1")
        env.setdefault(WAIT_POLICY, "PASSIVE")  # idle OpenMP threads sleep: see nnunet_joint.cpu
        env.update(extra)
        return env


def run_nnunet(cmd: list[str], run: RunFolder, log: Path, **extra_env: str) -> None:
    """Run an nnU-Net command line with the run folder's environment; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        # run_tied: the command and its workers die with this process (kill -9 included)
        returncode = run_tied(cmd, env=run.environment(**extra_env), stdout=fh, stderr=subprocess.STDOUT)
    if returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:2])} failed (exit {returncode}); see {log}:\n" + "\n".join(tail))


def nnunet_bin(name: str) -> str:
    """Path of an nnU-Net console script installed beside this interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _marker(run: RunFolder, name: str) -> Path:
    return run.root / "logs" / f"{name}.done"


def _mark(run: RunFolder, name: str, content: dict) -> None:
    marker = _marker(run, name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(content) + "\n", encoding="utf-8")


def _marked(run: RunFolder, name: str, expected: dict) -> bool:
    """Whether a step is done; done with other settings is an error (a run folder holds one study)."""
    marker = _marker(run, name)
    if not marker.is_file():
        return False
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        found = {}
    for key, value in expected.items():
        if found.get(key) != value:
            raise InputError(run.root, f"was prepared with {key} {found.get(key)!r}, not {value!r}: use another --out")
    return True


def sources_settings(phantom: dict | None, encoder: str) -> dict:
    """What the LiTS datasets were made with (the ``sources`` marker; a run folder holds one study)."""
    return {"encoder": encoder, "phantom": phantom}


def prepare_sources(run: RunFolder, lits_dir: Path, sheba_dir: Path, phantom: dict | None,
                    max_lits_cases: int | None = None, encoder: str = "seresnet18") -> None:
    """Phantom (``phantom``: its size and seed; ``None`` for given raw folders) → the LiTS datasets
    501/502, planned and preprocessed.

    501 (whole volumes, stage 1) gets nnU-Net's default plans; 502 (the LiTS lesion model's
    slices) the SE-ResNet preset of ``encoder``, which :func:`prepare_targets` later carries to the
    Sheba datasets.
    """
    from nnunet_joint.dataset_conversion.convert_lits import convert_lits
    from nnunet_joint.phantom import generate_corpus
    from nnunet_joint.planning import plan_and_preprocess, planner_of

    if phantom is not None and not (run.phantom / "Sheba" / "cases.csv").is_file():
        generate_corpus(run.phantom, seed=phantom["seed"], size=phantom["size"])
    convert_lits(lits_dir, raw_root=run.raw, overwrite=True, max_cases=max_lits_cases,
                 preprocessed_root=run.preprocessed)
    with run.nnunet_environment():
        plan_and_preprocess([DATASET_IDS["liver"]], "ExperimentPlanner", verify_dataset_integrity=True)
        plan_and_preprocess([DATASET_IDS["lits_lesion"]], planner_of(encoder), verify_dataset_integrity=True)
        plan_and_preprocess([DATASET_IDS["lits_lesion"]], "ExperimentPlanner")  # plain nnU-Net's, carried to 503/504
    _mark(run, "sources", sources_settings(phantom, encoder))


def targets_settings(liver_model: Path | None, encoder: str) -> dict:
    """What the Sheba datasets were made with (the ``targets`` marker)."""
    return {"crop_mode": "oracle" if liver_model is None else "cascade", "encoder": encoder}


def prepare_targets(run: RunFolder, sheba_dir: Path, encoder: str = "seresnet18", liver_model: Path | None = None
                    ) -> None:
    """The Sheba datasets 503/504: crops by the stage-1 ``liver_model`` (the cascade) or, without one, by the
    reference masks (oracle crops); both plans carried over from LiTS (502): nnU-Net's default plans (plain
    rows, from scratch and from LiTS alike) and the SE-ResNet preset's (our rows)."""
    from nnunet_joint.dataset_conversion.convert_sheba import convert_sheba
    from nnunet_joint.planning import plans_name_of, transfer_plans

    convert_sheba(sheba_dir, raw_root=run.raw, preprocessed_root=run.preprocessed, overwrite=True,
                  liver_model=liver_model, liver_folds=None if liver_model is None else [0])
    with run.nnunet_environment():
        for plans in (DEFAULT_PLANS, plans_name_of(encoder)):  # plain rows (scratch and LiTS alike) and ours
            transfer_plans(DATASET_IDS["lits_lesion"], [DATASET_IDS["seg"], DATASET_IDS["joint"]], plans,
                           verify_dataset_integrity=True)
    _mark(run, "targets", targets_settings(liver_model, encoder))


def prepare_data(run: RunFolder, phantom_size: str, seed: int, max_lits_cases: int | None = None,
                 encoder: str = "seresnet18") -> None:
    """The phantom and all four datasets without training anything, the Sheba ones on *oracle* crops.

    For tests and benchmarks that need data, not a study: :func:`reproduce` crops the Sheba slices
    with a trained stage-1 model instead, unless asked for oracle crops.
    """
    prepare_sources(run, run.phantom / "LiTS", run.phantom / "Sheba", {"size": phantom_size, "seed": seed},
                    max_lits_cases, encoder)
    prepare_targets(run, run.phantom / "Sheba", encoder)


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
    # The README's main command: about 75 minutes on the shared 2-core machine (measured, docs/measured_figures.md). The small phantom, fold 0, the
    # papers' central comparison (joint from scratch and from LiTS) at a budget where typing is
    # learned, two trainings at a time.
    "demo": Profile("demo", (0,), "small", "seresnet18", _budget(40, 30), CPU_STAGE1,
                    _budget(20, 30), "0", None,
                    (trainer_name("joint"), trainer_name("joint", "LiTS")), jobs=2),
    # Every row that answers the papers' questions, 3 folds, at the budget where the curves flatten
    # (measured: 4-9 min per training two at a time on 2 CPU cores, 3-4 h for the three folds).
    "study": Profile("study", (0, 1, 2), "small", "seresnet18", _budget(50, 30), CPU_STAGE1,
                     _budget(30, 30), "0", None, STUDY_ROWS, jobs=2),
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


def fold_done(fold_dir: Path) -> bool:
    """A finished fold: the validation finished and nnU-Net's final checkpoint is readable (a
    half-written one, from a killed run, is not finished)."""
    validation = fold_dir / "validation"
    return ((validation / "summary.json").is_file() or (validation / CLASSIFICATION_FILE).is_file()) and (
        checkpoint_problem(fold_dir / "checkpoint_final.pth") is None)


def trainer_dir(run: RunFolder, trainer: str, dataset: int, plans: str) -> Path:
    """nnU-Net's results folder ``<Dataset>/<trainer>__<plans>__2d``."""
    return run.results / DATASET_FOLDERS[dataset] / results_folder_name(trainer, plans)


def train_fold(run: RunFolder, trainer: str, dataset: int, fold: str, device: str, budget: dict[str, str],
               extra_env: dict[str, str], plans: str = DEFAULT_PLANS, npz: bool = False) -> Path:
    """``nnUNetv2_train DATASET 2d FOLD -tr TRAINER -p PLANS -device DEVICE [--npz]``, skipped when done.

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
    if fold_done(fold_dir):
        return fold_dir
    from nnunet_joint.checkpoints import set_aside_refused_checkpoint

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
    run_nnunet(cmd, run, run.logs / f"{trainer}_{dataset}_fold{fold}.log", **budget, **extra_env)
    return fold_dir


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


#: Appended to a profile's name when ``--nnunet-length`` replaces its budgets.
NNUNET_LENGTH_SUFFIX = "-nnunet-length"


def with_nnunet_length(profile: Profile) -> Profile:
    """The profile with nnU-Net's standard training length for every model."""
    return dataclasses.replace(profile, name=profile.name + NNUNET_LENGTH_SUFFIX, budget=NNUNET_LENGTH,
                               stage1_budget=NNUNET_LENGTH, lits_budget=NNUNET_LENGTH)


def priority_order(pretrainings: Sequence[Step], crops: Step,
                   rows: Sequence[tuple[Experiment, int, int, Step]], folds: Sequence[int]) -> list[Step]:
    """The study's steps (the data step and the report aside) in the order they start when several are
    ready, so that a run cut short still answers the papers' central question, fold by fold.

    The executor (and a scheduler's job list) starts ready steps in list order, so this order decides
    what a run stopped after a few hours holds: first stage 1, the SE-ResNet LiTS model and the crops
    (every row waits on them), then the central comparison (:func:`central_comparison`) on every fold,
    then its repeats fold by fold, then plain nnU-Net's LiTS pretraining, then the other rows fold by
    fold, so that one fold's table is complete before the next fold's rows start.

    Args:
        rows: ``(experiment, fold, repeat, step)`` of every row training (repeat 0: the main run),
            in the experiments' order, which is kept within a fold.
    """
    central = central_comparison()

    def rank(row: tuple[Experiment, int, int, Step]) -> tuple[int, ...]:
        exp, fold, repeat, _ = row
        if exp in central:
            return (0, repeat, folds.index(fold)) if repeat == 0 else (1, folds.index(fold), repeat)
        return (2, folds.index(fold))

    ordered = sorted(rows, key=rank)  # stable: the experiments' order within a fold
    central_first = [row[3] for row in ordered if rank(row)[0] < 2]
    the_rest = [row[3] for row in ordered if rank(row)[0] == 2]
    plain_lits = [s for s in pretrainings if s.id == "lits-plain"]
    return [*(s for s in pretrainings if s.id != "lits-plain"), crops, *central_first, *plain_lits, *the_rest]


def step_id(exp: Experiment, fold: int | str) -> str:
    """``Joint_LiTS-f0``: the trainer without nnU-Net's prefix (plain nnU-Net: ``nnUNet503``, from LiTS
    ``nnUNet504_LiTS``), and the fold."""
    if exp.framework == "nnunet":
        short = f"nnUNet{exp.dataset}" + ("" if exp.init == SCRATCH else f"_{exp.init}")
    else:
        short = exp.trainer.removeprefix("nnUNetTrainer")
    return f"{short}-f{fold}"


@dataclass
class Study:
    """One study in one run folder, described as steps (:mod:`nnunet_joint.study`).

    Data preparation → stage 1 and the LiTS pretraining → the Sheba crops (by stage 1, or oracle)
    → every row × fold → evaluation and report. Each step can be run here (:func:`run_local`), or
    on its own (``nnunet_joint_reproduce ... --step ID``, what a scheduler job runs).
    """

    run: RunFolder
    profile: Profile
    device: str = "cpu"
    imagenet_weights: Path | None = None
    lits_dir: Path | None = None
    sheba_dir: Path | None = None
    seed: int = 0
    folds: tuple[int, ...] = ()
    stop_after: str | None = None
    oracle_crops: bool = False
    jobs: int = 1
    #: trainings of the central comparison (:func:`~nnunet_joint.experiments.central_comparison`) per fold,
    #: the first being the main run's; repeat r > 0 sets ``nnUNet_joint_seed=r`` and trains into
    #: ``RunFolder.repeated(r)``, so that the report can set the comparison beside its run-to-run spread
    repeats: int = 1
    started: float = field(default_factory=time.time)
    #: why row steps failed in this process (for the report; a scheduler's report job finds unfinished folds)
    failures: dict[str, str] = field(default_factory=dict)
    #: what :meth:`report` wrote
    reported: dict = field(default_factory=dict)

    @property
    def own_data(self) -> bool:
        return self.lits_dir is None or self.sheba_dir is None

    @property
    def plans(self) -> str:
        from nnunet_joint.planning import plans_name_of

        return plans_name_of(self.profile.encoder)

    def cli(self) -> list[str]:
        """``nnunet_joint_reproduce`` options that describe this study (a step's job repeats them)."""
        base, length, _ = self.profile.name.partition(NNUNET_LENGTH_SUFFIX)
        args = ["--out", str(self.run.root), "--profile", base, "--device", self.device, "--seed", str(self.seed),
                "--folds", *map(str, self.folds)]
        if length:
            args.append("--nnunet-length")
        if not self.own_data:
            args += ["--lits", str(Path(self.lits_dir).resolve()), "--sheba", str(Path(self.sheba_dir).resolve())]
        if self.imagenet_weights is not None:
            args += ["--imagenet-weights", str(Path(self.imagenet_weights).resolve())]
        if self.oracle_crops:
            args.append("--oracle-crops")
        if self.stop_after:
            args += ["--stop-after", self.stop_after]
        if self.repeats > 1:
            args += ["--repeats", str(self.repeats)]
        return args

    def step_command(self, step: Step) -> list[str]:
        return [nnunet_bin("nnunet_joint_reproduce"), *self.cli(), "--step", step.id]

    # ------------------------------------------------------------------ the steps' work
    def sources(self) -> tuple[Path, Path]:
        if self.own_data:
            return self.run.phantom / "LiTS", self.run.phantom / "Sheba"
        return Path(self.lits_dir), Path(self.sheba_dir)

    def phantom(self) -> dict | None:
        return {"size": self.profile.phantom_size, "seed": self.seed} if self.own_data else None

    def stage1(self) -> Training:
        return Training(f"stage 1: {PLAIN_TRAINER} on {DATASET_FOLDERS[LIVER_DATASET]} fold 0", PLAIN_TRAINER,
                        LIVER_DATASET, "0", dict(self.profile.stage1_budget))

    def lits(self) -> Training:
        return Training(f"LiTS lesion pretraining: {LITS_TRAINER} on {DATASET_FOLDERS[LITS_LESION_DATASET]} fold "
                        f"{self.profile.lits_fold}", LITS_TRAINER, LITS_LESION_DATASET, self.profile.lits_fold,
                        dict(self.profile.lits_budget), self.plans)

    def selected(self) -> list[Experiment]:
        rows = self.profile.rows
        return [e for e in experiment_matrix() if rows is None or e.trainer in rows or e.name in rows]

    def runnable(self) -> list[Experiment]:
        return [e for e in self.selected() if e.init != "ImageNet" or self.imagenet_weights is not None]

    def plain_lits(self) -> Training:
        """nnU-Net's own U-Net pretrained on the LiTS lesion dataset: the init of plain nnU-Net from LiTS."""
        return Training(f"LiTS lesion pretraining: {PLAIN_TRAINER} on {DATASET_FOLDERS[LITS_LESION_DATASET]} fold "
                        f"{self.profile.lits_fold}", PLAIN_TRAINER, LITS_LESION_DATASET, self.profile.lits_fold,
                        dict(self.profile.lits_budget))

    def needs_plain_lits(self) -> bool:
        return any(e.framework == "nnunet" and e.init == "LiTS" for e in self.runnable())

    def pretraining_of(self, exp: Experiment) -> str | None:
        """The step whose checkpoint initialises ``exp`` (``None``: none of ours)."""
        if exp.init != "LiTS":
            return None
        return "lits-plain" if exp.framework == "nnunet" else "lits"

    def row_trainings(self) -> list[tuple[Experiment, int, Training]]:
        env = {"nnUNet_joint_lits_checkpoint": str(self.lits().fold_dir(self.run) / "checkpoint_final.pth")}
        if self.imagenet_weights is not None:
            env["nnUNet_joint_imagenet_weights"] = str(Path(self.imagenet_weights).resolve())
        plain_env = {**env, "nnUNet_joint_lits_checkpoint": str(self.plain_lits().fold_dir(self.run)
                                                                 / "checkpoint_final.pth")}
        return [(exp, fold, Training(f"{exp.trainer} on {DATASET_FOLDERS[exp.dataset]} fold {fold}", exp.trainer,
                                     exp.dataset, str(fold), dict(self.profile.budget), exp.plans(self.plans),
                                     plain_env if exp.framework == "nnunet" else env,
                                     npz=exp.framework == "nnunet" and exp.dataset == JOINT_DATASET))
                for exp in self.runnable() for fold in self.folds]

    def repeat_trainings(self) -> list[tuple[Experiment, int, int, Training]]:
        """``(experiment, fold, repeat, training)`` of repeats 1 .. ``repeats - 1`` of the central comparison's
        rows that this study runs (the main run is repeat 0); each repeat is seeded with its number."""
        central = central_comparison()
        return [(exp, fold, repeat, dataclasses.replace(t, env={**t.env, ENV_SEED: str(repeat)}))
                for repeat in range(1, self.repeats) for exp, fold, t in self.row_trainings() if exp in central]

    def threads_env(self) -> dict[str, str]:
        """With ``jobs > 1`` each training gets ``cpu_count // jobs`` torch threads (``nnUNet_joint_threads``),
        so that the processes share the machine instead of overbooking it, and the single-threaded parts of
        one (start-up, data loading, validation export) overlap the training of another."""
        return {"nnUNet_joint_threads": str(max(1, cpu_threads() // self.jobs))} if self.jobs > 1 else {}

    def train(self, t: Training, repeat: int = 0) -> None:
        train_fold(self.run.repeated(repeat), t.trainer, t.dataset, t.fold, self.device, t.budget,
                   {**t.env, **self.threads_env()}, t.plans, t.npz)

    def train_row(self, row: str, t: Training, repeat: int = 0) -> None:
        try:
            self.train(t, repeat)
        except Exception as e:
            self.failures[row] = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise

    def liver_model(self) -> Path | None:
        """The stage-1 results folder that crops the Sheba slices (``None``: oracle crops)."""
        return None if self.oracle_crops else trainer_dir(self.run, PLAIN_TRAINER, LIVER_DATASET, DEFAULT_PLANS)

    def stage1_sha256(self) -> str | None:
        checkpoint = self.stage1().fold_dir(self.run) / "checkpoint_final.pth"
        return file_sha256(checkpoint) if checkpoint.is_file() else None

    def crops_stage1(self) -> str | None:
        """The stage-1 checkpoint (by content) that cut the current crops, from ``crops.json``."""
        try:
            crops_file = self.run.raw / DATASET_FOLDERS[JOINT_DATASET] / "crops.json"
            crops = json.loads(crops_file.read_text(encoding="utf-8"))
            return (crops.get("stage1_checkpoint_sha256") or {}).get("fold_0")
        except (OSError, ValueError, AttributeError):
            return None

    def crops_current(self) -> bool:
        """The Sheba datasets exist with this study's settings and, in the cascade, were cut by the stage-1
        checkpoint there now (a retrained stage 1 means the crops must be made again)."""
        if not _marked(self.run, "targets", targets_settings(self.liver_model(), self.profile.encoder)):
            return False
        return self.oracle_crops or self.crops_stage1() == self.stage1_sha256()

    def make_crops(self) -> None:
        """Cut the Sheba slices; rows trained on crops of another stage 1 are moved aside first, so that
        nothing trained on the old crops is mixed with the new ones (they train again)."""
        if self.crops_current():  # only a step before it ran again, and stage 1 did not change
            return
        old = self.crops_stage1()
        if not self.oracle_crops and old is not None and old != self.stage1_sha256():
            aside = self.run.root / "replaced" / f"crops_of_stage1_{old[:12]}"
            for dataset in (SEG_DATASET, JOINT_DATASET):
                trained = self.run.results / DATASET_FOLDERS[dataset]
                if trained.exists():
                    aside.mkdir(parents=True, exist_ok=True)
                    os.replace(trained, aside / trained.name)
            warn(self.run.raw / DATASET_FOLDERS[JOINT_DATASET] / "crops.json",
                 f"cut by another stage-1 checkpoint (sha256 {old[:12]}...); cropping again with the current one"
                 + (f", the rows trained on the old crops moved to {aside}" if aside.exists() else ""))
        _marker(self.run, "targets").unlink(missing_ok=True)
        prepare_targets(self.run, self.sources()[1], self.profile.encoder, self.liver_model())

    def report(self) -> None:
        """Evaluate stage 1 and every row, and write ``DIR/report/`` (kept in :attr:`reported`)."""
        from nnunet_joint.evaluation.coverage import cascade_coverage
        from nnunet_joint.evaluation.report import build_report

        folds, profile = list(self.folds), self.profile
        liver_summary = evaluate_dir(self.stage1().fold_dir(self.run).parent, self.run, LIVER_DATASET, ["0"])
        trainings = self.row_trainings()
        experiments = []
        for exp in experiment_matrix():
            directory = trainer_dir(self.run, exp.trainer, exp.dataset, exp.plans(self.plans))
            entry = {**self.report_entry(exp, directory), "plans": exp.plans(self.plans),
                     "budget": {"epochs": int(profile.budget.get("nnUNet_joint_epochs", 0)) or "nnU-Net default",
                                "iterations": int(profile.budget.get("nnUNet_joint_iterations", 0))
                                or "nnU-Net default",
                                "encoder": profile.encoder if exp.framework != "nnunet" else "-"}}
            mine = [(fold, t) for e, fold, t in trainings if e == exp]
            failed = [self.failures.get(step_id(exp, fold)) or f"fold {fold} did not finish (see its log)"
                      for fold, t in mine
                      if self.failures.get(step_id(exp, fold)) or not fold_done(t.fold_dir(self.run))]
            if exp.init == "ImageNet" and self.imagenet_weights is None:
                entry["status"] = "not run: no ImageNet weights given"
            elif exp not in self.selected():
                entry["status"] = f"not run: not in the {profile.name} profile"
            elif failed:
                entry["status"] = "failed: " + failed[0]
            else:
                self.evaluate_entry(entry, exp)
            experiments.append(entry)
        joint = self.run.raw / DATASET_FOLDERS[JOINT_DATASET]
        commands = [" ".join(["nnunet_joint_reproduce", "--profile", profile.name, "--out", str(self.run.root)]
                             + (["--oracle-crops"] if self.oracle_crops else []))]
        commands += [t.command(self.device) for t in (self.stage1(), self.lits())
                     + ((self.plain_lits(),) if self.needs_plain_lits() else ())]
        commands += [t.command(self.device) for _, _, t in trainings]
        meta = {"profile": profile.name, "folds": folds, "commands": commands, "versions": versions(),
                "wall_time_s": time.time() - self.started, "raw_root": self.run.raw, "jobs": self.jobs,
                "images_dataset": DATASET_FOLDERS[JOINT_DATASET],
                "stage1": {"trainer": PLAIN_TRAINER, "summary": liver_summary},
                "cascade": cascade_coverage(
                    joint, self.run.preprocessed / DATASET_FOLDERS[JOINT_DATASET] / "splits_final.json", folds),
                "stage_budget": {"stage 1": profile.stage1_budget, "LiTS pretraining": profile.lits_budget},
                "device": self.device,
                "phantom": None if not self.own_data else {"size": profile.phantom_size, "seed": self.seed},
                "pretraining": self.pretraining_record(), "repeats": self.repeat_record()}
        self.reported = {"experiments": experiments, "report": build_report(experiments, self.run.report, meta)}

    def report_entry(self, exp: Experiment, directory: Path) -> dict:
        """What the report needs to know of a row trained in ``directory`` (``build_report``'s entry)."""
        return {"row": exp.row, "framework": exp.framework, "init": exp.init, "schedule": exp.schedule,
                "trainer": exp.trainer, "dataset": DATASET_FOLDERS[exp.dataset], "trainer_dir": directory,
                "summary": None, "folds": list(self.folds)}

    def evaluate_entry(self, entry: dict, exp: Experiment) -> None:
        """Evaluate the entry's folds into its ``summary`` and ``status`` (a failure becomes its status)."""
        try:
            entry["summary"] = evaluate_dir(entry["trainer_dir"], self.run, exp.dataset, entry["folds"])
            entry["status"] = "done"
        except (RuntimeError, InputError) as e:
            entry["status"] = "failed: " + str(e).splitlines()[0]

    def repeat_record(self) -> list[dict] | None:
        """Per repeat 0 .. ``repeats - 1``, the central comparison's report entries (repeat 0: the main run's);
        ``None`` without ``--repeats`` (:mod:`nnunet_joint.evaluation.report.spread`)."""
        if self.repeats <= 1:
            return None
        folds = list(self.folds)
        out = []
        for repeat in range(self.repeats):
            entries = []
            for exp in (e for e in central_comparison() if e in self.runnable()):
                directory = trainer_dir(self.run.repeated(repeat), exp.trainer, exp.dataset, exp.plans(self.plans))
                entry = {**self.report_entry(exp, directory), "status": "failed: not every fold finished"}
                if all(fold_done(directory / f"fold_{f}") for f in folds):
                    self.evaluate_entry(entry, exp)
                entries.append(entry)
            out.append({"repeat": repeat, "seed": repeat or None, "experiments": entries})
        return out

    def pretraining_record(self) -> dict | None:
        """The report's pretraining section (:mod:`nnunet_joint.evaluation.pretraining`): ``None`` when no
        LiTS row ran."""
        from nnunet_joint.evaluation.pretraining import pretraining_record

        if not any(e.init == "LiTS" for e in self.runnable()):
            return None
        models = [(f"SE-ResNet LiTS model ({LITS_TRAINER})", self.lits().fold_dir(self.run))]
        if self.needs_plain_lits():
            models.append((f"plain nnU-Net LiTS model ({PLAIN_TRAINER})", self.plain_lits().fold_dir(self.run)))
        source = self.run.raw / DATASET_FOLDERS[LITS_LESION_DATASET]
        target = self.run.preprocessed / DATASET_FOLDERS[JOINT_DATASET]
        lesion_label = json.loads((source / "dataset.json").read_text(encoding="utf-8"))["labels"]["lesion"]
        return pretraining_record(source, target / "splits_final.json", self.folds, target / f"{self.plans}.json",
                                  models, lesion_label)

    # ------------------------------------------------------------------ the description
    def steps(self) -> list[Step]:
        """The study's steps in a valid order; ``stop_after="data"`` ends with the Sheba crops."""
        lits_dir, sheba_dir = self.sources()
        encoder = self.profile.encoder
        sources = sources_settings(self.phantom(), encoder)
        data = Step("data", "data: " + ("phantom, " if self.own_data else "") + "LiTS conversion (Dataset501/502), "
                    "planning and preprocessing", "data preparation", (),
                    lambda: prepare_sources(self.run, lits_dir, sheba_dir, self.phantom(), self.profile.max_lits_cases,
                                            encoder),
                    lambda: _marked(self.run, "sources", sources))
        stage1, lits = self.stage1(), self.lits()
        train_steps = [
            Step("stage1", stage1.what, "stage 1", ("data",), lambda: self.train(stage1),
                 lambda: fold_done(stage1.fold_dir(self.run)), stage1.iterations(),
                 stage1.fold_dir(self.run) / LEARNING_CURVE_FILE, gpu=True),
            Step("lits", lits.what, "LiTS pretraining", ("data",), lambda: self.train(lits),
                 lambda: fold_done(lits.fold_dir(self.run)), lits.iterations(),
                 lits.fold_dir(self.run) / LEARNING_CURVE_FILE, gpu=True),
        ]
        if self.needs_plain_lits() and self.stop_after != "data":
            plain = self.plain_lits()
            train_steps.append(Step("lits-plain", plain.what, "LiTS pretraining", ("data",), lambda: self.train(plain),
                                    lambda: fold_done(plain.fold_dir(self.run)), plain.iterations(),
                                    plain.fold_dir(self.run) / LEARNING_CURVE_FILE, gpu=True))
        crop_mode = "oracle" if self.oracle_crops else "cascade"
        crops = Step("crops", f"Sheba conversion: Dataset503/504, {crop_mode} crops; planning and preprocessing",
                     f"crops ({crop_mode})", ("data",) if self.oracle_crops else ("data", "stage1"), self.make_crops,
                     self.crops_current, gpu=not self.oracle_crops)
        if self.stop_after == "data":
            return [data, crops] if self.oracle_crops else [data, train_steps[0], crops]
        rows = []
        for exp, fold, t in self.row_trainings():
            pretraining = self.pretraining_of(exp)
            after = ("data", "crops") + ((pretraining,) if pretraining else ())
            rows.append((exp, fold, 0, Step(step_id(exp, fold), t.what, f"row training ({exp.framework})", after,
                                            lambda row=step_id(exp, fold), t=t: self.train_row(row, t),
                                            lambda t=t: fold_done(t.fold_dir(self.run)), t.iterations(),
                                            t.fold_dir(self.run) / LEARNING_CURVE_FILE, optional=True, gpu=True)))
        for exp, fold, repeat, t in self.repeat_trainings():
            pretraining = self.pretraining_of(exp)
            after = ("data", "crops") + ((pretraining,) if pretraining else ())
            row = f"{step_id(exp, fold)}-r{repeat}"
            rows.append((exp, fold, repeat, Step(
                row, f"{t.what}, repeat {repeat} (seed {repeat})", f"row training ({exp.framework})", after,
                lambda row=row, t=t, repeat=repeat: self.train_row(row, t, repeat),
                lambda t=t, repeat=repeat: fold_done(t.fold_dir(self.run.repeated(repeat))),
                t.iterations(), t.fold_dir(self.run.repeated(repeat)) / LEARNING_CURVE_FILE, optional=True, gpu=True)))
        report = Step("report", "evaluation and report", "report", ("stage1", "crops", *(r[3].id for r in rows)),
                      self.report, lambda: False)
        return [data, *priority_order(train_steps, crops, rows, self.folds), report]

    def step_costs(self) -> StepCosts:
        return StepCosts(f"{self.profile.name}|{self.device}")


def reproduce(out: Path, profile: Profile, device: str = "cpu", imagenet_weights: Path | None = None,
              lits_dir: Path | None = None, sheba_dir: Path | None = None, seed: int = 0,
              folds: Sequence[int] | None = None, stop_after: str | None = None, quiet: bool = False,
              oracle_crops: bool = False, jobs: int | None = None, repeats: int = 1) -> dict:
    """Run the whole pipeline into ``out``; finished steps and folds are skipped, so a rerun resumes.

    The papers' cascade: stage 1 (plain nnU-Net on the LiTS volumes) is trained first and crops
    the Sheba slices (``oracle_crops`` crops them with the reference masks instead, which no user
    gets at inference, and the report says so); the LiTS lesion model trains beside stage 1; then
    the matrix. ``jobs`` steps run at a time (default: the profile's). ``repeats`` trains the central
    comparison that many times per fold (:attr:`Study.repeats`).
    """
    run = RunFolder(out.resolve())
    with lock_folder(run.root, "nnunet_joint_reproduce"):
        study = Study(run, profile, device, imagenet_weights, lits_dir, sheba_dir, seed,
                      tuple(folds) if folds is not None else profile.folds, stop_after, oracle_crops,
                      profile.jobs if jobs is None else jobs, repeats)
        costs = study.step_costs()
        outcome = run_local(study.steps(), study.jobs, lambda todo: Progress(todo, costs, study.jobs, quiet))
        if outcome.get("report", "not run") is None and not quiet:
            print(f"report: {run.report / 'report.md'} ({(time.time() - study.started) / 60:.1f} min)")
        return {"run": run.root, **study.reported}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_joint_reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="run folder (created; a rerun resumes it)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                   help="demo: fold 0, joint from scratch and from LiTS (about 75 min on 2 CPU cores); study: 3 "
                        "folds, the rows of the papers' questions, small phantom (3-4 h on 2 CPU cores); full: "
                        "default phantom, every row, SE-ResNet-50 (for a GPU); tiny: for tests")
    p.add_argument("--nnunet-length", action="store_true",
                   help="train every model for nnU-Net's standard 1000 epochs x 250 iterations instead of the "
                        "profile's budgets")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--folds", type=int, nargs="+", help="only these folds (split a full run across machines)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--lits", type=Path, help="LiTS (or MSD Task03_Liver) folder instead of the phantom's")
    p.add_argument("--sheba", type=Path, help="Sheba-format raw folder instead of the phantom's")
    p.add_argument("--imagenet-weights", type=Path, help="local ImageNet SE-ResNet checkpoint (timm layout); "
                                                         "without it the ImageNet rows are reported as not run")
    p.add_argument("--stop-after", choices=("data",), default=None,
                   help="stop after preparing the data (with cascade crops: after stage 1 cropped the Sheba slices)")
    p.add_argument("--oracle-crops", action="store_true",
                   help="crop the Sheba slices with their reference liver masks instead of the stage-1 model "
                        "(the cascade, both papers' protocol and the default); the report says which was used")
    p.add_argument("--repeats", type=int, default=1, metavar="K",
                   help="train the central comparison (joint model from LiTS and from scratch) K times per fold, "
                        "repeat r > 0 seeded with r, and report its run-to-run spread beside the fold spread "
                        "(default 1: no repeat)")
    p.add_argument("--jobs", type=int, default=None,
                   help="steps at a time on this machine (default: the profile's); each training gets "
                        "cpu_count // jobs torch threads")
    p.add_argument("--scheduler", choices=("local", "slurm"), default="local",
                   help="local: run here; slurm: submit one sbatch job per unfinished step, with the study's "
                        "dependencies, print the job ids and return (docs/cluster.md)")
    p.add_argument("--wait", action="store_true",
                   help="with --scheduler slurm: block until every job ended; exit 1 naming a failed job and its log")
    p.add_argument("--write-jobs", type=Path, metavar="FILE",
                   help="write the study's job list (commands, dependencies, resources) as JSON for another "
                        "scheduler, and submit or run nothing unless --scheduler slurm is given too")
    slurm = p.add_argument_group("SLURM resources per job (an unset one is left to the cluster's default)")
    slurm.add_argument("--slurm-gpus", type=int, default=None,
                       help="GPUs of each training job (default: 1, or 0 with --device cpu); other jobs get none")
    slurm.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per job, also its torch threads (default 8)")
    slurm.add_argument("--slurm-mem", default="32G", help="memory per job, sbatch --mem (default 32G)")
    slurm.add_argument("--slurm-time", default=None, help="time limit per job, sbatch --time (e.g. 2-00:00:00)")
    slurm.add_argument("--slurm-partition", default=None, help="sbatch --partition")
    slurm.add_argument("--slurm-account", default=None, help="sbatch --account")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # one step of the study: what a scheduler job runs
    p.add_argument("--quiet", action="store_true")
    return p


def run_step(study: Study, step_id: str) -> None:
    """Perform one step of the study in this process (a scheduler job), unless it is done already.

    Its dependencies must have finished: the scheduler's job dependencies see to that. The step's
    time is recorded like the local run's, so that later estimates on this machine know it.
    """
    steps = {s.id: s for s in study.steps()}
    if step_id not in steps:
        raise InputError(None, f"--step {step_id}: not a step of this study (steps: {', '.join(steps)})")
    step = steps[step_id]
    progress = Progress([step], study.step_costs())
    progress.step_started(step)
    step.run()
    progress.step_finished(step, None)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    passive_openmp()  # before torch is imported (stage 1 runs in this process while cropping)
    args = build_parser().parse_args(argv)
    for given in (args.lits, args.sheba, args.imagenet_weights):
        if given is not None and not given.exists():
            raise InputError(given, "not found")
    if (args.lits is None) != (args.sheba is None):
        raise InputError(args.lits or args.sheba, "give both --lits and --sheba, or neither (phantom)")
    if args.repeats < 1:
        raise InputError(None, f"--repeats must be at least 1, got {args.repeats}")
    if args.jobs is not None and args.jobs < 1:
        raise InputError(None, f"--jobs must be at least 1, got {args.jobs}")
    if args.wait and args.scheduler != "slurm":
        raise InputError(None, "--wait goes with --scheduler slurm")
    device = args.device
    if device is None and (args.scheduler == "slurm" or args.write_jobs):  # the jobs run elsewhere, on GPU nodes
        device = "cpu" if args.slurm_gpus == 0 else "cuda"
    elif device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = with_nnunet_length(PROFILES[args.profile]) if args.nnunet_length else PROFILES[args.profile]
    if args.step is None and args.scheduler == "local" and args.write_jobs is None:
        from nnunet_joint.checkpoints import security_events, security_exit_code

        events_before = len(security_events(args.out))
        reproduce(args.out, profile, device, args.imagenet_weights, args.lits, args.sheba, args.seed,
                  args.folds, args.stop_after, args.quiet, args.oracle_crops, args.jobs, args.repeats)
        return security_exit_code(args.out, events_before)  # 3: a checkpoint would have run code (docs/reliability.md)
    from nnunet_joint import slurm

    run = RunFolder(args.out.resolve())
    study = Study(run, profile, device, args.imagenet_weights, args.lits, args.sheba, args.seed,
                  tuple(args.folds) if args.folds else profile.folds, args.stop_after, args.oracle_crops,
                  repeats=args.repeats)
    if args.step is not None:
        study.started = slurm.submitted(run.root).get("submitted_at", study.started)
        run_step(study, args.step)
        slurm.mark_job_finished(run.root)
        return 0
    resources = slurm.Resources(args.slurm_gpus if args.slurm_gpus is not None else int(device != "cpu"),
                                args.slurm_cpus, args.slurm_mem, args.slurm_time, args.slurm_partition,
                                args.slurm_account)
    with lock_folder(run.root, "nnunet_joint_reproduce"):  # one submission at a time; the jobs run unlocked
        steps = study.steps()
        if args.write_jobs is not None:
            slurm.write_job_list(slurm.job_list(steps, study.step_command, resources, run.root), args.write_jobs)
        if args.scheduler != "slurm":
            return 0
        jobs = slurm.submit(steps, study.step_command, resources, run.root)
    if not args.quiet:
        slurm.print_jobs(jobs, steps)
    if not args.wait:
        return 0
    failed = slurm.wait_for(jobs, run.root)
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    if not failed and not args.quiet:
        print(f"report: {run.report / 'report.md'}")
    return 1 if failed else 0
