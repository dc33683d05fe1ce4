"""Training iterations per second: our SE-ResNet trainers next to plain ``nnUNetTrainer``.

Same preprocessed dataset, same plans file, same process, interleaved rounds (plain, ours,
plain, ours, ...) so that machine noise hits both alike; prints per-trainer patch and batch size,
iterations/s (median over rounds), the ratio to plain nnU-Net and the parameter counts. Each
trainer draws its batches from its own nnU-Net loader (ours round the planned patch up to a
multiple of the encoder's stride, 16), so the patch column says what was compared.

    python benchmarks/bench_training_speed.py --run RUN_DIR [--dataset 504] [--iterations 10] [--rounds 3]

RUN_DIR is a ``nnunet_joint_reproduce`` run folder (its nnUNet_preprocessed is used); without
``--run`` a tiny phantom run is prepared in a temporary folder first. Timing covers
``train_step`` (forward, loss, backward, optimiser step) on batches drawn beforehand, so data
augmentation workers do not blur the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnunet_joint.reproduce import Progress, RunFolder, prepare_data  # noqa: E402

DATASETS = {503: "Dataset503_ShebaSeg", 504: "Dataset504_ShebaJoint", 502: "Dataset502_LiTSLesion"}


def make_trainer(name: str, dataset_folder: Path, device: torch.device):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    plans = json.loads((dataset_folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False  # what nnU-Net's run_training sets before building a trainer
    dataset_json = json.loads((dataset_folder / "dataset.json").read_text(encoding="utf-8"))
    trainer = cls(plans, "2d", 0, dataset_json, device)
    trainer.initialize()
    return trainer


def time_steps(trainer, batches) -> float:
    trainer.network.train()
    start = time.perf_counter()
    for batch in batches:
        trainer.train_step(batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return len(batches) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="reproduce run folder with nnUNet_preprocessed")
    p.add_argument("--dataset", type=int, default=504, choices=sorted(DATASETS))
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--encoders", nargs="+", default=["seresnet18", "seresnet50"])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    tmp = None
    if args.run is None:
        tmp = tempfile.TemporaryDirectory()
        args.run = Path(tmp.name)
        prepare_data(RunFolder(args.run), "tiny", 0, None, None, Progress(3))
    run = RunFolder(args.run.resolve())
    results_tmp = tempfile.TemporaryDirectory()
    os.environ.update(RunFolder(run.root).environment(nnUNet_results=results_tmp.name))
    device = torch.device(args.device)
    dataset_folder = run.preprocessed / DATASETS[args.dataset]
    framework = "nnUNetTrainerJoint" if args.dataset == 504 else "nnUNetTrainerSEResNetSeg"

    contenders = [("nnUNetTrainer (plain)", "nnUNetTrainer", None)]
    contenders += [(f"{framework} {enc}", framework, enc) for enc in args.encoders]
    if args.dataset == 503:
        contenders += [(f"nnUNetTrainerYNet {enc}", "nnUNetTrainerYNet", enc) for enc in args.encoders]

    trainers = {}
    for label, name, encoder in contenders:
        if encoder:
            os.environ["nnUNet_joint_encoder"] = encoder
        trainers[label] = make_trainer(name, dataset_folder, device)
    # each trainer draws its batches beforehand from its own loader (our trainers round the patch
    # to the encoder's strides and use their own deep-supervision scales), then only train_step is timed
    batches = {}
    for label, trainer in trainers.items():
        trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
        batches[label] = [next(trainer.dataloader_train) for _ in range(args.iterations)]
    for label, trainer in trainers.items():
        time_steps(trainer, batches[label][:2])  # warm-up

    speeds: dict[str, list[float]] = {label: [] for label in trainers}
    for _ in range(args.rounds):
        for label, trainer in trainers.items():
            speeds[label].append(time_steps(trainer, batches[label]))

    plain = trainers["nnUNetTrainer (plain)"]
    print(f"dataset {DATASETS[args.dataset]}, plans nnUNetPlans 2d, device {device}, "
          f"torch threads {torch.get_num_threads()}, {args.iterations} iterations x {args.rounds} interleaved rounds")
    base = statistics.median(speeds["nnUNetTrainer (plain)"])
    print(f"{'trainer':<34} {'patch':>12} {'batch':>6} {'it/s':>8} {'ratio to plain':>15}")
    for label, values in speeds.items():
        med = statistics.median(values)
        cfg = trainers[label].configuration_manager
        patch = "x".join(str(int(v)) for v in cfg.patch_size)
        print(f"{label:<34} {patch:>12} {cfg.batch_size:>6} {med:8.3f} {med / base:15.2f}")
    plain_params = sum(p.numel() for p in plain.network.parameters())
    for label, trainer in trainers.items():
        n = sum(p.numel() for p in trainer.network.parameters())
        print(f"parameters {label:<34} {n / 1e6:6.2f} M ({n / plain_params:.2f}x plain)")
    for t in trainers.values():
        if t.dataloader_train is not None and hasattr(t.dataloader_train, "_finish"):
            t.dataloader_train._finish()
            t.dataloader_val._finish()
    results_tmp.cleanup()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
