"""The study's steps as SLURM jobs (``nnunet_joint_reproduce --scheduler slurm``), and as a plain job list.

Each unfinished step becomes one ``sbatch`` job that runs ``nnunet_joint_reproduce ... --step ID``,
named ``nj-ID`` (``nj-stage1``, ``nj-Joint_LiTS-f0``), with ``--dependency=afterok`` on the steps it
needs (``afterany`` on the matrix rows before the report, so that one failed row still gets a
report that lists it, as the local run does) and ``--kill-on-invalid-dep=yes`` (a job whose
dependency failed leaves the queue instead of waiting forever). Each job logs to
``DIR/slurm/logs/nj-ID-JOBID.log``; a job that finished writes ``DIR/slurm/JOBID.ok``. What was
submitted is recorded in ``DIR/slurm/jobs.json``: a resubmission reuses jobs of the study still in
the queue, skips finished steps and submits the rest again.
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


def active_jobs(attempts: int = SQUEUE_ATTEMPTS, retry_s: float = SQUEUE_RETRY_S) -> dict[str, str]:
    """Job id → state of this user's jobs in the queue; a failing ``squeue`` is asked again (up to
    ``attempts`` times, waiting ``retry_s``, 2 x ``retry_s``, ...) before its error is final."""
    failed = 0
    while True:
        try:
            out = _slurm(["squeue", "--noheader", "--user", str(os.getuid()), "--format", "%i %T"])
            return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)
        except InputError as e:
            failed += 1
            if failed >= attempts or "not found" in e.problem:  # no squeue at all is not transient
                raise
            time.sleep(retry_s * 2 ** (failed - 1))


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
    previous = submitted(run_root).get("jobs", {})
    queue = active_jobs() if previous else {}
    todo = steps_to_run(steps)
    by_id = {s.id: s for s in steps}
    jobs: dict[str, str] = {}
    (folder(run_root) / "logs").mkdir(parents=True, exist_ok=True)
    for step in todo:
        old = previous.get(step.id)
        if old is not None and queue.get(old) in ACTIVE_STATES:
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


def wait_for(jobs: dict[str, str], run_root: Path, poll_s: float = 5.0) -> list[str]:
    """Block until the jobs left the queue; returns one line per job that did not finish (name, id, log)."""
    while any(active_jobs().get(j) in ACTIVE_STATES for j in jobs.values()):
        time.sleep(poll_s)
    return [f"job {job} ({JOB_PREFIX}{step}) failed; see {job_log(run_root, step, job)}"
            for step, job in jobs.items() if not ok_file(run_root, job).is_file()]


def print_jobs(jobs: dict[str, str], steps: Sequence[Step]) -> None:
    names = {s.id: s.name for s in steps}
    for step, job in jobs.items():
        print(f"{job}\t{JOB_PREFIX}{step}\t{names[step]}")
    sys.stdout.flush()
