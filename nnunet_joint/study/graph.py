"""The study as a graph of steps, run here (:func:`run_local`) or handed to a scheduler (:mod:`.slurm`).

``nnunet_joint_reproduce`` describes its pipeline once, as :class:`Step` objects with dependencies
and a "done" check; the local executor and the SLURM backend both read that description, so a
resumed run skips the same steps whichever ran it. Progress lines estimate the time left only from
measured step costs (:class:`StepCosts`): this run's finished steps of the same kind, or the costs
that earlier runs recorded on this machine.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO


@dataclass
class Step:
    """One unit of the study that one process (one scheduler job) performs.

    Attributes:
        id: stable identifier (``nnunet_joint_reproduce --step ID`` performs it; job names derive from it).
        name: what a person reads in the progress lines.
        kind: steps of one kind cost about the same (the ETA's unit of measurement).
        after: ids of the steps that must have finished first.
        run: performs the step in this process.
        done: whether the step's outputs are there and current (a resumed run skips it).
        iterations: training iterations planned (None: not a training).
        progress_file: the trainer's learning curve, from which iterations done are read.
        optional: a failure is reported in the study's report instead of stopping the study (the
            matrix rows); the steps after it still run.
        gpu: the step uses the training device (trainings, stage-1 prediction).
    """

    id: str
    name: str
    kind: str
    after: tuple[str, ...]
    run: Callable[[], None]
    done: Callable[[], bool]
    iterations: int | None = None
    progress_file: Path | None = None
    optional: bool = False
    gpu: bool = False


def check_graph(steps: Sequence[Step]) -> None:
    """Raise ValueError unless ids are unique, every dependency exists and the graph has no cycle."""
    ids = [s.id for s in steps]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate step ids in {ids}")
    known = set(ids)
    for s in steps:
        missing = set(s.after) - known
        if missing:
            raise ValueError(f"step {s.id} depends on unknown steps {sorted(missing)}")
    topological_order(steps)


def topological_order(steps: Sequence[Step]) -> list[Step]:
    """The steps in an order where every step follows its dependencies (the given order breaks ties)."""
    position = {s.id: i for i, s in enumerate(steps)}
    waiting = {s.id: len(set(s.after) & position.keys()) for s in steps}
    users: dict[str, list[str]] = {s.id: [] for s in steps}
    for s in steps:
        for d in set(s.after) & position.keys():
            users[d].append(s.id)
    ready = [position[i] for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        step = steps[heapq.heappop(ready)]
        order.append(step)
        for u in users[step.id]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, position[u])
    if len(order) != len(steps):
        left = sorted(set(waiting) - {s.id for s in order})
        raise ValueError("the steps' dependencies form a cycle: " + ", ".join(left))
    return order


def time_left(remaining: Sequence[Step], costs: Mapping[str, float], running_for: Mapping[str, float],
              workers: int, left_of: Mapping[str, float] | None = None) -> float | None:
    """Seconds until ``remaining`` steps finish on ``workers`` parallel slots, from measured costs only.

    Every remaining step's kind must have a measured cost, else there is no estimate (``None``):
    a guess from another kind of step (a data conversion for a training) is what made earlier ETAs
    wrong by several times. Steps already running count only their cost minus ``running_for``
    (never below zero), or what ``left_of`` measured of them. The steps are list-scheduled in
    dependency order, each on the slot that frees first after its dependencies finished.

    Args:
        remaining: the unfinished steps (running ones included); dependencies outside them are met.
        costs: seconds per step kind.
        running_for: seconds each running step (by id) has run so far.
        workers: steps that may run at a time.
        left_of: seconds left of running steps measured from their own progress (by id).
    """
    left_of = left_of or {}
    if any(s.kind not in costs and s.id not in left_of for s in remaining):
        return None
    ids = {s.id for s in remaining}
    finish: dict[str, float] = {}
    slots = [0.0] * max(1, workers)
    for step in sorted(topological_order(remaining), key=lambda s: s.id not in running_for):  # running ones hold slots
        ready = max((finish[d] for d in step.after if d in ids), default=0.0)
        slot = min(range(len(slots)), key=slots.__getitem__)
        start = max(slots[slot], ready)
        own = left_of.get(step.id)
        finish[step.id] = start + (own if own is not None else max(0.0, costs[step.kind] - running_for.get(step.id, 0.0)))
        slots[slot] = finish[step.id]
    return max(finish.values(), default=0.0)


def calibration_file() -> Path:
    """Where runs on this machine record what their steps cost (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nnunet_joint" / "step_costs.json"


@dataclass
class StepCosts:
    """Measured seconds per step kind: this run's finished steps first, else the machine's calibration,
    else ``shipped`` (what the profile measured on the development machine).

    ``scope`` (profile and device) keeps costs of different budgets and devices apart. Each finished
    step is written to the calibration file (under a lock, renamed into place), so that the next run
    on this machine has an estimate from its first step of each kind.
    """

    scope: str
    path: Path = field(default_factory=calibration_file)
    measured: dict[str, list[float]] = field(default_factory=dict)
    shipped: Mapping[str, float] = field(default_factory=dict)

    def _recorded(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def costs(self) -> dict[str, float]:
        """Seconds per kind: the mean of this run's measurements, else the last calibration, else shipped."""
        known = {k: float(v) for k, v in self.shipped.items()}
        known.update({k: float(v) for k, v in self._recorded().get(self.scope, {}).items()
                      if isinstance(v, (int, float))})
        known.update({k: sum(v) / len(v) for k, v in self.measured.items()})
        return known

    def record(self, kind: str, seconds: float) -> None:
        self.measured.setdefault(kind, []).append(seconds)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                recorded = self._recorded()
                recorded.setdefault(self.scope, {})[kind] = seconds
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n", encoding="utf-8")
                os.replace(tmp, self.path)
        except OSError:  # a read-only home: estimates then come from this run only
            pass


def iterations_done(step: Step) -> int | None:
    """Training iterations finished so far, from the trainer's learning curve (``None``: not known)."""
    if step.iterations is None or step.progress_file is None:
        return None
    try:
        epochs = json.loads(step.progress_file.read_text(encoding="utf-8"))["epochs"]
        return int(epochs[-1]["iterations"]) if epochs else 0  # counted from the start of training
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class Progress:
    """One line when a step starts and one when it ends: counts of what is left, elapsed time, ETA;
    while trainings run, a line every ``heartbeat_s`` with their iterations done of planned (from
    their learning curves, written each epoch).

    A resumed run counts only the steps it still has to run. The ETA (:func:`time_left`) comes from
    measured costs only: finished steps of each kind (this run's, else the machine's calibration) and
    the pace of running trainings. While some remaining kind is measured by nothing, the line gives
    a lower bound and names those kinds; while none is, it says there is no estimate.
    """

    steps: Sequence[Step]
    costs: StepCosts
    workers: int = 1
    quiet: bool = False
    start: float = field(default_factory=time.monotonic)
    started: dict[str, float] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    reported: dict[str, int] = field(default_factory=dict)  # iterations last shown per running training
    heartbeat_s: float = 120.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: where the lines go: stdout as it is when the run starts. A step that runs nnU-Net in this process
    #: swallows nnU-Net's prints by replacing ``sys.stdout`` for the whole process (``quiet_stdout``), and
    #: the lines of the steps beside it must not vanish with them
    stream: TextIO = field(default_factory=lambda: sys.stdout, repr=False)

    def _say(self, line: str) -> None:
        if not self.quiet:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _training_rates(self, now: float) -> dict[str, float]:
        """Seconds per iteration of each running training that finished an epoch, by step id: time since
        it started (start-up and validation included) over iterations done."""
        rates = {}
        for step in self.steps:
            if step.id in self.started and step.id not in self.finished:
                done = iterations_done(step)
                if done:
                    rates[step.id] = (now - self.started[step.id]) / done
        return rates

    def _eta(self) -> str:
        """Time left from measured costs. A running training is measured by its own pace (its seconds per
        iteration so far), which also costs the not yet started trainings of its kind; kinds measured
        by nothing yet make the figure a lower bound that names them."""
        now = time.monotonic()
        remaining = [s for s in self.steps if s.id not in self.finished]
        by_id = {s.id: s for s in remaining}
        rates = self._training_rates(now)
        left_of = {i: rate * max(0, by_id[i].iterations - (iterations_done(by_id[i]) or 0)) for i, rate in rates.items()}
        costs = dict(self.costs.costs())
        for i, rate in rates.items():  # a kind first measured now: its pace times a step's planned iterations
            costs.setdefault(by_id[i].kind, rate * by_id[i].iterations)
        untimed = sorted({s.kind for s in remaining if s.kind not in costs and s.id not in left_of})
        running_for = {i: now - t for i, t in self.started.items() if i not in self.finished}
        left = time_left(remaining, {**costs, **{k: 0.0 for k in untimed}}, running_for, self.workers, left_of)
        elapsed = f"elapsed {(now - self.start) / 60:.1f} min"
        if untimed and len(untimed) == len({s.kind for s in remaining}):
            return f"{elapsed}; no estimate until a step of each kind left has been timed"
        if untimed:
            return f"{elapsed}, left at least ~{left / 60:.1f} min (not timed yet: {', '.join(untimed)})"
        return f"{elapsed}, left ~{left / 60:.1f} min"

    def step_started(self, step: Step) -> None:
        with self.lock:
            self.started[step.id] = time.monotonic()
            planned = f", {step.iterations} iterations planned" if step.iterations else ""
            self._say(f"[{len(self.started)}/{len(self.steps)}] {step.name}{planned} ({self._eta()})")

    def heartbeat(self) -> None:
        """A line per running training whose iteration count moved since the last line."""
        with self.lock:
            for step in self.steps:
                if step.id in self.started and step.id not in self.finished:
                    done = iterations_done(step)
                    if done and done != self.reported.get(step.id):
                        self.reported[step.id] = done
                        self._say(f"    {step.name}: {done} of {step.iterations} iterations ({self._eta()})")

    def step_finished(self, step: Step, failure: str | None) -> None:
        with self.lock:
            seconds = time.monotonic() - self.started[step.id]
            self.finished.add(step.id)
            if failure is None:
                self.costs.record(step.kind, seconds)
            done = iterations_done(step)
            count = f", {done} of {step.iterations} iterations" if step.iterations and done is not None else ""
            outcome = "finished" if failure is None else "failed"
            self._say(f"    {outcome}: {step.name} in {seconds / 60:.1f} min{count} ({self._eta()})")


def steps_to_run(steps: Sequence[Step]) -> list[Step]:
    """The steps a run still has to perform, in dependency order: those not done, and every step after
    one of them (its outputs would be stale: a retrained stage 1 means new crops and new rows)."""
    check_graph(steps)
    todo: list[Step] = []
    for s in topological_order(steps):
        if any(d in {t.id for t in todo} for d in s.after) or not s.done():
            todo.append(s)
    return todo


def run_local(steps: Sequence[Step], workers: int, progress_of: Callable[[Sequence[Step]], Progress]
              ) -> dict[str, str | None]:
    """Run the steps that are not done, ``workers`` at a time, each once its dependencies finished.

    A failed step stops the study (after the running ones end) unless it is ``optional``; steps
    after an optional failure still run (the report lists the failure).

    Returns:
        Each step's failure (its first line; "skipped: ..." for one after a failed required step), ``None``
        for steps that finished or were done already.

    Raises:
        RuntimeError: a step that is not optional failed.
    """
    todo = steps_to_run(steps)
    outcome: dict[str, str | None] = {s.id: None for s in steps if s not in todo}
    progress = progress_of(list(todo))

    def perform(step: Step) -> str | None:
        progress.step_started(step)
        try:
            step.run()
            failure = None
        except Exception as e:  # noqa: BLE001 - reported with the step's name; a required step re-raises below
            failure = str(e).splitlines()[0] if str(e) else type(e).__name__
        progress.step_finished(step, failure)
        return failure

    by_id = {s.id: s for s in steps}
    running: dict[Future, Step] = {}
    stopped: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while todo or running:
            if not stopped:
                for step in [s for s in todo if all(d in outcome for d in s.after)]:
                    if len(running) >= max(1, workers):
                        break
                    blocked = [d for d in step.after if outcome[d] is not None and not by_id[d].optional]
                    todo.remove(step)
                    if blocked:
                        outcome[step.id] = f"skipped: {blocked[0]} failed"
                        continue
                    running[pool.submit(perform, step)] = step
            if not running:
                if stopped or not todo:
                    break
                continue
            finished, _ = wait(running, timeout=progress.heartbeat_s, return_when=FIRST_COMPLETED)
            if not finished:
                progress.heartbeat()
            for future in finished:
                step = running.pop(future)
                outcome[step.id] = future.result()
                if outcome[step.id] is not None and not step.optional:
                    stopped.append(f"{step.name} failed: {outcome[step.id]}")
    if stopped:
        raise RuntimeError(stopped[0])
    return outcome
