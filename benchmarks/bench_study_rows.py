"""Study rows as the study trains them: plain nnU-Net and our joint trainer side by side, whole processes.

``nnunet_joint_reproduce`` trains two rows at a time on a 2-core machine, each ``nnUNetv2_train``
with ``cpu_count // 2`` torch threads (``--jobs 2``). This benchmark starts exactly two such
processes at the same moment on the joint dataset (Dataset504) of a prepared run folder:

* plain nnU-Net: ``nnUNetv2_train 504 2d FOLD -tr nnUNetTrainer_JointBudget -p nnUNetPlans``
  (``nnUNetTrainer`` with the budget variables; nothing else changed);
* ours: ``nnUNetv2_train 504 2d FOLD -tr nnUNetTrainerJoint -p nnUNetSEResNet18Plans``;

both with the study's 30 iterations per epoch for ``--epochs`` epochs, and prints from nnU-Net's own
log lines, per process: start-up (process start to its ``Epoch 0`` line), the median of nnU-Net's
``Epoch time`` (training iterations, validation iterations, learning-curve counts), the median gap
between one epoch's end and the next one's start, after the epochs that save ``checkpoint_latest.pth``
and draw ``progress.png`` (every tenth of the epochs) and after the others (where only a new best
checkpoint may be saved), the final validation, and the whole process's wall time; then the ratio
plain/ours of each.

    python benchmarks/bench_study_rows.py --run RUN_DIR [--epochs 10] [--fold 0]

RUN_DIR is an ``nnunet_joint_reproduce`` run folder with the data prepared (``--stop-after data``;
``--oracle-crops`` makes that a two-minute step). Its preprocessed data is only read; results go to
a temporary folder.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnunet_joint.cpu import cpu_threads  # noqa: E402
from nnunet_joint.names import DEFAULT_PLANS, PLAIN_TRAINER  # noqa: E402
from nnunet_joint.planning import plans_name_of  # noqa: E402
from nnunet_joint.study.folder import RunFolder, nnunet_bin  # noqa: E402
from nnunet_joint.training.settings import ENV_EPOCHS, ENV_ITERATIONS, ENV_THREADS, Budget  # noqa: E402

STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): "
#: label -> (trainer, plans) of the study profile's plain row and joint row
ROWS = {"plain nnU-Net": (PLAIN_TRAINER, DEFAULT_PLANS), "joint (ours)": ("nnUNetTrainerJoint", plans_name_of("seresnet18"))}


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def phases(log: str, started: float, ended: float, save_every: int) -> dict[str, float]:
    """Seconds of each phase of one ``nnUNetv2_train`` process, read from its output.

    The gaps between epochs are split into those after an epoch that saves ``checkpoint_latest.pth``
    and draws ``progress.png`` (every ``save_every``-th) and the others, so the cost of both shows.
    """
    epoch_starts = [stamp(m) for m in re.findall(STAMP + r"Epoch \d+ *$", log, re.MULTILINE)]
    epoch_ends = [stamp(m) for m in re.findall(STAMP + r"Epoch time: ", log, re.MULTILINE)]
    epoch_times = [float(v) for v in re.findall(r"Epoch time: ([\d.]+) s", log)]
    (done,) = [stamp(m) for m in re.findall(STAMP + r"Training done\.", log, re.MULTILINE)]
    gaps = [start - end for end, start in zip(epoch_ends, epoch_starts[1:])]
    saving = [g for epoch, g in enumerate(gaps) if (epoch + 1) % save_every == 0]
    other = [g for epoch, g in enumerate(gaps) if (epoch + 1) % save_every != 0]
    return {"start-up": epoch_starts[0] - started, "epoch (median)": median(epoch_times),
            "gap, saving + plot (median)": median(saving), "gap, other (median)": median(other),
            "training": done - epoch_starts[0], "final validation": ended - done, "whole process": ended - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="reproduce run folder with nnUNet_preprocessed")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=30, help="iterations per epoch (the study's 30)")
    p.add_argument("--fold", default="0")
    p.add_argument("--jobs", type=int, default=2, help="processes sharing the machine, as reproduce's --jobs")
    args = p.parse_args()
    run = RunFolder(args.run.resolve())
    threads = max(1, cpu_threads() // args.jobs)  # reproduce's rule (Study.threads_env)
    with tempfile.TemporaryDirectory() as results, tempfile.TemporaryDirectory() as logs:
        env = run.environment(nnUNet_results=results, **{ENV_EPOCHS: str(args.epochs),
                                                         ENV_ITERATIONS: str(args.iterations), ENV_THREADS: str(threads)})
        procs = {}
        for label, (trainer, plans) in ROWS.items():
            cmd = [nnunet_bin("nnUNetv2_train"), "504", "2d", args.fold, "-tr", trainer, "-p", plans, "-device", "cpu"]
            out = open(Path(logs) / f"{trainer}.log", "w+")
            procs[label] = (subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT), out, time.time())
        ended: dict[str, float] = {}
        while len(ended) < len(procs):  # each process's end, as it happens
            for label, (proc, _, _) in procs.items():
                if label not in ended and proc.poll() is not None:
                    ended[label] = time.time()
            time.sleep(0.2)
        measured = {}
        for label, (proc, out, started) in procs.items():
            out.seek(0)
            log = out.read()
            if proc.returncode != 0:
                sys.exit(f"{label} failed (exit {proc.returncode}):\n" + "\n".join(log.splitlines()[-8:]))
            measured[label] = phases(log, started, ended[label], Budget.checkpoint_every(args.epochs))
    print(f"Dataset504 fold {args.fold}, {args.epochs} epochs x {args.iterations} iterations, {len(ROWS)} processes "
          f"at a time, {threads} torch thread(s) each, seconds")
    labels = list(ROWS)
    print(f"{'phase':<26}" + "".join(f"{label:>16}" for label in labels) + f"{'plain/ours':>12}")
    for phase in measured[labels[0]]:
        values = [measured[label][phase] for label in labels]
        print(f"{phase:<26}" + "".join(f"{v:16.2f}" for v in values) + f"{values[0] / values[1]:12.2f}")


if __name__ == "__main__":
    main()
