"""The steps of a study: what :class:`Study` trains (stage 1, the LiTS pretraining, every row x fold, the
repeats of the central comparison) and the step graph it describes (data → 501 and 502 preprocessed →
stage 1 and pretraining → crops → rows → report; the pretrainings' final validations → report), in the order that answers the papers' central question first.

Each step's work lives beside it: the data in :mod:`.data`, the crops in :mod:`.cropping`, a training
in :mod:`.training`, the report in :mod:`.reporting`; the graph is run by :mod:`.graph` (here) or
:mod:`.slurm` (one job per step). A new kind of row is a new ``*_steps`` method whose steps
:meth:`Study.steps` adds before the report.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnunet_joint.cpu import cpu_threads
from nnunet_joint.errors import InputError
from nnunet_joint.names import (
    DATASET_FOLDERS,
    HEAD_FRAMEWORKS,
    JOINT_DATASET,
    LITS_LESION_DATASET,
    LITS_TRAINER,
    LIVER_DATASET,
    PLAIN_TRAINER,
)
from nnunet_joint.study import cropping, matrix, reporting
from nnunet_joint.study.data import (CONVERTED, LITS_DATA, LIVER_DATA, convert_sources, preprocess_liver,
                                     preprocess_lits, sources_done, sources_settings)
from nnunet_joint.study.folder import RunFolder, nnunet_bin
from nnunet_joint.study.graph import Step, StepCosts
from nnunet_joint.study.matrix import Experiment, central_comparison, step_id
from nnunet_joint.study.profiles import NNUNET_LENGTH_SUFFIX, Profile
from nnunet_joint.study.training import Training, fold_done, fold_trained, train_fold
from nnunet_joint.training.curves import LEARNING_CURVE_FILE
from nnunet_joint.training.settings import ENV_SEED


def priority_order(pretrainings: Sequence[Step], crops: Step, rows: Sequence[tuple[Experiment, int, int, Step]],
                   folds: Sequence[int], validations: Sequence[Step]) -> list[Step]:
    """The study's steps (the data step and the report aside) in the order they start when several are
    ready, so that a run cut short still answers the papers' central question, fold by fold.

    The executor (and a scheduler's job list) starts ready steps in list order, so this order decides
    what a run stopped after a few hours holds: first stage 1, the SE-ResNet LiTS model and the crops
    (every row waits on them), then the central comparison (:func:`~.matrix.central_comparison`) on every fold,
    then its repeats fold by fold, then plain nnU-Net's LiTS pretraining, then the other rows fold by
    fold, so that one fold's table is complete before the next fold's rows start, and last the
    pretrainings' final validations, which only the report reads (on the study's fold 0 of the paper-sized
    target they took 5.5 and 2.7 min, which would otherwise hold back the rows).

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
    return [*(s for s in pretrainings if s.id != "lits-plain"), crops, *central_first, *plain_lits, *the_rest,
            *validations]


@dataclass
class Study:
    """One study in one run folder, described as steps (:mod:`nnunet_joint.study.graph`).

    Data preparation → stage 1 and the LiTS pretraining → the Sheba crops (by stage 1, or oracle)
    → every row × fold → evaluation and report. Each step can be run here
    (:func:`~nnunet_joint.study.graph.run_local`), or
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
    #: trainings of the central comparison (:func:`~nnunet_joint.study.matrix.central_comparison`) per fold,
    #: the first being the main run's; repeat r > 0 sets ``nnUNet_joint_seed=r`` and trains into
    #: ``RunFolder.repeated(r)``, so that the report can set the comparison beside its run-to-run spread
    repeats: int = 1
    #: only these of the profile's rows (``--rows``: trainer names or ``TRAINER@DatasetXXX_Name``); ``None``: all
    rows: tuple[str, ...] | None = None
    started: float = field(default_factory=time.time)
    #: why row steps failed in this process (for the report; a scheduler's report job finds unfinished folds)
    failures: dict[str, str] = field(default_factory=dict)
    #: what the report step wrote (:func:`~nnunet_joint.study.reporting.report`)
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
        if self.rows is not None:
            args += ["--rows", *self.rows]
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
                        {**self.profile.lits_budget, **self.class_weights_variable()}, self.plans)

    def class_weights_variable(self) -> dict[str, str]:
        """The CE's class-weight rule of our trainers (``nnUNet_joint_class_weights``: this process's, else the
        default), set for every training of the study and shown in its commands, so that a resumed fold or a
        scheduler's job trains with the rule the others did whatever its shell says."""
        from nnunet_joint.training.settings import ENV_CLASS_WEIGHTS, class_weight_choice

        return {ENV_CLASS_WEIGHTS: class_weight_choice()}

    def head_lr_variable(self, exp: Experiment) -> dict[str, str]:
        """The head's learning-rate scale (``nnUNet_joint_head_lr_scale``) of a row with a classification head,
        pinned like :meth:`class_weights_variable`; rows without a head get none."""
        from nnunet_joint.training.settings import ENV_HEAD_LR_SCALE, head_lr_scale

        return {ENV_HEAD_LR_SCALE: f"{head_lr_scale():g}"} if exp.framework in HEAD_FRAMEWORKS else {}

    def selected(self) -> list[Experiment]:
        """The profile's rows, and of those only the ``--rows`` ones when given."""
        wanted = None if self.rows is None else matrix.selected(self.rows)
        return [e for e in matrix.selected(self.profile.rows) if wanted is None or e in wanted]

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
        weights = self.class_weights_variable()
        return [(exp, fold, Training(f"{exp.trainer} on {DATASET_FOLDERS[exp.dataset]} fold {fold}", exp.trainer,
                                     exp.dataset, str(fold),
                                     {**self.profile.budget, **(weights if exp.framework != "nnunet" else {}),
                                      **self.head_lr_variable(exp)},
                                     exp.plans(self.plans),
                                     plain_env if exp.framework == "nnunet" else env,
                                     npz=exp.framework == "nnunet" and exp.dataset == JOINT_DATASET))
                for exp in self.runnable() for fold in self.folds]

    def repeat_trainings(self) -> list[tuple[Experiment, int, int, Training]]:
        """``(experiment, fold, repeat, training)`` of repeats 1 .. ``repeats - 1`` of the central comparison's
        rows that this study runs (the main run is repeat 0); each repeat is seeded with its number."""
        central = central_comparison()
        return [(exp, fold, repeat, dataclasses.replace(t, env={**t.env, ENV_SEED: str(repeat)}))
                for repeat in range(1, self.repeats) for exp, fold, t in self.row_trainings() if exp in central]

    def threads_per_job(self) -> int | None:
        """With ``jobs > 1`` each step that computes (a training, stage 1 cropping the Sheba slices) gets
        ``cpu_count // jobs`` torch threads, so that the steps share the machine instead of overbooking it,
        and the single-threaded parts of one (start-up, data loading, validation export) overlap the
        training of another; ``None``: one step at a time, every core."""
        return max(1, cpu_threads() // self.jobs) if self.jobs > 1 else None

    def threads_env(self) -> dict[str, str]:
        """A training's share of the cores (:meth:`threads_per_job`) as ``nnUNet_joint_threads``."""
        threads = self.threads_per_job()
        return {} if threads is None else {"nnUNet_joint_threads": str(threads)}

    def train(self, t: Training, repeat: int = 0, validate: bool = True) -> None:
        train_fold(self.run.repeated(repeat), t.trainer, t.dataset, t.fold, self.device, t.budget,
                   {**t.env, **self.threads_env()}, t.plans, t.npz, validate)

    def train_row(self, row: str, t: Training, repeat: int = 0) -> None:
        try:
            self.train(t, repeat)
        except Exception as e:
            self.failures[row] = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise

    # ------------------------------------------------------------------ the description
    def steps(self) -> list[Step]:
        """The study's steps in a valid order; ``stop_after="data"`` ends with the Sheba crops."""
        sources = self.source_steps()
        train_steps = self.pretraining_steps()
        validations = [self.validation_step(s) for s in train_steps]
        crop_mode = "oracle" if self.oracle_crops else "cascade"
        crops = Step("crops", f"Sheba conversion: Dataset503/504, {crop_mode} crops; planning and preprocessing",
                     f"crops ({crop_mode})", ("lits-data",) if self.oracle_crops else ("lits-data", "stage1"),
                     lambda: cropping.make_crops(self), lambda: cropping.crops_current(self), gpu=not self.oracle_crops)
        if self.stop_after == "data":
            return [*sources, crops] if self.oracle_crops else [*sources, train_steps[0], crops]
        rows = self.row_steps()
        report = Step("report", "evaluation and report", "report",
                      ("crops", *(v.id for v in validations), *(r[3].id for r in rows)),
                      lambda: reporting.report(self), lambda: False)
        return [*sources, *priority_order(train_steps, crops, rows, self.folds, validations), report]

    def source_steps(self) -> list[Step]:
        """The phantom and the LiTS conversion (``data``), then 502 (``lits-data``, the LiTS model's and the
        plans the Sheba datasets get) and 501 (``liver-data``, stage 1's) planned and preprocessed side by side,
        502 first: the LiTS model's training is the longest path of the demo."""
        lits_dir, _ = self.sources()
        settings = sources_settings(self.phantom(), self.profile.encoder)
        data = Step("data", "data: " + ("phantom, " if self.own_data else "") + "LiTS conversion (Dataset501/502)",
                    "data preparation", (),
                    lambda: convert_sources(self.run, lits_dir, self.phantom(), self.profile.max_lits_cases, settings),
                    lambda: sources_done(self.run, CONVERTED, settings))
        lits = Step("lits-data", f"planning and preprocessing: {DATASET_FOLDERS[LITS_LESION_DATASET]}", "preprocessing",
                    ("data",), lambda: preprocess_lits(self.run, self.profile.encoder, settings),
                    lambda: sources_done(self.run, LITS_DATA, settings))
        liver = Step("liver-data", f"planning and preprocessing: {DATASET_FOLDERS[LIVER_DATASET]}", "preprocessing",
                     ("data",), lambda: preprocess_liver(self.run, settings, child=self.jobs > 1),
                     lambda: sources_done(self.run, LIVER_DATA, settings))
        return [data, lits, liver]

    def training_step(self, step: str, kind: str, t: Training, after: tuple[str, ...], repeat: int = 0,
                      what: str | None = None, optional: bool = False, validate: bool = True) -> Step:
        """The step that trains ``t`` (into repeat ``repeat``'s results); done when its fold is
        (:func:`~nnunet_joint.study.training.fold_done`), or without ``validate`` once it is trained
        (:func:`~nnunet_joint.study.training.fold_trained`; :meth:`validation_step` validates it). An
        ``optional`` one (a row) records its failure for the report instead of stopping the study."""
        fold_dir = t.fold_dir(self.run.repeated(repeat))
        work = (lambda: self.train_row(step, t, repeat)) if optional else (lambda: self.train(t, repeat, validate))
        done = fold_done if validate else fold_trained
        return Step(step, what or t.what, kind, after, work, lambda: done(fold_dir), t.iterations(),
                    fold_dir / LEARNING_CURVE_FILE, optional=optional, gpu=True)

    def pretraining_steps(self) -> list[Step]:
        """Stage 1, the SE-ResNet LiTS model and, when a plain row starts from LiTS, plain nnU-Net's, each
        without its final validation (:meth:`validation_step`)."""
        steps = [self.training_step("stage1", "stage 1", self.stage1(), ("liver-data",), validate=False),
                 self.training_step("lits", "LiTS pretraining", self.lits(), ("lits-data",), validate=False)]
        if self.needs_plain_lits() and self.stop_after != "data":
            steps.append(self.training_step("lits-plain", "LiTS pretraining", self.plain_lits(), ("lits-data",),
                                            validate=False))
        return steps

    def validation_step(self, training: Step) -> Step:
        """The final validation of a pretraining (``nnUNetv2_train ... --val``), a step of its own: the crops
        and the rows need only the pretraining's checkpoint, the report its validation. On the demo's 2 cores
        stage 1's validation took 1.2-1.6 min and the LiTS model's 0.8, each before its dependants could
        start; as steps of their own they run beside the rows (docs/measured_figures.md)."""
        t = {"stage1": self.stage1, "lits": self.lits, "lits-plain": self.plain_lits}[training.id]()
        fold_dir = t.fold_dir(self.run)

        def validate() -> None:
            if not fold_trained(fold_dir):  # a validation step never trains (a scheduler's job run out of order)
                raise InputError(fold_dir / "checkpoint_final.pth", f"missing or unreadable: run step {training.id}")
            self.train(t)

        return Step(f"{training.id}-val", f"final validation of {t.what}", f"{training.kind} validation",
                    (training.id,), validate, lambda: fold_done(fold_dir), gpu=True)

    def row_steps(self) -> list[tuple[Experiment, int, int, Step]]:
        """``(experiment, fold, repeat, step)`` of every row training, the repeats of the central comparison
        after the main run's (:func:`priority_order` orders them)."""
        rows = []
        for exp, fold, t in self.row_trainings():
            rows.append((exp, fold, 0, self.training_step(step_id(exp, fold), f"row training ({exp.framework})", t,
                                                          self.row_after(exp), optional=True)))
        for exp, fold, repeat, t in self.repeat_trainings():
            rows.append((exp, fold, repeat, self.training_step(
                f"{step_id(exp, fold)}-r{repeat}", f"row training ({exp.framework})", t, self.row_after(exp), repeat,
                f"{t.what}, repeat {repeat} (seed {repeat})", optional=True)))
        return rows

    def row_after(self, exp: Experiment) -> tuple[str, ...]:
        """The steps a row waits for: the data, the crops and the pretraining it starts from."""
        pretraining = self.pretraining_of(exp)
        return ("data", "crops") + ((pretraining,) if pretraining else ())

    def step_costs(self) -> StepCosts:
        shipped = self.profile.cpu_step_costs if self.device == "cpu" else {}
        return StepCosts(f"{self.profile.name}|{self.device}", shipped=shipped)


