"""Training throughput: our SE-ResNet presets next to plain ``nnUNetTrainer``, in pixels per second.

Same preprocessed dataset, same process, interleaved rounds (plain, ours, plain, ours, ...) so that
machine noise hits every contender alike. Each trainer uses its own plans as a user would: plain
nnU-Net ``nnUNetPlans``, ours ``nnUNetSEResNet18Plans`` / ``nnUNetSEResNet50Plans`` planned on the same
dataset with our presets (as ``nnUNetSEResNet18PlansBench`` etc., so plans carried from LiTS are not
mixed in; spacing and normalisation are nnU-Net's in both), so patch and batch size differ; throughput is therefore compared as pixels per second (batch x patch area / step
time). Also printed: parameters and multiply-adds per sample at the planned patch (torch's
``FlopCounterMode``: FLOPs / 2), forward and backward counted once each, for one sample.

    python benchmarks/bench_training_speed.py --run RUN_DIR [--dataset 504] [--iterations 5] [--rounds 3]

RUN_DIR is a ``nnunet_joint_reproduce`` run folder (its nnUNet_preprocessed is used; missing preset
plans are planned and preprocessed into it first); without ``--run`` a tiny phantom run is prepared
in a temporary folder. Timing covers ``train_step`` (forward, loss, backward, optimiser step) on
batches drawn beforehand, so data augmentation workers do not blur the comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnunet_joint.planning import plan_and_preprocess, planner_of, plans_name_of  # noqa: E402
from nnunet_joint.names import DATASET_FOLDERS  # noqa: E402
from nnunet_joint.study.data import prepare_data  # noqa: E402
from nnunet_joint.study.folder import RunFolder  # noqa: E402


def make_trainer(name: str, dataset_folder: Path, plans_name: str, device: torch.device):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    plans = json.loads((dataset_folder / f"{plans_name}.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False  # what nnU-Net's run_training sets before building a trainer
    dataset_json = json.loads((dataset_folder / "dataset.json").read_text(encoding="utf-8"))
    trainer = cls(plans, "2d", 0, dataset_json, device)
    trainer.initialize()
    return trainer


def benchmark_arguments(description: str, rounds: int) -> argparse.ArgumentParser:
    """The options the training benchmarks share: run folder, dataset, steps, rounds, device."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--run", type=Path, help="reproduce run folder with nnUNet_preprocessed")
    p.add_argument("--dataset", type=int, default=504, choices=(502, 503, 504))
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--device", default="cpu")
    return p


@contextlib.contextmanager
def benchmark_run(run_dir: Path | None):
    """The run folder to read (a tiny phantom run in a temporary folder when ``None``), with nnU-Net's
    environment pointing at it and results going to a temporary folder; removed again afterwards."""
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            prepare_data(RunFolder(run_dir), "tiny", 0)
        run = RunFolder(run_dir.resolve())
        os.environ.update(run.environment(nnUNet_results=stack.enter_context(tempfile.TemporaryDirectory())))
        yield run


def finish_loaders(trainers) -> None:
    """Stop the data-augmentation workers of trainers whose dataloaders were started."""
    for t in trainers:
        if t.dataloader_train is not None and hasattr(t.dataloader_train, "_finish"):
            t.dataloader_train._finish()
            t.dataloader_val._finish()


def time_steps(trainer, batches) -> float:
    """Seconds per training step over ``batches``."""
    trainer.network.train()
    start = time.perf_counter()
    for batch in batches:
        trainer.train_step(batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(batches)


def interleaved_seconds(trainers: dict, batches: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each trainer (label -> one value per round), rounds interleaved across trainers
    so that machine noise hits every contender alike."""
    seconds: dict[str, list[float]] = {label: [] for label in trainers}
    for _ in range(rounds):
        for label, trainer in trainers.items():
            seconds[label].append(time_steps(trainer, batches[label]))
    return seconds


def multiply_adds(network: torch.nn.Module, patch: list[int], device: torch.device) -> tuple[float, float]:
    """Multiply-adds of one sample's forward and backward pass at ``patch``."""
    from torch.utils.flop_counter import FlopCounterMode

    network.train()
    x = torch.zeros(1, 1, *patch, device=device)
    with FlopCounterMode(display=False) as counter:
        out = network(x)
        forward = counter.get_total_flops() / 2
        loss = sum(o.float().mean() for o in out) if isinstance(out, (list, tuple)) else out.float().mean()
        loss.backward()
    network.zero_grad(set_to_none=True)
    return forward, counter.get_total_flops() / 2 - forward


def main() -> None:
    p = benchmark_arguments(__doc__.splitlines()[0], rounds=3)
    p.add_argument("--encoders", nargs="+", default=["seresnet18", "seresnet50"])
    args = p.parse_args()

    with benchmark_run(args.run) as run:
        compare(run, args)


def compare(run: RunFolder, args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    dataset_folder = run.preprocessed / DATASET_FOLDERS[args.dataset]
    # every preset planned on this dataset itself (not plans carried from LiTS), under a name of the
    # benchmark's own, so all contenders are planned from the same fingerprint by the same rules
    bench_plans = {enc: f"{plans_name_of(enc)}Bench" for enc in args.encoders}
    with run.nnunet_environment():
        for encoder, plans in bench_plans.items():
            if not (dataset_folder / f"{plans}.json").is_file():
                plan_and_preprocess([args.dataset], planner_of(encoder), plans_name=plans)
    framework = "nnUNetTrainerJoint" if args.dataset == 504 else "nnUNetTrainerSEResNetSeg"

    contenders = [("nnUNetTrainer (plain)", "nnUNetTrainer", "nnUNetPlans")]
    contenders += [(f"{framework} {enc}", framework, bench_plans[enc]) for enc in args.encoders]
    trainers = {label: make_trainer(name, dataset_folder, plans, device) for label, name, plans in contenders}
    batches = {}
    for label, trainer in trainers.items():
        trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
        batches[label] = [next(trainer.dataloader_train) for _ in range(args.iterations)]
    for label, trainer in trainers.items():
        time_steps(trainer, batches[label][:2])  # warm-up

    seconds = interleaved_seconds(trainers, batches, args.rounds)

    print(f"dataset {DATASET_FOLDERS[args.dataset]}, device {device}, torch threads {torch.get_num_threads()}, "
          f"{args.iterations} steps x {args.rounds} interleaved rounds (median step time)")
    rows = []
    for label, trainer in trainers.items():
        cfg = trainer.configuration_manager
        step = statistics.median(seconds[label])
        pixels = cfg.batch_size * int(torch.tensor(cfg.patch_size).prod())
        forward, backward = multiply_adds(trainer.network, list(cfg.patch_size), device)
        params = sum(p.numel() for p in trainer.network.parameters())
        rows.append((label, trainer.plans_manager.plans_name, "x".join(map(str, cfg.patch_size)), cfg.batch_size,
                     step, pixels / step, params, forward, backward))
    base = rows[0][5]
    print(f"{'trainer':<30} {'plans':<22} {'patch':>8} {'batch':>5} {'s/step':>7} {'px/s':>8} {'ratio':>6} "
          f"{'params':>8} {'GMAC/sample fwd+bwd':>20}")
    for label, plans, patch, batch, step, speed, params, fwd, bwd in rows:
        print(f"{label:<30} {plans:<22} {patch:>8} {batch:>5} {step:7.2f} {speed:8.0f} {speed / base:6.2f} "
              f"{params / 1e6:7.2f}M {fwd / 1e9:9.2f} + {bwd / 1e9:.2f}")
    finish_loaders(trainers.values())


if __name__ == "__main__":
    main()
