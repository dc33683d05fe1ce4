"""``nnunet_joint_reproduce``: the whole pipeline in one self-contained run folder.

``DIR/phantom/`` (when no raw data is given) → LiTS datasets 501/502 (``DIR/nnUNet_raw``,
planned and preprocessed into ``DIR/nnUNet_preprocessed``) → stage 1 (plain nnU-Net, liver, on
501) → the Sheba slices cropped by stage 1 (the cascade; ``--oracle-crops`` for reference-mask
crops) into 503/504, planned, with 502's SE-ResNet plans carried over → the LiTS lesion model
(502) → the experiment matrix (``DIR/nnUNet_results``) → ``DIR/report/``. nnU-Net's three
variables point at the run folder for every step, so with the same variables set a user's
``nnunet_joint_predict`` finds the models.

The pipeline is described once as steps (:meth:`~nnunet_joint.study.steps.Study.steps`): the
local run performs them here (:func:`~nnunet_joint.study.graph.run_local`), ``--scheduler slurm``
submits one job per step (:mod:`nnunet_joint.study.slurm`), and ``--write-jobs`` lists them for any
other scheduler. This module holds the command line: its options, their checks, and which of those
three it does. A new option of the study goes into :func:`build_parser`, :func:`parse_checked` (what
argparse cannot check), :func:`study_of` (into the :class:`~nnunet_joint.study.steps.Study`) and
``Study.cli`` (so that a scheduler's job, which rebuilds the study from its options, repeats it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from nnunet_joint.cpu import passive_openmp
from nnunet_joint.errors import InputError, cli_entry
from nnunet_joint.names import DATASET_FOLDERS, JOINT_DATASET, PLAIN_TRAINER, trainer_name
from nnunet_joint.process import lock_folder
from nnunet_joint.study import matrix
from nnunet_joint.study.folder import RunFolder
from nnunet_joint.study.graph import Progress, run_local
from nnunet_joint.study.profiles import PROFILES, Profile, with_nnunet_length
from nnunet_joint.study.steps import Study


def reproduce(out: Path, profile: Profile, device: str = "cpu", imagenet_weights: Path | None = None,
              lits_dir: Path | None = None, sheba_dir: Path | None = None, seed: int = 0,
              folds: Sequence[int] | None = None, stop_after: str | None = None, quiet: bool = False,
              oracle_crops: bool = False, jobs: int | None = None, repeats: int = 1,
              rows: Sequence[str] | None = None) -> dict:
    """Run the whole pipeline into ``out``; finished steps and folds are skipped, so a rerun resumes.

    The papers' cascade: stage 1 (plain nnU-Net on the LiTS volumes) is trained first and crops
    the Sheba slices (``oracle_crops`` crops them with the reference masks instead, which no user
    gets at inference, and the report says so); the LiTS lesion model trains beside stage 1; then
    the matrix. ``jobs`` steps run at a time (default: the profile's). ``repeats`` trains the central
    comparison that many times per fold (``Study.repeats``); ``rows`` runs only those of the profile's rows
    (``--rows``; stage 1, the LiTS pretraining and the crops still run, the report shows those rows).
    """
    run = RunFolder(out.resolve())
    with lock_folder(run.root, "nnunet_joint_reproduce"):
        study = Study(run, profile, device, imagenet_weights, lits_dir, sheba_dir, seed,
                      tuple(folds) if folds is not None else profile.folds, stop_after, oracle_crops,
                      profile.jobs if jobs is None else jobs, repeats, None if rows is None else tuple(rows))
        costs = study.step_costs()
        outcome = run_local(study.steps(), study.jobs, lambda todo: Progress(todo, costs, study.jobs, quiet))
        if "report" in outcome and outcome["report"] is None and not quiet:  # the report step ran and finished
            print(f"report: {run.report / 'report.md'} ({(time.time() - study.started) / 60:.1f} min)")
        return {"run": run.root, **study.reported}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_joint_reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="run folder (created; a rerun resumes it)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                   help="demo: fold 0, joint from scratch and from LiTS (about 10 min on 2 idle CPU cores, as measured); study: "
                        "3 folds, the rows of the papers' questions, the papers' target size (332 slices; about 4.6 h on 2 "
                        "idle CPU cores as measured); full: "
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
    p.add_argument("--rows", nargs="+", metavar="NAME",
                   help="run only these of the profile's rows (with stage 1, the LiTS pretraining and the crops): a "
                        "trainer name (every dataset it runs on) or TRAINER@DatasetXXX_Name, e.g. "
                        f"{trainer_name('cls', 'LiTS')} {PLAIN_TRAINER}@{DATASET_FOLDERS[JOINT_DATASET]}")
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


def parse_checked(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with what argparse cannot check checked (one ``error:`` line each)."""
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
    if args.rows is not None:
        check_rows(args.rows, PROFILES[args.profile])
    return args


def check_rows(names: Sequence[str], profile: Profile) -> None:
    """Each ``--rows`` name must select at least one of the profile's rows (one line naming them otherwise)."""
    rows = matrix.selected(profile.rows)
    for name in names:
        if not matrix.selected((name,)) or not set(matrix.selected((name,))) & set(rows):
            known = ", ".join(sorted({e.trainer for e in rows}))
            raise InputError(None, f"--rows {name}: not a row of profile {profile.name} (its rows: {known}; or "
                                   f"TRAINER@DatasetXXX_Name for one dataset)")


def device_of(args: argparse.Namespace) -> str:
    """``--device``; unset: cuda for jobs that run elsewhere (on GPU nodes) unless they get no GPU, else cuda
    when this machine has one."""
    if args.device is not None:
        return args.device
    if args.scheduler == "slurm" or args.write_jobs:
        return "cpu" if args.slurm_gpus == 0 else "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def study_of(args: argparse.Namespace, profile: Profile, device: str) -> Study:
    """The study the options describe (a scheduler's job rebuilds it from the same options)."""
    return Study(RunFolder(args.out.resolve()), profile, device, args.imagenet_weights, args.lits, args.sheba,
                 args.seed, tuple(args.folds) if args.folds else profile.folds, args.stop_after, args.oracle_crops,
                 repeats=args.repeats, rows=None if args.rows is None else tuple(args.rows))


def scheduled(args: argparse.Namespace, study: Study) -> int:
    """``--write-jobs`` and ``--scheduler slurm``: list or submit the study's steps; with ``--wait``, wait for
    the jobs (exit 1 naming a job that failed or can never start)."""
    from nnunet_joint.study import slurm

    run = study.run
    resources = slurm.Resources(args.slurm_gpus if args.slurm_gpus is not None else int(study.device != "cpu"),
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


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    passive_openmp()  # before torch is imported (stage 1 runs in this process while cropping)
    args = parse_checked(argv)
    device = device_of(args)
    profile = with_nnunet_length(PROFILES[args.profile]) if args.nnunet_length else PROFILES[args.profile]
    if args.step is None and args.scheduler == "local" and args.write_jobs is None:
        from nnunet_joint.checkpoints import security_events, security_exit_code

        events_before = len(security_events(args.out))
        reproduce(args.out, profile, device, args.imagenet_weights, args.lits, args.sheba, args.seed,
                  args.folds, args.stop_after, args.quiet, args.oracle_crops, args.jobs, args.repeats, args.rows)
        return security_exit_code(args.out, events_before)  # 3: a checkpoint would have run code (docs/reliability.md)
    study = study_of(args, profile, device)
    if args.step is None:
        return scheduled(args, study)
    from nnunet_joint.study import slurm

    study.started = slurm.submitted(study.run.root).get("submitted_at", study.started)
    run_step(study, args.step)
    slurm.mark_job_finished(study.run.root)
    return 0
