"""Seconds per training iteration: nnU-Net's own ``nnUNetTrainer`` next to our joint trainer, before and after.

What a study's budget counts is iterations, so this compares whole ``train_step`` calls (forward,
loss, backward, gradient clipping, optimiser step) per iteration, each trainer with its own plans
and batches as ``nnUNetv2_train`` would use them:

* ``nnUNetTrainer`` left at its defaults, ``nnUNetPlans`` (what the issue calls plain nnU-Net);
* ``nnUNetTrainerJoint``, ``nnUNetSEResNet18Plans``, *before*: ``nnUNet_joint_fused_sgd=0``
  (nnU-Net's per-tensor SGD loop, as before the switch existed);
* ``nnUNetTrainerJoint``, *after*: the current defaults (fused SGD on CPU).

The two joint trainers start from the same weights and step on the same batches, so their final
losses are printed too: they must agree to float rounding. Rounds are interleaved (plain, before,
after, plain, ...) so machine noise hits every contender alike; the median is printed.

    python benchmarks/bench_training_iteration.py --run RUN_DIR [--dataset 504] [--iterations 5] [--rounds 5] [--threads 1 2]

Each thread count gets its own table (default: 1 and every core). One thread per training is the
study's layout (``nnunet_joint_reproduce`` runs two trainings at a time on 2 cores, each with
``cpu_count // jobs`` threads); every core for one training is what ``nnUNetv2_train -device cpu``
does alone. The two differ here: at this batch our network's small deep feature maps (2 x 2 at
1/32) gain little from a second thread, nnU-Net's U-Net more.

RUN_DIR is an ``nnunet_joint_reproduce`` run folder with the data prepared (its ``nnUNet_preprocessed``
is read, nothing is written there); without ``--run`` a tiny phantom run is prepared in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_training_speed import (benchmark_arguments, benchmark_run, finish_loaders,  # noqa: E402 (this folder)
                                  interleaved_seconds, make_trainer, time_steps)
from nnunet_joint.cpu import cpu_threads  # noqa: E402
from nnunet_joint.names import DATASET_FOLDERS  # noqa: E402
from nnunet_joint.study.folder import RunFolder  # noqa: E402
from nnunet_joint.training.settings import ENV_FUSED_SGD  # noqa: E402


def make_with(environment: dict[str, str], *args):
    """A trainer built and initialised (optimiser included) while ``environment`` is set."""
    saved = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    try:
        return make_trainer(*args)
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def main() -> None:
    parser = benchmark_arguments(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--threads", type=int, nargs="+", help="torch thread counts, one table each (default: 1 and every core)")
    args = parser.parse_args()

    with benchmark_run(args.run) as run:
        compare(run, args)


def compare(run: RunFolder, args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    dataset_folder = run.preprocessed / DATASET_FOLDERS[args.dataset]
    ours = "nnUNetTrainerJoint" if args.dataset == 504 else "nnUNetTrainerSEResNetSeg"

    plain = make_trainer("nnUNetTrainer", dataset_folder, "nnUNetPlans", device)
    before = make_with({ENV_FUSED_SGD: "0"}, ours, dataset_folder, "nnUNetSEResNet18Plans", device)
    after = make_with({}, ours, dataset_folder, "nnUNetSEResNet18Plans", device)
    after.network.load_state_dict(before.network.state_dict())
    trainers = {"nnUNetTrainer (defaults)": plain, f"{ours} before": before, f"{ours} after": after}

    for trainer in (plain, before):
        trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    batches = {"plain": [next(plain.dataloader_train) for _ in range(args.iterations)],
               "ours": [next(before.dataloader_train) for _ in range(args.iterations)]}
    batches_of = {label: batches["plain" if trainer is plain else "ours"] for label, trainer in trainers.items()}

    time_steps(plain, batches["plain"][:2])  # warm-up; the joint trainers' is the loss check below
    # same weights, same batches, once each: the two joint trainers' losses must agree
    losses = {label: [float(trainer.train_step(b)["loss"]) for b in batches_of[label]]
              for label, trainer in trainers.items() if trainer is not plain}
    finish_loaders(trainers.values())  # the batches are drawn: no augmentation worker runs beside the timing

    for threads in args.threads or sorted({1, cpu_threads()}):
        torch.set_num_threads(threads)
        time_steps(plain, batches["plain"][:2])  # warm-up at this thread count
        time_steps(after, batches["ours"][:2])
        seconds = interleaved_seconds(trainers, batches_of, args.rounds)
        layout = ("the study's layout: --jobs 2 trainings, one core each" if threads == 1 else
                  "nnU-Net's -device cpu default: every core to one training" if threads == cpu_threads() else "")
        print(f"\ndataset {DATASET_FOLDERS[args.dataset]}, device {device}, torch threads {threads}"
              f"{f' ({layout})' if layout else ''}, {args.iterations} steps x {args.rounds} interleaved rounds (median)")
        base = statistics.median(seconds["nnUNetTrainer (defaults)"])
        print(f"{'trainer':<34} {'plans':<22} {'patch':>8} {'batch':>5} {'ms/iter':>8} {'plain/this':>10}")
        for label, trainer in trainers.items():
            cfg = trainer.configuration_manager
            step = statistics.median(seconds[label])
            print(f"{label:<34} {trainer.plans_manager.plans_name:<22} {'x'.join(map(str, cfg.patch_size)):>8} "
                  f"{cfg.batch_size:>5} {1000 * step:8.1f} {base / step:10.2f}")
    (label_b, loss_b), (label_a, loss_a) = losses.items()
    print(f"losses of the first {args.iterations} steps from the same weights and batches:\n"
          f"  {label_b}: {' '.join(f'{v:.6f}' for v in loss_b)}\n  {label_a}: {' '.join(f'{v:.6f}' for v in loss_a)}")


if __name__ == "__main__":
    main()
