"""Two CPU trainings side by side, with and without nnU-Net's data-augmentation worker processes.

What the demo and the study run on 2 cores: two trainings at a time, one torch thread each. Each
contender starts two processes at once — the LiTS lesion model (``nnUNetTrainerSEResNetSeg`` on 502 at
the CPU profiles' batch of 12) and a joint row (``nnUNetTrainerJoint`` on 504, its planned batch) — and
each process times its iterations as nnU-Net's loop runs them: fetching the next augmented batch, then
``train_step``. ``nnUNet_n_proc_DA=1`` gives each training one augmentation worker (nnU-Net's
``NonDetMultiThreadedAugmenter``), ``0`` augments in the training process (``SingleThreadedAugmenter``),
which is what ``nnunet_joint_reproduce --device cpu`` sets unless the user set the variable
(:data:`nnunet_joint.study.training.CPU_DA_PROCESSES`). Rounds alternate (1, 0, 1, 0, ...) so that
machine noise hits both alike.

    python benchmarks/bench_augmentation_processes.py --run RUN_DIR [--iterations 40] [--rounds 2]

RUN_DIR is a ``nnunet_joint_reproduce`` run folder whose crops are made (Dataset502 and 504 preprocessed
with the SE-ResNet-18 plans), e.g. the demo's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnunet_joint.names import DATASET_FOLDERS, JOINT_DATASET, LITS_LESION_DATASET

TRAININGS = (("nnUNetTrainerSEResNetSeg", LITS_LESION_DATASET, "12"), ("nnUNetTrainerJoint", JOINT_DATASET, ""))
PLANS = "nnUNetSEResNet18Plans"


def worker(trainer_name: str, dataset: int, iterations: int, warmup: int) -> None:
    """One training in this process: ``iterations`` timed after ``warmup``; prints ms per iteration."""
    import multiprocessing

    import torch

    torch.set_num_threads(1)
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(dataset), "2d", 0, trainer_name, PLANS, device=torch.device("cpu"))
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    for _ in range(warmup):
        trainer.train_step(next(trainer.dataloader_train))
    data = step = 0.0
    for _ in range(iterations):
        t0 = time.perf_counter()
        batch = next(trainer.dataloader_train)
        t1 = time.perf_counter()
        trainer.train_step(batch)
        data, step = data + t1 - t0, step + time.perf_counter() - t1
    print(json.dumps({"data_ms": 1000 * data / iterations, "step_ms": 1000 * step / iterations}), flush=True)
    for child in multiprocessing.active_children():  # the augmentation workers
        child.kill()
    os._exit(0)  # nnU-Net's augmenter threads would keep the process alive


def side_by_side(run: Path, processes: str, iterations: int, results: Path) -> dict[str, dict[str, float]]:
    from nnunet_joint import TRAINERS_DIR

    env = {**os.environ, "nnUNet_raw": str(run / "nnUNet_raw"), "nnUNet_preprocessed": str(run / "nnUNet_preprocessed"),
           "nnUNet_results": str(results), "nnUNet_extTrainer": str(TRAINERS_DIR), "nnUNet_n_proc_DA": processes,
           "OMP_WAIT_POLICY": "PASSIVE", "nnUNet_joint_epochs": "1", "nnUNet_joint_iterations": str(iterations + 10)}
    started = []
    for trainer, dataset, batch in TRAININGS:
        trainer_env = {**env, **({"nnUNet_joint_max_batch_size": batch} if batch else {})}
        started.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", trainer, str(dataset), str(iterations)],
            env=trainer_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    out = {}
    for (trainer, _, _), proc in zip(TRAININGS, started):
        stdout, _ = proc.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"error: {trainer} with nnUNet_n_proc_DA={processes} failed (exit {proc.returncode})")
        out[trainer] = json.loads(lines[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), warmup=5)
    joint = Path("nnUNet_preprocessed") / DATASET_FOLDERS[JOINT_DATASET]
    if args.run is None or not (args.run / joint).is_dir():
        p.error(f"--run needs a reproduce run folder whose crops are made ({joint})")
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as results:
        for _ in range(args.rounds):
            for processes in ("1", "0"):
                for trainer, t in side_by_side(args.run, processes, args.iterations, Path(results)).items():
                    times.setdefault((trainer, processes), []).append(t["data_ms"] + t["step_ms"])
    print(f"two trainings side by side, 1 torch thread each, {args.iterations} iterations per round, "
          f"{args.rounds} rounds; ms per iteration (augmented batch + train_step), median over rounds")
    print(f"{'training':32s} {'1 worker each':>14s} {'in-process':>11s} {'ratio':>6s}")
    for trainer, _, _ in TRAININGS:
        with_worker = statistics.median(times[(trainer, "1")])
        in_process = statistics.median(times[(trainer, "0")])
        print(f"{trainer:32s} {with_worker:14.0f} {in_process:11.0f} {in_process / with_worker:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
