"""The study's steps as SLURM jobs (``nnunet_joint_reproduce --scheduler slurm``), and as a plain job list.

Each unfinished step becomes one ``sbatch`` job that runs ``nnunet_joint_reproduce ... --step ID``,
named ``nj-ID`` (``nj-stage1``, ``nj-Joint_LiTS-f0``), with ``--dependency=afterok`` on the steps it
needs (``afterany`` on the matrix rows before the report, so that one failed row still gets a
report that lists it, as the local run does) and ``--kill-on-invalid-dep=yes`` (a job whose
dependency failed leaves the queue instead of waiting forever). Each job logs to
``DIR/slurm/logs/nj-ID-JOBID.log``; a job that finished writes ``DIR/slurm/JOBID.ok``. What was
submitted is recorded in ``DIR/slurm/jobs.json``: a resubmission reuses jobs of the study still in
the queue, skips finished steps and submits the rest again.

Before anything is queued, what the jobs ask for (CPUs, memory, GPUs) is checked against what
``sinfo`` says the partition's nodes have (:func:`check_fits`): a job no node can hold would
wait forever. While ``--wait`` waits, a job that SLURM keeps pending for a reason that no time
cures (:data:`NEVER_STARTS`: ``PartitionConfig``, ``PartitionTimeLimit``, ...) ends the wait with
exit 1, naming the job and the reason (:func:`wait_for`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from nnunet_joint.errors import InputError
from nnunet_joint.io import write_json
from nnunet_joint.study.graph import Step, check_graph, steps_to_run

JOB_PREFIX = "nj-"
#: a job state in ``squeue`` of a job that will still run or runs now
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


@dataclass(frozen=True)
class Resources:
    """What each job asks for. ``None`` leaves the option out (the cluster's default applies).

    Attributes:
        gpus: GPUs of the steps that train or predict (the others ask for none).
        cpus: CPUs per job; also the torch threads of its training (``nnUNet_joint_threads``).
        mem: memory per job, in ``sbatch --mem`` units (``32G``).
        time: time limit per job (``sbatch --time``: ``2-00:00:00``).
        partition: ``sbatch --partition``.
        account: ``sbatch --account``.
    """

    gpus: int = 1
    cpus: int | None = 8
    mem: str | None = "32G"
    time: str | None = None
    partition: str | None = None
    account: str | None = None

    def of(self, step: Step) -> dict:
        """This step's resources (no GPU for the data and report steps)."""
        wanted = asdict(self)
        wanted["gpus"] = self.gpus if step.gpu and self.gpus else None
        return {k: v for k, v in wanted.items() if v is not None}

    @staticmethod
    def sbatch_options(resources: dict) -> list[str]:
        flags = {"gpus": "--gres=gpu:{}", "cpus": "--cpus-per-task={}", "mem": "--mem={}", "time": "--time={}",
                 "partition": "--partition={}", "account": "--account={}"}
        return [flags[k].format(v) for k, v in resources.items()]


def job_name(step: Step) -> str:
    return JOB_PREFIX + step.id


def folder(run_root: Path) -> Path:
    return run_root / "slurm"


def log_pattern(run_root: Path, step: Step) -> Path:
    """``%j`` is SLURM's job id."""
    return folder(run_root) / "logs" / f"{job_name(step)}-%j.log"


def ok_file(run_root: Path, job_id: str) -> Path:
    return folder(run_root) / f"{job_id}.ok"


def mark_job_finished(run_root: Path) -> None:
    """Inside a SLURM job (``SLURM_JOB_ID``): record that its step finished."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        ok_file(run_root, job).parent.mkdir(parents=True, exist_ok=True)
        ok_file(run_root, job).write_text("finished\n", encoding="utf-8")


def job_list(steps: Sequence[Step], command_of: Callable[[Step], list[str]], resources: Resources,
             run_root: Path) -> list[dict]:
    """The plain job list: one entry per step, in an order where every job follows its dependencies.

    ``after``: jobs that must have finished successfully, except those marked ``optional`` (a row
    of the matrix), whose failure is listed in the report instead; ``done``: finished already.
    """
    check_graph(steps)
    todo = {s.id for s in steps_to_run(steps)}
    by_id = {s.id: s for s in steps}
    return [{"id": s.id, "name": job_name(s), "description": s.name, "command": command_of(s),
             "after": list(s.after), "after_optional": [d for d in s.after if by_id[d].optional],
             "optional": s.optional, "done": s.id not in todo, "resources": resources.of(s),
             "log": str(log_pattern(run_root, s))} for s in steps]


def write_job_list(jobs: list[dict], path: Path) -> None:
    write_json({"format": "nnunet_joint job list v1", "jobs": jobs}, path)


def _slurm(cmd: list[str], environment: dict[str, str] | None = None) -> str:
    """A SLURM command's output; a missing or failing command is one ``error:`` line (exit 2)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=environment)
    except FileNotFoundError:
        raise InputError(None, f"{cmd[0]} not found: is SLURM installed and on PATH?") from None
    if done.returncode != 0:
        raise InputError(None, f"{cmd[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


#: ``squeue`` attempts before a failure is final, and the first wait between them (doubling). A busy
#: slurmctld answers ``Socket timed out on send/recv operation``; measured on the test node under a
#: load of 10 on 2 cores, so a study waiting hours on its jobs must not die of one such answer.
SQUEUE_ATTEMPTS = 6
SQUEUE_RETRY_S = 2.0


def queue(attempts: int = SQUEUE_ATTEMPTS, retry_s: float = SQUEUE_RETRY_S) -> dict[str, tuple[str, str]]:
    """Job id → (state, reason) of this user's jobs in the queue; a failing ``squeue`` is asked again (up to
    ``attempts`` times, waiting ``retry_s``, 2 x ``retry_s``, ...) before its error is final."""
    failed = 0
    while True:
        try:
            out = _slurm(["squeue", "--noheader", "--user", str(os.getuid()), "--format", "%i %T %r"])
            return {fields[0]: (fields[1], " ".join(fields[2:])) for fields in map(str.split, out.splitlines())
                    if len(fields) >= 2}
        except InputError as e:
            failed += 1
            if failed >= attempts or "not found" in e.problem:  # no squeue at all is not transient
                raise
            time.sleep(retry_s * 2 ** (failed - 1))


def active_jobs(attempts: int = SQUEUE_ATTEMPTS, retry_s: float = SQUEUE_RETRY_S) -> dict[str, str]:
    """Job id → state of this user's jobs in the queue (:func:`queue`)."""
    return {job: state for job, (state, _) in queue(attempts, retry_s).items()}


# ----------------------------------------------------------------------------- what the nodes have


@dataclass(frozen=True)
class Node:
    """One node of a partition as ``sinfo`` reports it: CPUs, memory (MB) and GPUs (from its GRES)."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int


def gpus_of(gres: str) -> int:
    """GPUs in ``sinfo``'s GRES field: ``gpu:2``, ``gpu:a100:4(S:0-1)``, several comma-separated; ``(null)``: 0."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def megabytes(mem: str) -> int:
    """``sbatch --mem`` units in MB: a number with an optional K, M (the default), G or T suffix.

    Raises:
        InputError: not such an amount (names ``--slurm-mem``).
    """
    text = mem.strip().upper()
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}.get(text[-1:], None)
    number = text[:-1] if scale is not None else text
    try:
        return int(float(number) * (scale or 1))
    except ValueError:
        raise InputError(None, f"--slurm-mem {mem}: not an amount of memory (e.g. 16G, 16000M)") from None


def partition_nodes(partition: str | None) -> tuple[str, list[Node]]:
    """The partition's name and nodes (``sinfo``); without ``partition``, the cluster's default one.

    Raises:
        InputError: no such partition, or no default one (names the partitions ``sinfo`` lists).
    """
    out = _slurm(["sinfo", "--noheader", "--Node", "--format", "%N|%P|%c|%m|%G"])
    by_partition: dict[str, list[Node]] = {}
    default = None
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        name, part, cpus, memory, gres = fields
        if part.endswith("*"):
            part = default = part[:-1]
        by_partition.setdefault(part, []).append(Node(name, int(cpus or 0), int(memory or 0), gpus_of(gres)))
    wanted = partition or default
    if wanted not in by_partition:
        listed = ", ".join(sorted(by_partition)) or "none"
        what = f"--slurm-partition {partition}: no such partition" if partition else "no default partition"
        raise InputError(None, f"{what} (sinfo lists: {listed}); give one with --slurm-partition")
    return wanted, by_partition[wanted]


def check_fits(resources: Resources, steps: Sequence[Step], partition: str, nodes: Sequence[Node]) -> None:
    """Refuse, before anything is queued, jobs that no node of the partition can hold.

    Raises:
        InputError: one line naming the option to change and what the nodes have.
    """
    most_cpus = max(n.cpus for n in nodes)
    if resources.cpus is not None and resources.cpus > most_cpus:
        raise InputError(None, f"--slurm-cpus {resources.cpus}: the nodes of partition {partition} have at most "
                               f"{most_cpus} CPUs; give --slurm-cpus {most_cpus} or fewer")
    most_mb = max(n.memory_mb for n in nodes)
    if resources.mem is not None and megabytes(resources.mem) > most_mb:
        raise InputError(None, f"--slurm-mem {resources.mem}: the nodes of partition {partition} have at most "
                               f"{most_mb}M of memory; give --slurm-mem {most_mb}M or less")
    gpus = max((resources.of(s).get("gpus", 0) for s in steps), default=0)
    most_gpus = max(n.gpus for n in nodes)
    if gpus > most_gpus:
        fix = (f"give --slurm-gpus {most_gpus} or fewer" if most_gpus
               else "train on CPUs with --device cpu (its jobs ask for no GPU), or choose a GPU partition with "
                    "--slurm-partition")
        raise InputError(None, f"--slurm-gpus {gpus}: the nodes of partition {partition} have "
                               f"{f'at most {most_gpus}' if most_gpus else 'no'} GPUs (sinfo's GRES); {fix}")


def submitted(run_root: Path) -> dict:
    """What was submitted last for this run folder: ``{"submitted_at": epoch, "jobs": {step: job id}}``."""
    import json

    try:
        return json.loads((folder(run_root) / "jobs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def submit(steps: Sequence[Step], command_of: Callable[[Step], list[str]], resources: Resources, run_root: Path,
           environment: dict[str, str] | None = None) -> dict[str, str]:
    """Submit every step still to run; returns step id → job id of the study's jobs (reused ones included).

    A step whose job from an earlier submission is still in the queue keeps that job; finished steps
    are not submitted; everything else (new, failed, cancelled) is.
    """
    todo = steps_to_run(steps)
    if todo:
        check_fits(resources, todo, *partition_nodes(resources.partition))
    previous = submitted(run_root).get("jobs", {})
    queued = active_jobs() if previous else {}
    by_id = {s.id: s for s in steps}
    jobs: dict[str, str] = {}
    (folder(run_root) / "logs").mkdir(parents=True, exist_ok=True)
    for step in todo:
        old = previous.get(step.id)
        if old is not None and queued.get(old) in ACTIVE_STATES:
            jobs[step.id] = old
            continue
        ok = [jobs[d] for d in step.after if d in jobs and not by_id[d].optional]
        any_end = [jobs[d] for d in step.after if d in jobs and by_id[d].optional]
        dependency = ",".join(kind + ":" + ":".join(ids) for kind, ids in (("afterok", ok), ("afterany", any_end))
                              if ids)
        cmd = ["sbatch", "--parsable", f"--job-name={job_name(step)}", f"--output={log_pattern(run_root, step)}",
               "--kill-on-invalid-dep=yes", *Resources.sbatch_options(resources.of(step))]
        exports = {"nnUNet_joint_threads": str(resources.cpus)} if resources.cpus else {}
        cmd.append("--export=ALL" + "".join(f",{k}={v}" for k, v in exports.items()))
        if dependency:
            cmd.append(f"--dependency={dependency}")
        cmd.append("--wrap=" + shlex.join(command_of(step)))
        jobs[step.id] = _slurm(cmd, environment).split(";")[0].strip()
    write_json({"submitted_at": time.time(), "jobs": jobs}, folder(run_root) / "jobs.json")
    return jobs


def job_log(run_root: Path, step_id: str, job_id: str) -> Path:
    return folder(run_root) / "logs" / f"{JOB_PREFIX}{step_id}-{job_id}.log"


#: Pending reasons of a job that no waiting cures, and what each means for this study's jobs.
NEVER_STARTS = {
    "PartitionConfig": "it asks for more CPUs, memory or GPUs than the partition's nodes have, or for "
                       "something the partition does not allow",
    "PartitionTimeLimit": "its --slurm-time is above the partition's time limit",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "BadConstraints": "no node meets its constraints",
    "ReqNodeNotAvail": "the nodes it needs are not available (down, drained or reserved)",
    "InvalidAccount": "its --slurm-account is not valid",
    "InvalidQOS": "its quality of service is not valid",
    "DependencyNeverSatisfied": "a job it depends on failed",
}


def never_starts(reason: str) -> str | None:
    """What a pending ``reason`` means when no waiting cures it (``None``: the job may still start).
    ``squeue`` may add detail (``ReqNodeNotAvail, UnavailableNodes:n1``)."""
    key = reason.split(",")[0].strip()
    return NEVER_STARTS.get(key)


def wait_for(jobs: dict[str, str], run_root: Path, poll_s: float = 5.0) -> list[str]:
    """Block until the jobs left the queue, or one of them is pending for a reason that no waiting cures;
    returns one line per job that did not finish (name, id, log) or can never start (name, id, reason)."""
    while True:
        queued = queue()
        mine = {step: queued.get(job) for step, job in jobs.items()}
        stuck = [(step, state[1]) for step, state in mine.items()
                 if state is not None and state[0] == "PENDING" and never_starts(state[1])]
        if stuck:
            waiting = " ".join(job for step, job in jobs.items() if mine[step] is not None)
            return [f"job {jobs[step]} ({JOB_PREFIX}{step}) can never start: SLURM keeps it pending with reason "
                    f"{reason} ({never_starts(reason)}); cancel the study's jobs (scancel {waiting}) and submit "
                    "again with other --slurm-* options" for step, reason in stuck]
        if not any(state is not None and state[0] in ACTIVE_STATES for state in mine.values()):
            break
        time.sleep(poll_s)
    return [f"job {job} ({JOB_PREFIX}{step}) failed; see {job_log(run_root, step, job)}"
            for step, job in jobs.items() if not ok_file(run_root, job).is_file()]


def print_jobs(jobs: dict[str, str], steps: Sequence[Step]) -> None:
    names = {s.id: s.name for s in steps}
    for step, job in jobs.items():
        print(f"{job}\t{JOB_PREFIX}{step}\t{names[step]}")
    sys.stdout.flush()
