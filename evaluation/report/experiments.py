"""The experiments a report shows: the pipeline's entry plus what each trainer folder recorded.

An entry (one dictionary per experiment, see :func:`evaluation.report.build_report`) says what
was *asked for*: the trainer, its dataset, its status, the profile's budget. The trainer folder
says what *happened*: ``fold_N/joint_config.json`` (our trainers: epochs, iterations per epoch,
architecture), ``fold_N/learning_curve.json`` (validation lesion Dice and type accuracy per
epoch), ``plans.json`` and ``dataset.json`` (nnU-Net's copies; ours add ``patients``). The
report prefers the folder's record and says where it fell back to the entry.

A missing or unreadable record never stops the report: it becomes a note and the experiment
shows what is known.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from nnunet_joint import names as vocabulary
from nnunet_joint.names import JOINT_CONFIG_FILE, LEARNING_CURVE_FILE, SCRATCH
from nnunet_joint.evaluation import published

#: An entry's ``init`` for a row with no initialisation of ours (plain nnU-Net, see ``build_report``).
NO_INIT = "-"

REQUIRED_KEYS = ("row", "framework", "init", "schedule", "trainer", "dataset", "trainer_dir", "status")
#: The status text of a row that trained and was evaluated; the other outcomes' words are :attr:`Outcome.status`.
DONE = "done"
NOT_RUN = "not run"
FAILED = "failed"
#: What our trainers write into each fold folder (``nnunet_joint.training.base``).
#: Per-epoch validation curve each trained fold folder holds (written by the trainers).
#: nnU-Net's copies in the trainer folder.
PLANS_FILE = "plans.json"
DATASET_FILE = "dataset.json"
#: Frameworks a learning curve may name.
CURVE_FRAMEWORKS = tuple(vocabulary.FRAMEWORKS)


class RecordError(ValueError):
    """A fold record that exists but cannot be used (the message names the file)."""


# ----------------------------------------------------------------------------- records of a fold


@dataclasses.dataclass(frozen=True)
class LearningCurve:
    """``fold_N/learning_curve.json``: one point per epoch, ``None`` where a framework has no value.

    Attributes:
        fold: the fold it belongs to.
        framework: as the file states it.
        epochs, iterations: epoch index and cumulative training iterations at its end.
        lesion_dice: validation lesion Dice (all types merged, pooled over the epoch's patches).
        type_accuracy: validation lesion-type accuracy.
    """

    fold: int
    framework: str
    epochs: tuple[int, ...]
    iterations: tuple[int, ...]
    lesion_dice: tuple[float | None, ...]
    type_accuracy: tuple[float | None, ...]

    @property
    def final_iterations(self) -> int | None:
        return self.iterations[-1] if self.iterations else None


def _read_json(path: Path) -> Any:
    """Parse a JSON record; a broken file raises :class:`RecordError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not readable JSON ({e})") from None


def _number_or_none(value: Any, what: str, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError(f"{path}: {what} must be a number or null, got {value!r}")
    return float(value)


def read_learning_curve(path: Path, fold: int) -> LearningCurve:
    """Read and check one ``learning_curve.json`` (format in the module docstring of the trainers).

    Raises:
        RecordError: broken JSON, a framework we do not know, or an epoch without ``epoch`` /
            ``iterations`` integers or with non-numeric values.
    """
    content = _read_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("epochs"), list):
        raise RecordError(f"{path}: expected {{'framework': ..., 'epochs': [...]}}")
    framework = content.get("framework")
    if framework not in CURVE_FRAMEWORKS:
        raise RecordError(f"{path}: unknown framework {framework!r} (expected one of {', '.join(CURVE_FRAMEWORKS)})")
    epochs, iterations, dice, accuracy = [], [], [], []
    for index, point in enumerate(content["epochs"]):
        if not isinstance(point, dict):
            raise RecordError(f"{path}: epoch entry {index} is not an object")
        for key in ("epoch", "iterations"):
            if isinstance(point.get(key), bool) or not isinstance(point.get(key), int):
                raise RecordError(f"{path}: epoch entry {index} has no integer {key!r}")
        epochs.append(point["epoch"])
        iterations.append(point["iterations"])
        dice.append(_number_or_none(point.get("lesion_dice"), f"epoch {point['epoch']} lesion_dice", path))
        accuracy.append(_number_or_none(point.get("type_accuracy"), f"epoch {point['epoch']} type_accuracy", path))
    return LearningCurve(fold, framework, tuple(epochs), tuple(iterations), tuple(dice), tuple(accuracy))


@dataclasses.dataclass(frozen=True)
class FoldRecord:
    """What one fold folder recorded about its training.

    Attributes:
        fold: fold number.
        config: ``joint_config.json`` (our trainers), ``None`` when the folder has none (plain nnU-Net).
        curve: ``learning_curve.json``, ``None`` when absent or unreadable.
    """

    fold: int
    config: dict | None
    curve: LearningCurve | None

    @property
    def budget(self) -> tuple[int, int] | None:
        """(epochs, iterations per epoch) the training was configured with, from ``joint_config.json``."""
        if self.config is None:
            return None
        epochs, iterations = self.config.get("num_epochs"), self.config.get("num_iterations_per_epoch")
        return None if epochs is None or iterations is None else (int(epochs), int(iterations))


def read_fold_record(trainer_dir: Path, fold: int, notes: list[str]) -> FoldRecord:
    """A fold's ``joint_config.json`` and ``learning_curve.json``; unreadable files become notes."""
    folder = trainer_dir / f"fold_{fold}"
    config = curve = None
    if (folder / JOINT_CONFIG_FILE).is_file():
        try:
            config = _read_json(folder / JOINT_CONFIG_FILE)
            if not isinstance(config, dict):
                raise RecordError(f"{folder / JOINT_CONFIG_FILE}: not a JSON object")
        except RecordError as e:
            notes.append(str(e))
            config = None
    if (folder / LEARNING_CURVE_FILE).is_file():
        try:
            curve = read_learning_curve(folder / LEARNING_CURVE_FILE, fold)
        except RecordError as e:
            notes.append(str(e))
    return FoldRecord(fold, config, curve)


# ----------------------------------------------------------------------------- outcomes


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one experiment of the matrix: the study decides it, the report words it.

    Build one with :meth:`ran`, :meth:`not_in_profile`, :meth:`needs_imagenet_weights` or
    :meth:`failed`; an entry's ``status`` holds it (or, written by hand, its text, read once by
    :meth:`from_status`). Its text (:attr:`status`, also ``str()``, what ``summary.json`` keeps) is
    worded here and nowhere else.

    Attributes:
        kind: ``"ran"``, ``"not in profile"``, ``"not selected"`` (``--rows``), ``"needs ImageNet weights"`` or
            ``"failed"``.
        detail: the profile's name (not in profile) or the reason (failed); empty otherwise.
    """

    kind: str
    detail: str = ""

    RAN = "ran"
    NOT_IN_PROFILE = "not in profile"
    NOT_SELECTED = "not selected"
    NEEDS_IMAGENET_WEIGHTS = "needs ImageNet weights"
    FAILED = "failed"

    @classmethod
    def ran(cls) -> "Outcome":
        return cls(cls.RAN)

    @classmethod
    def not_in_profile(cls, profile: str) -> "Outcome":
        return cls(cls.NOT_IN_PROFILE, profile)

    @classmethod
    def not_selected(cls) -> "Outcome":
        """A row of the profile that ``--rows`` left out (and that the run folder holds no finished folds of)."""
        return cls(cls.NOT_SELECTED)

    @classmethod
    def needs_imagenet_weights(cls) -> "Outcome":
        return cls(cls.NEEDS_IMAGENET_WEIGHTS)

    @classmethod
    def failed(cls, reason: str) -> "Outcome":
        """``reason``: its first line is kept (a status is one line)."""
        return cls(cls.FAILED, (reason.splitlines() or [""])[0])

    @property
    def not_run_reason(self) -> str | None:
        """Why the row did not train (``None``: it trained, or tried to)."""
        if self.kind == self.NOT_IN_PROFILE:
            return f"not in the {self.detail} profile"
        if self.kind == self.NEEDS_IMAGENET_WEIGHTS:
            return "no ImageNet weights given"
        if self.kind == self.NOT_SELECTED:
            return "not among --rows"
        return None

    @property
    def status(self) -> str:
        """The report's words: ``done``, ``not run: <why>`` or ``failed: <why>``."""
        if self.kind == self.RAN:
            return DONE
        if self.kind == self.FAILED:
            return f"{FAILED}: {self.detail}" if self.detail else FAILED
        return f"{NOT_RUN}: {self.not_run_reason}"

    def __str__(self) -> str:
        return self.status

    @classmethod
    def from_status(cls, text: str) -> "Outcome":
        """The outcome a hand-written status text names (the inverse of :attr:`status`).

        Raises:
            ValueError: a "not run" reason that is none of the study's.
        """
        line = text.splitlines()[0] if text.strip() else f"{FAILED}: no status"
        if line == DONE:
            return cls.ran()
        if line.startswith(FAILED):
            return cls.failed(line.removeprefix(FAILED).lstrip(": "))
        for candidate in (cls.needs_imagenet_weights(), cls.not_selected()):
            if line == candidate.status:
                return candidate
        reason = line.removeprefix(NOT_RUN).lstrip(": ")
        if line.startswith(NOT_RUN) and reason.startswith("not in the ") and reason.endswith(" profile"):
            return cls.not_in_profile(reason.removeprefix("not in the ").removesuffix(" profile"))
        raise ValueError(f"status {line!r} is none of: {DONE}, {FAILED}: <why>, "
                         f"{cls.needs_imagenet_weights().status}, {cls.not_in_profile('<name>').status}")


# ----------------------------------------------------------------------------- experiments


@dataclasses.dataclass
class Experiment:
    """One row of the experiment matrix: the pipeline's entry and, when done, its folder's records.

    Attributes:
        row, framework, init, schedule, trainer, dataset, trainer_dir: the entry's keys.
        status: the entry's :class:`Outcome` in the report's words.
        summary: :func:`evaluation.evaluate.evaluate_trainer_dir`'s result (``None`` unless done).
        budget: the budget the entry *requested* (``{"epochs", "iterations", "encoder"}``).
        folds: the folds evaluated (summary), else the entry's ``folds``.
        records: one :class:`FoldRecord` per evaluated fold (empty unless done).
        patients: case -> patient id from the trainer folder's ``dataset.json`` (``None`` if absent).
        plans_network: network class and patch size from nnU-Net's ``plans.json`` copy, if readable.
    """

    row: str
    framework: str
    init: str
    schedule: str
    trainer: str
    dataset: str
    trainer_dir: Path
    status: str
    summary: dict | None = None
    budget: dict = dataclasses.field(default_factory=dict)
    folds: list[int] = dataclasses.field(default_factory=list)
    records: list[FoldRecord] = dataclasses.field(default_factory=list)
    patients: dict[str, str] | None = None
    plans_network: str | None = None
    #: the typed form of ``status`` (built from it when not given)
    outcome: Outcome | None = None

    def __post_init__(self) -> None:
        if self.outcome is None:
            self.outcome = Outcome.from_status(self.status)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], notes: list[str] | None = None) -> "Experiment":
        """Parse an entry; for a finished one, read its folder's records (problems go to ``notes``).

        Raises:
            ValueError: a required key is missing.
        """
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ValueError(f"experiment {entry.get('trainer', entry)!r} lacks {', '.join(missing)}")
        given = entry["status"]
        outcome = given if isinstance(given, Outcome) else Outcome.from_status(str(given))
        summary = entry.get("summary")
        if outcome.kind == Outcome.RAN and summary is None:
            outcome = Outcome.failed("finished but has no evaluation summary")
        done, status = outcome.kind == Outcome.RAN, outcome.status
        folds = [int(f) for f in (summary or {}).get("folds") or entry.get("folds") or [] if str(f).isdigit()]
        experiment = cls(str(entry["row"]), str(entry["framework"]), str(entry["init"]), str(entry["schedule"]),
                         str(entry["trainer"]), str(entry["dataset"]), Path(entry["trainer_dir"]), status,
                         summary if done else None, dict(entry.get("budget") or {}), folds, outcome=outcome)
        if done:
            experiment.read_records([] if notes is None else notes)
        return experiment

    def read_records(self, notes: list[str]) -> None:
        """Read fold records, patients and plans from the trainer folder (what the training used)."""
        if not self.folds:
            self.folds = [f["fold"] for f in self.summary.get("per_fold", [])]
        self.records = [read_fold_record(self.trainer_dir, fold, notes) for fold in self.folds]
        if (self.trainer_dir / DATASET_FILE).is_file():
            try:
                content = _read_json(self.trainer_dir / DATASET_FILE)
            except RecordError as e:
                notes.append(str(e))
                content = None
            patients = content.get("patients") if isinstance(content, dict) else None
            if isinstance(patients, dict):
                self.patients = {str(k): str(v) for k, v in patients.items()}
        if (self.trainer_dir / PLANS_FILE).is_file():
            try:
                configuration = _read_json(self.trainer_dir / PLANS_FILE)["configurations"]["2d"]
                network = configuration["architecture"]["network_class_name"].rsplit(".", 1)[-1]
                self.plans_network = f"{network}, patch {' x '.join(map(str, configuration['patch_size']))}"
            except (RecordError, KeyError, TypeError, AttributeError):
                self.plans_network = None

    @property
    def done(self) -> bool:
        return self.outcome.kind == Outcome.RAN

    @property
    def key(self) -> str:
        """Unique name: the trainer alone is not (plain ``nnUNetTrainer`` runs on two datasets)."""
        return f"{self.dataset}/{self.trainer}"

    @property
    def label(self) -> str:
        """Short human label for figure titles and table rows."""
        if self.framework == "nnunet":  # from scratch on both Sheba datasets, and from LiTS on the joint labels
            init = f", {self.init}" if self.init not in (SCRATCH, NO_INIT) else ""
            return f"nnU-Net ({self.dataset.split('_', 1)[-1]}{init})"
        name = published.FRAMEWORKS.get(self.framework, self.row)
        schedule = "" if self.schedule == published.MIDL_SCHEDULE else f", {self.schedule}"
        return f"{name} ({self.init}{schedule})"

    def metric(self, name: str) -> dict | None:
        """Aggregate entry ``{"mean", "std", "n", "n_folds"[, "pooled"]}``, ``None`` when not run or undefined."""
        if not self.done:
            return None
        entry = self.summary["aggregate"]["metrics"].get(name)
        return entry if entry is not None and entry.get("mean") is not None else None

    @property
    def cases(self) -> list[dict]:
        """Per-case results of every evaluated fold (:class:`evaluation.metrics.SliceResult` as dicts)."""
        return list(self.summary.get("cases", [])) if self.done else []

    def per_slice(self, metric: str) -> dict[str, float]:
        """Case -> the slice's value of ``metric``: ``"dice"`` (Dice1 term) or ``"cls_acc"`` (1 right, 0 wrong).

        The same slices the summary's means stand on: Dice where lesions were evaluated; typing
        where the true type is known and the model made a prediction (no call counts as wrong).
        """
        values: dict[str, float] = {}
        for case in self.cases:
            if metric == "dice" and case.get("dice") is not None:
                values[case["case_id"]] = float(case["dice"])
            elif metric == "cls_acc" and case.get("true_type") is not None and case.get("pred_type") is not None:
                values[case["case_id"]] = float(case["pred_type"] == case["true_type"])  # NO_CALL (-1) is wrong
        return values

    def patient_of(self, case_id: str) -> str:
        """The case's patient, or the case itself when ``dataset.json`` lists no patients."""
        return case_id if self.patients is None else self.patients.get(case_id, case_id)

    def curves(self) -> list[LearningCurve]:
        return [r.curve for r in self.records if r.curve is not None]

    def paper(self) -> dict[str, dict[str, float]]:
        """The papers' numbers for this experiment: ``{"MIDL": {...}, "EMBC": {...}}`` (possibly empty)."""
        out: dict[str, dict[str, float]] = {}
        if self.schedule == published.MIDL_SCHEDULE and self.framework in published.MIDL_TABLE1:
            out["MIDL"] = dict(published.MIDL_TABLE1[self.framework].get(self.init, {}))
        strategy = published.embc_strategy(self.framework, self.init, self.schedule)
        if strategy is not None:
            out["EMBC"] = dict(published.EMBC_TABLE[strategy])
        return out


def find(experiments: Iterable[Experiment], framework: str, init: str | None = None,
         schedule: str | None = None) -> Experiment | None:
    """The first experiment matching the given fields (``None`` for a field: any value)."""
    for e in experiments:
        if e.framework == framework and init in (None, e.init) and schedule in (None, e.schedule):
            return e
    return None


# ----------------------------------------------------------------------------- what a training used


@dataclasses.dataclass(frozen=True)
class TrainingUsed:
    """The budget and network an experiment's folds trained with, and where that is known from.

    Attributes:
        budget: ``"5 x 10"`` (epochs x iterations per epoch); folds that differ are listed.
        source: ``"joint_config.json"``, or ``"requested"`` (the entry's budget: the folder holds
            no ``joint_config.json``, as for plain nnU-Net), or both when folds differ.
        network: encoder and patch from ``joint_config.json``, else nnU-Net's ``plans.json``, else
            the requested encoder.
        trained: cumulative iterations at the last epoch of each fold's learning curve.
        learning_rate: the recipe and peak rate from ``joint_config.json`` and, for a row with a
            classification head, the head's scale of it (:func:`recorded_learning_rate`).
    """

    budget: str
    source: str
    network: str
    trained: str
    learning_rate: str = "–"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _per_fold(values: dict[int, str]) -> str:
    """``"a"`` when every fold agrees, else ``"a (fold 0); b (folds 1, 2)"``."""
    distinct = list(dict.fromkeys(values.values()))
    if len(distinct) <= 1:
        return distinct[0] if distinct else "–"
    parts = []
    for value in distinct:
        folds = [str(f) for f, v in values.items() if v == value]
        parts.append(f"{value} (fold{'s' if len(folds) > 1 else ''} {', '.join(folds)})")
    return "; ".join(parts)


def requested_network(e: Experiment) -> str:
    """The network an entry asked for; plain nnU-Net's is its own planned U-Net, whatever our encoder setting."""
    if e.framework == "nnunet":
        return f"nnU-Net's planned U-Net (no {PLANS_FILE} found)"
    return f"{e.budget.get('encoder', '–')} (requested)"


def recorded_learning_rate(config: Mapping[str, Any] | None, framework: str) -> str:
    """``"poly 0.01; head 0.1x"``: the learning-rate recipe a fold recorded, and its head's scale.

    A head row (classifier, Y-Net) whose record has no head scale was trained by a build from before the
    head had a learning rate of its own, i.e. at the recipe's rate (1x): the report says so, since at that
    rate the classifier from LiTS collapsed on the paper-sized target (docs/model_diagnosis.md). Plain nnU-Net writes no
    ``joint_config.json``: it trains with nnU-Net's own rate.
    """
    if framework == "nnunet":
        return "nnU-Net's"
    recorded = None if config is None else config.get("learning_rate")
    if not isinstance(recorded, Mapping):
        return "not recorded"
    recipe, peak = recorded.get("recipe", "?"), recorded.get("peak_lr")
    text = f"{recipe} {peak:g}" if isinstance(peak, (int, float)) else str(recipe)
    if recorded.get("warmup_fraction"):
        text += f", warm-up {recorded['warmup_fraction']:g}"
    if framework in vocabulary.HEAD_FRAMEWORKS:
        scale = recorded.get("head_lr_scale")
        text += f"; head {scale:g}x" if scale is not None else "; head 1x (an earlier build: no own head rate)"
    return text


def training_used(e: Experiment) -> TrainingUsed:
    """What :class:`Experiment` ``e`` trained with (see :class:`TrainingUsed`)."""
    requested_epochs, requested_iterations = e.budget.get("epochs"), e.budget.get("iterations")
    if requested_epochs is None:
        requested = "–"
    elif isinstance(requested_epochs, str) and requested_epochs == requested_iterations:
        requested = requested_epochs  # "nnU-Net default" for both: say it once
    else:
        requested = f"{requested_epochs} x {requested_iterations}"
    if not e.records:
        return TrainingUsed(requested, "requested", requested_network(e), "–")
    budgets, sources, networks, trained, rates = {}, {}, {}, {}, {}
    for record in e.records:
        rates[record.fold] = recorded_learning_rate(record.config, e.framework)
        budget = record.budget
        budgets[record.fold] = requested if budget is None else f"{budget[0]} x {budget[1]}"
        sources[record.fold] = JOINT_CONFIG_FILE if budget is not None else "requested (no joint_config.json)"
        architecture = (record.config or {}).get("architecture") or {}
        if architecture.get("encoder"):
            patch = architecture.get("patch_size")
            patch_text = "" if not patch else f", patch {' x '.join(map(str, patch))}"
            networks[record.fold] = architecture["encoder"] + patch_text
        elif e.plans_network is not None:
            networks[record.fold] = f"{e.plans_network} ({PLANS_FILE})"
        else:
            networks[record.fold] = requested_network(e)
        final = None if record.curve is None else record.curve.final_iterations
        trained[record.fold] = "no curve" if final is None else str(final)
    return TrainingUsed(_per_fold(budgets), _per_fold(sources), _per_fold(networks), _per_fold(trained),
                        _per_fold(rates))
