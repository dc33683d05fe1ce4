"""``nnunet_joint_reproduce``: the whole pipeline in one self-contained run folder.

``DIR/phantom/`` (when no raw data is given) → LiTS datasets 501/502 (``DIR/nnUNet_raw``,
planned and preprocessed into ``DIR/nnUNet_preprocessed``) → stage 1 (plain nnU-Net, liver, on
501) → the Sheba slices cropped by stage 1 (the cascade; ``--oracle-crops`` for reference-mask
crops) into 503/504, planned, with 502's SE-ResNet plans carried over → the LiTS lesion model
(502) → the experiment matrix (``DIR/nnUNet_results``) → ``DIR/report/``. nnU-Net's three
variables point at the run folder for every step, so with the same variables set a user's
``nnunet_joint_predict`` finds the models.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from nnunet_joint import TRAINERS_DIR
from nnunet_joint.cpu import WAIT_POLICY, cpu_threads, passive_openmp
from nnunet_joint.errors import InputError, cli_entry
from nnunet_joint.experiments import (
    DATASET_FOLDERS,
    DATASET_IDS,
    DEFAULT_PLANS,
    LITS_TRAINER,
    PLAIN_TRAINER,
    experiment_matrix,
)
from nnunet_joint.process import lock_folder, run_tied

#: The experiment vocabulary (nnunet_joint.experiments), re-exported for callers of this module.
__all__ = ["DATASET_FOLDERS", "DATASET_IDS", "DEFAULT_PLANS", "PLAIN_TRAINER", "PROFILES", "RunFolder", "reproduce"]


@dataclass
class RunFolder:
    """The layout of one reproduce run."""

    root: Path

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


@dataclass
class Progress:
    """One line per step: what runs, elapsed time, and an estimate of what is left."""

    total_steps: int
    quiet: bool = False
    done: int = 0
    start: float = field(default_factory=time.monotonic)

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def step(self, what: str) -> None:
        """Called from the training threads too: one whole line, one number per step."""
        with self.lock:
            elapsed = time.monotonic() - self.start
            eta = "?" if self.done == 0 else f"{elapsed / self.done * (self.total_steps - self.done) / 60:.1f} min"
            self.done += 1
            if not self.quiet:
                sys.stdout.write(f"[{self.done}/{self.total_steps}] {what} (elapsed {elapsed / 60:.1f} min, "
                                 f"left ~{eta})\n")
                sys.stdout.flush()


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


def prepare_sources(run: RunFolder, phantom_size: str, seed: int, lits_dir: Path | None, sheba_dir: Path | None,
                    progress: Progress, max_lits_cases: int | None = None, encoder: str = "seresnet18"
                    ) -> tuple[Path, Path]:
    """Phantom (unless raw data folders are given) → the LiTS datasets 501/502, planned and preprocessed.

    501 (whole volumes, stage 1) gets nnU-Net's default plans; 502 (the LiTS lesion model's
    slices) the SE-ResNet preset of ``encoder``, which :func:`prepare_targets` later carries to the
    Sheba datasets. Returns the LiTS and Sheba raw folders.
    """
    from nnunet_joint.dataset_conversion.convert_lits import convert_lits
    from nnunet_joint.phantom import generate_corpus
    from nnunet_joint.planning import plan_and_preprocess, planner_of, plans_name_of

    if lits_dir is None or sheba_dir is None:
        lits_dir, sheba_dir = run.phantom / "LiTS", run.phantom / "Sheba"
        phantom = True
    else:
        phantom = False
    settings = {"encoder": encoder, "phantom": {"size": phantom_size, "seed": seed} if phantom else None}
    if _marked(run, "sources", settings):  # a rerun resumes
        progress.done += 3 if phantom else 2
        return lits_dir, sheba_dir
    if phantom:
        progress.step(f"phantom ({phantom_size}, seed {seed})")
        if not (run.phantom / "Sheba" / "cases.csv").is_file():
            generate_corpus(run.phantom, seed=seed, size=phantom_size)
    progress.step("LiTS conversion: Dataset501 (volumes), Dataset502 (liver slices)")
    convert_lits(lits_dir, raw_root=run.raw, overwrite=True, max_cases=max_lits_cases, preprocessed_root=run.preprocessed)
    progress.step(f"planning and preprocessing (2d): nnUNetPlans for 501 and 502, {plans_name_of(encoder)} for 502")
    with run.nnunet_environment():
        plan_and_preprocess([DATASET_IDS["liver"]], "ExperimentPlanner", verify_dataset_integrity=True)
        plan_and_preprocess([DATASET_IDS["lits_lesion"]], planner_of(encoder), verify_dataset_integrity=True)
        plan_and_preprocess([DATASET_IDS["lits_lesion"]], "ExperimentPlanner")  # plain nnU-Net's LiTS pretraining
    _mark(run, "sources", settings)
    return lits_dir, sheba_dir


def prepare_targets(run: RunFolder, sheba_dir: Path, progress: Progress, encoder: str = "seresnet18",
                    liver_model: Path | None = None) -> None:
    """The Sheba datasets 503/504: crops by the stage-1 ``liver_model`` (the cascade) or, without one, by the
    reference masks (oracle crops); both plans carried over from LiTS (502): nnU-Net's default plans (plain
    rows, from scratch and from LiTS alike) and the SE-ResNet preset's (our rows)."""
    from nnunet_joint.dataset_conversion.convert_sheba import convert_sheba
    from nnunet_joint.planning import plans_name_of, transfer_plans

    settings = {"crop_mode": "oracle" if liver_model is None else "cascade", "encoder": encoder}
    if _marked(run, "targets", settings):
        progress.done += 2
        return
    progress.step(f"Sheba conversion: Dataset503/504, {settings['crop_mode']} crops")
    convert_sheba(sheba_dir, raw_root=run.raw, preprocessed_root=run.preprocessed, overwrite=True,
                  liver_model=liver_model, liver_folds=None if liver_model is None else [0])
    progress.step(f"planning and preprocessing (2d): nnUNetPlans and {plans_name_of(encoder)} from 502 for 503/504")
    with run.nnunet_environment():
        for plans in (DEFAULT_PLANS, plans_name_of(encoder)):
            transfer_plans(DATASET_IDS["lits_lesion"], [DATASET_IDS["seg"], DATASET_IDS["joint"]], plans,
                           verify_dataset_integrity=True)
    _mark(run, "targets", settings)


def prepare_data(run: RunFolder, phantom_size: str, seed: int, lits_dir: Path | None, sheba_dir: Path | None,
                 progress: Progress, max_lits_cases: int | None = None, encoder: str = "seresnet18") -> None:
    """All four datasets without training anything, the Sheba ones on *oracle* crops (reference masks).

    For tests and benchmarks that need data, not a study: :func:`reproduce` crops the Sheba slices
    with a trained stage-1 model instead, unless asked for oracle crops.
    """
    lits_dir, sheba_dir = prepare_sources(run, phantom_size, seed, lits_dir, sheba_dir, progress, max_lits_cases,
                                          encoder)
    prepare_targets(run, sheba_dir, progress, encoder)


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


def _budget(epochs: int, iterations: int) -> dict[str, str]:
    return {"nnUNet_joint_epochs": str(epochs), "nnUNet_joint_iterations": str(iterations)}


#: The study's rows: the papers' questions (MIDL: 4 frameworks from scratch and from LiTS; EMBC: the
#: joint model from LiTS with each fine-tuning schedule) and plain nnU-Net on both Sheba datasets.
STUDY_ROWS = (
    "nnUNetTrainerSEResNetCls", "nnUNetTrainerSEResNetCls_LiTS", "nnUNetTrainerSEResNetSeg",
    "nnUNetTrainerSEResNetSeg_LiTS", "nnUNetTrainerYNet", "nnUNetTrainerYNet_LiTS", "nnUNetTrainerJoint",
    "nnUNetTrainerJoint_LiTS", "nnUNetTrainerJoint_LiTS_FreezeEnc", "nnUNetTrainerJoint_LiTS_HierFreeze",
    "nnUNetTrainerJoint_LiTS_HierUnfreeze", PLAIN_TRAINER, f"{PLAIN_TRAINER}_LiTS")

#: Budgets, chosen from measured learning curves (README, "Measured figures"): on the small phantom
#: (fold 0, 60 training slices, batch 6 of 64 x 64) the joint model's validation type accuracy was
#: still at chance after 600 iterations and flattened after about 1,500 (full-slice type accuracy
#: 0.43 at 600, 0.77 at 1,800 iterations); stage 1 reaches a liver pseudo-Dice of 0.9 in about 100.
PROFILES = {
    # The README's main command: 12 minutes on 2 CPU cores (measured). The small phantom, fold 0, the
    # papers' central comparison (joint from scratch and from LiTS) at a budget where typing is
    # learned, two trainings at a time.
    "demo": Profile("demo", (0,), "small", "seresnet18", _budget(40, 30), _budget(4, 25), _budget(20, 30), "0", None,
                    ("nnUNetTrainerJoint", "nnUNetTrainerJoint_LiTS"), jobs=2),
    # Every row that answers the papers' questions, 3 folds, at the budget where the curves flatten
    # (measured: 55 min for fold 0 on 2 CPU cores, so about 2.5 h for three).
    "study": Profile("study", (0, 1, 2), "small", "seresnet18", _budget(50, 30), _budget(4, 25), _budget(30, 30),
                     "0", None, STUDY_ROWS, jobs=2),
    # The papers' protocol on the default phantom, every row, 3 folds, SE-ResNet-50: the small phantom's
    # converging length scaled to the default phantom's 3.7 times more training slices, with margin
    # (README); --nnunet-length trains nnU-Net's standard 1000 x 250 instead.
    "full": Profile("full", (0, 1, 2), "default", "seresnet50", _budget(40, 100), _budget(20, 100), _budget(40, 100),
                    "all", None, None),
    # For tests: the tiny phantom and a minimal budget.
    "tiny": Profile("tiny", (0,), "tiny", "seresnet18", _budget(1, 2), _budget(1, 2), _budget(1, 2), "0", None,
                    ("nnUNetTrainerSEResNetCls_LiTS", "nnUNetTrainerSEResNetSeg_LiTS", "nnUNetTrainerYNet_LiTS",
                     "nnUNetTrainerJoint_LiTS", PLAIN_TRAINER)),
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
    return ((validation / "summary.json").is_file() or (validation / "classification.json").is_file()) and (
        checkpoint_problem(fold_dir / "checkpoint_final.pth") is None)


def trainer_dir(run: RunFolder, trainer: str, dataset: int, plans: str) -> Path:
    """nnU-Net's results folder ``<Dataset>/<trainer>__<plans>__2d``."""
    return run.results / DATASET_FOLDERS[dataset] / f"{trainer}__{plans}__2d"


def train_fold(run: RunFolder, trainer: str, dataset: int, fold: str, device: str, budget: dict[str, str],
               extra_env: dict[str, str], commands: list[str], plans: str = DEFAULT_PLANS, npz: bool = False) -> Path:
    """``nnUNetv2_train DATASET 2d FOLD -tr TRAINER -p PLANS -device DEVICE [--npz]``, skipped when done.

    ``npz`` exports the validation probabilities (nnU-Net's ``--npz``): plain nnU-Net on the joint
    dataset needs them for the same no-lesion fallback of the type vote as our joint trainer.
    """
    fold_dir = trainer_dir(run, trainer, dataset, plans) / f"fold_{fold}"
    cmd = [nnunet_bin("nnUNetv2_train"), str(dataset), "2d", fold, "-tr", trainer, "-p", plans, "-device", device]
    if npz:
        cmd.append("--npz")
    commands.append(" ".join(f"{k}={v}" for k, v in budget.items()) + (" " if budget else "")
                    + " ".join(["nnUNetv2_train", *cmd[1:]]))
    if fold_done(fold_dir):
        return fold_dir
    checkpoint = fold_dir / "checkpoint_final.pth"
    if checkpoint.is_file():
        problem = checkpoint_problem(checkpoint)
        if problem is None:  # trained, validation interrupted
            cmd.append("--val")
        else:  # half-written (killed while saving) or refused: not finished, train again from scratch
            print(f"warning: {checkpoint}: {problem}; retraining fold {fold} of {trainer} from scratch",
                  file=sys.stderr, flush=True)
            checkpoint.unlink()
    run_nnunet(cmd, run, run.root / "logs" / f"{trainer}_{dataset}_fold{fold}.log", **budget, **extra_env)
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


def run_trainings(run: RunFolder, trainings: Sequence[Training], device: str, jobs: int, commands: list[str],
                  progress: Progress) -> dict[int, str | None]:
    """Train folds, ``jobs`` at a time; returns each training's failure (``None`` when it finished).

    Every training is its own ``nnUNetv2_train`` process; with ``jobs > 1`` each gets
    ``cpu_count // jobs`` torch threads (``nnUNet_joint_threads``) so that the processes share the
    machine instead of overbooking it, and the single-threaded parts of one (start-up, data loading,
    validation export) overlap the training of another.
    """
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, cpu_threads() // max(1, jobs))
    extra = {"nnUNet_joint_threads": str(threads)} if jobs > 1 else {}

    def one(index: int) -> tuple[int, str | None]:
        t = trainings[index]
        progress.step(t.what)
        try:
            train_fold(run, t.trainer, t.dataset, t.fold, device, t.budget, {**t.env, **extra}, commands, t.plans,
                       t.npz)
        except (RuntimeError, InputError) as e:
            return index, str(e).splitlines()[0]
        return index, None

    if jobs <= 1:
        return dict(one(i) for i in range(len(trainings)))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(one, range(len(trainings))))


def reproduce(out: Path, profile: Profile, device: str = "cpu", imagenet_weights: Path | None = None,
              lits_dir: Path | None = None, sheba_dir: Path | None = None, seed: int = 0,
              folds: Sequence[int] | None = None, stop_after: str | None = None, quiet: bool = False,
              oracle_crops: bool = False, jobs: int | None = None) -> dict:
    """Run the whole pipeline into ``out``; finished steps and folds are skipped, so a rerun resumes.

    The papers' cascade: stage 1 (plain nnU-Net on the LiTS volumes) is trained first and crops
    the Sheba slices (``oracle_crops`` crops them with the reference masks instead, which no user
    gets at inference, and the report says so); the LiTS lesion model trains beside stage 1; then
    the matrix. ``jobs`` trainings run at a time (default: the profile's).
    """
    from nnunet_joint.evaluation.coverage import cascade_coverage
    from nnunet_joint.evaluation.report import build_report
    from nnunet_joint.planning import plans_name_of

    run = RunFolder(out.resolve())
    lock = lock_folder(run.root, "nnunet_joint_reproduce")  # noqa: F841 - held until this function returns
    folds = tuple(folds) if folds is not None else profile.folds
    jobs = profile.jobs if jobs is None else jobs
    matrix = experiment_matrix()
    selected = [e for e in matrix if profile.rows is None or e.trainer in profile.rows or e.name in profile.rows]
    runnable = [e for e in selected if e.init != "ImageNet" or imagenet_weights is not None]
    own_data = lits_dir is None or sheba_dir is None
    plain_from_lits = any(e.framework == "nnunet" and e.init == "LiTS" for e in runnable)  # its own pretraining
    progress = Progress(total_steps=(3 if own_data else 2) + 2 + 2 + plain_from_lits + len(runnable) * len(folds) + 1,
                        quiet=quiet)
    commands = [" ".join(["nnunet_joint_reproduce", "--profile", profile.name, "--out", str(out)]
                         + (["--oracle-crops"] if oracle_crops else []))]
    plans = plans_name_of(profile.encoder)
    lits_dir, sheba_dir = prepare_sources(run, profile.phantom_size, seed, lits_dir, sheba_dir, progress,
                                          profile.max_lits_cases, profile.encoder)
    if oracle_crops:
        prepare_targets(run, sheba_dir, progress, profile.encoder)
    if stop_after == "data" and oracle_crops:
        return {"run": run.root}
    stage1 = Training(f"stage 1: {PLAIN_TRAINER} on {DATASET_FOLDERS[501]} fold 0", PLAIN_TRAINER, 501, "0",
                      dict(profile.stage1_budget))
    lits = Training(f"LiTS lesion pretraining: {LITS_TRAINER} on {DATASET_FOLDERS[502]} fold {profile.lits_fold}",
                    LITS_TRAINER, 502, profile.lits_fold, dict(profile.lits_budget), plans)
    first = [stage1, lits]
    if plain_from_lits:
        first.append(Training(f"LiTS lesion pretraining: {PLAIN_TRAINER} on {DATASET_FOLDERS[502]} fold "
                              f"{profile.lits_fold}", PLAIN_TRAINER, 502, profile.lits_fold, dict(profile.lits_budget)))
    failures = run_trainings(run, first, device, jobs, commands, progress)
    for index, failure in failures.items():
        if failure is not None:
            raise RuntimeError(f"{first[index].what} failed: {failure}")
    liver_dir = trainer_dir(run, PLAIN_TRAINER, 501, DEFAULT_PLANS)
    liver_summary = evaluate_dir(liver_dir, run, 501, ["0"])
    if not oracle_crops:
        prepare_targets(run, sheba_dir, progress, profile.encoder, liver_model=liver_dir)
    if stop_after == "data":
        return {"run": run.root}
    transfer_env = {"nnUNet_joint_lits_checkpoint": str(trainer_dir(run, LITS_TRAINER, 502, plans)
                                                        / f"fold_{profile.lits_fold}" / "checkpoint_final.pth")}
    if imagenet_weights is not None:
        transfer_env["nnUNet_joint_imagenet_weights"] = str(Path(imagenet_weights).resolve())

    trainings, owner = [], []
    plain_lits = {"nnUNet_joint_lits_checkpoint": str(trainer_dir(run, PLAIN_TRAINER, 502, DEFAULT_PLANS)
                                                      / f"fold_{profile.lits_fold}" / "checkpoint_final.pth")}
    for exp in runnable:
        env = {**transfer_env, **plain_lits} if exp.framework == "nnunet" else transfer_env
        for fold in folds:
            trainings.append(Training(f"{exp.trainer} on {DATASET_FOLDERS[exp.dataset]} fold {fold}", exp.trainer,
                                      exp.dataset, str(fold), dict(profile.budget), exp.plans(plans), env,
                                      npz=exp.framework == "nnunet" and exp.dataset == 504))
            owner.append(exp)
    failures = run_trainings(run, trainings, device, jobs, commands, progress)

    experiments = []
    for exp in matrix:
        directory = trainer_dir(run, exp.trainer, exp.dataset, exp.plans(plans))
        entry = {"row": exp.row, "framework": exp.framework, "init": exp.init, "schedule": exp.schedule,
                 "trainer": exp.trainer, "dataset": DATASET_FOLDERS[exp.dataset], "trainer_dir": directory,
                 "plans": exp.plans(plans), "summary": None, "folds": list(folds),
                 "budget": {"epochs": int(profile.budget.get("nnUNet_joint_epochs", 0)) or "nnU-Net default",
                            "iterations": int(profile.budget.get("nnUNet_joint_iterations", 0)) or "nnU-Net default",
                            "encoder": profile.encoder if exp.framework != "nnunet" else "-"}}
        mine = [failures[i] for i, o in enumerate(owner) if o == exp]
        if exp.init == "ImageNet" and imagenet_weights is None:
            entry["status"] = "not run: no ImageNet weights given"
        elif exp not in selected:
            entry["status"] = f"not run: not in the {profile.name} profile"
        elif any(mine):
            entry["status"] = "failed: " + next(f for f in mine if f)
        else:
            try:
                entry["summary"] = evaluate_dir(directory, run, exp.dataset, folds)
                entry["status"] = "done"
            except (RuntimeError, InputError) as e:
                entry["status"] = "failed: " + str(e).splitlines()[0]
        experiments.append(entry)

    progress.step("evaluation and report")
    joint = run.raw / DATASET_FOLDERS[504]
    meta = {"profile": profile.name, "folds": list(folds), "commands": commands, "versions": versions(),
            "wall_time_s": time.monotonic() - progress.start, "raw_root": run.raw, "jobs": jobs,
            "images_dataset": DATASET_FOLDERS[504], "stage1": {"trainer": PLAIN_TRAINER, "summary": liver_summary},
            "cascade": cascade_coverage(joint, run.preprocessed / DATASET_FOLDERS[504] / "splits_final.json", folds),
            "stage_budget": {"stage 1": profile.stage1_budget, "LiTS pretraining": profile.lits_budget},
            "device": device, "phantom": None if not own_data else {"size": profile.phantom_size, "seed": seed}}
    report = build_report(experiments, run.report, meta)
    if not quiet:
        print(f"report: {run.report / 'report.md'} ({(time.monotonic() - progress.start) / 60:.1f} min)")
    return {"run": run.root, "experiments": experiments, "report": report}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_joint_reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="run folder (created; a rerun resumes it)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                   help="demo: fold 0, joint from scratch and from LiTS (about 12 min on 2 CPU cores); study: 3 "
                        "folds, the rows of the papers' questions, small phantom (about 2.5 h on 2 CPU cores); full: "
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
    p.add_argument("--jobs", type=int, default=None,
                   help="trainings at a time (default: the profile's); each gets cpu_count // jobs torch threads")
    p.add_argument("--quiet", action="store_true")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    passive_openmp()  # before torch is imported (stage 1 runs in this process while cropping)
    args = build_parser().parse_args(argv)
    for given in (args.lits, args.sheba, args.imagenet_weights):
        if given is not None and not given.exists():
            raise InputError(given, "not found")
    if (args.lits is None) != (args.sheba is None):
        raise InputError(args.lits or args.sheba, "give both --lits and --sheba, or neither (phantom)")
    if args.jobs is not None and args.jobs < 1:
        raise InputError(None, f"--jobs must be at least 1, got {args.jobs}")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = PROFILES[args.profile]
    if args.nnunet_length:
        profile = dataclasses.replace(profile, name=f"{profile.name}-nnunet-length", budget=NNUNET_LENGTH,
                                      stage1_budget=NNUNET_LENGTH, lits_budget=NNUNET_LENGTH)
    reproduce(args.out, profile, device, args.imagenet_weights, args.lits, args.sheba, args.seed,
              args.folds, args.stop_after, args.quiet, args.oracle_crops, args.jobs)
    return 0
