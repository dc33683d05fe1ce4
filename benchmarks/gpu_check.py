"""GPU check: our joint trainer next to plain nnU-Net on one CUDA device, predict time, and the full matrix's GPU-hours.

Run by ``benchmarks/gpu_check.sh`` (which installs the package first) or directly::

    python benchmarks/gpu_check.py --work DIR [--phantom small] [--steps 30] [--slices 150]

1. Data: the phantom (``--phantom``, default ``small``) converted, planned and preprocessed as
   ``nnunet_joint_reproduce --stop-after data --oracle-crops`` does, with the SE-ResNet preset of
   the ``full`` profile (``seresnet50``).
2. Training, with nnU-Net's defaults on the GPU (mixed precision; ``torch.compile`` unless
   ``nnUNet_compile`` says otherwise), through nnU-Net's own hooks (``on_train_start``,
   ``train_step`` on its data-augmentation workers, ``validation_step``, ``on_train_end``):
   plain nnU-Net on Dataset501 (stage 1 of the cascade), plain nnU-Net on Dataset504 (the plain
   rows) and our joint trainer on Dataset504 (our rows; the LiTS pretraining uses the same plans).
   Printed per trainer: iterations/s with the augmentation workers feeding the GPU (what a
   training costs) and on batches drawn beforehand (the GPU's share), seconds per validation
   iteration, peak GPU memory (``torch.cuda.max_memory_allocated``), and the ratio ours/plain.
3. Prediction: ``benchmarks/bench_predict.py`` on the clinical-size phantom volume (512 x 512
   slices) with the models just trained, with and without test-time mirroring, ours next to
   nnU-Net's two ``nnUNetv2_predict`` calls.
4. The full matrix's GPU-hours: every training of the ``full`` profile (stage 1, the LiTS
   pretraining, every row x fold; :func:`profile_trainings`) at its budget, costed with the
   measured seconds per iteration (:func:`gpu_hours`). Data preparation, final validation and
   evaluation are not included. The per-iteration cost is measured at the ``--phantom`` data's
   planned patch size; the ``full`` profile's default phantom may plan larger patches, so
   ``--phantom default`` gives the faithful figure (and takes longer to prepare).

Without a CUDA device it stops at once: ``error: cuda: ...``, exit 2. ``--device cpu`` runs the
same steps on the CPU (a dry run of the script; its figures say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnunet_joint.errors import InputError, cli_entry  # noqa: E402
from nnunet_joint.study.matrix import experiment_matrix  # noqa: E402
from nnunet_joint.names import DATASET_FOLDERS, DEFAULT_PLANS, PLAIN_TRAINER  # noqa: E402
from nnunet_joint.training.settings import ENV_EPOCHS, ENV_ITERATIONS, Budget  # noqa: E402

#: nnU-Net's own training length, used where a budget sets none.
NNUNET_EPOCHS, NNUNET_ITERATIONS = 1000, 250
#: The cost classes of the study's trainings: what each one is measured on.
STAGE1, PLAIN, OURS = "stage 1 (plain nnU-Net, Dataset501)", "plain nnU-Net (Dataset504)", "ours (joint, Dataset504)"
JOINT_TRAINER = "nnUNetTrainerJoint"


@dataclass(frozen=True)
class CostedTraining:
    """One training of a profile: which measurement costs it, and its length."""

    what: str
    cost: str  # STAGE1 | PLAIN | OURS
    epochs: int
    iterations: int

    @property
    def val_iterations(self) -> int:
        return Budget.val_iterations(self.iterations)


def budget_length(budget: dict[str, str]) -> tuple[int, int]:
    """(epochs, iterations per epoch) of a profile budget; nnU-Net's length where it sets none."""
    return int(budget.get(ENV_EPOCHS, NNUNET_EPOCHS)), int(budget.get(ENV_ITERATIONS, NNUNET_ITERATIONS))


def profile_trainings(profile, imagenet: bool = True) -> list[CostedTraining]:
    """Every training a profile runs: stage 1, the LiTS lesion pretraining, each selected row x fold.

    ``imagenet=False`` leaves out the ImageNet rows (the study runs them only with ImageNet weights).
    """
    trainings = [CostedTraining("stage 1", STAGE1, *budget_length(profile.stage1_budget)),
                 CostedTraining("LiTS lesion pretraining", OURS, *budget_length(profile.lits_budget))]
    rows = [e for e in experiment_matrix()
            if profile.rows is None or e.trainer in profile.rows or e.name in profile.rows]
    if any(e.framework == "nnunet" and e.init == "LiTS" for e in rows):  # nnU-Net's own U-Net pretrained on LiTS
        trainings.append(CostedTraining("LiTS lesion pretraining (plain nnU-Net)", PLAIN,
                                        *budget_length(profile.lits_budget)))
    for exp in rows:
        if exp.init == "ImageNet" and not imagenet:
            continue
        for fold in profile.folds:
            trainings.append(CostedTraining(f"{exp.name} fold {fold}", PLAIN if exp.framework == "nnunet" else OURS,
                                            *budget_length(profile.budget)))
    return trainings


def gpu_hours(trainings: Sequence[CostedTraining], seconds: dict[str, tuple[float, float]]) -> float:
    """Hours of the trainings at ``seconds[cost] = (per training iteration, per validation iteration)``:
    the sum of ``epochs x (iterations x train + validation iterations x validation)``."""
    total = 0.0
    for t in trainings:
        train_s, val_s = seconds[t.cost]
        total += t.epochs * (t.iterations * train_s + t.val_iterations * val_s)
    return total / 3600


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, dataset_folder: Path, plans: str, device, steps: int, warmup: int, val_steps: int) -> dict:
    """Seconds per iteration of one trainer through nnU-Net's hooks; leaves its ``checkpoint_final.pth``."""
    import torch

    from bench_training_speed import make_trainer

    trainer = make_trainer(name, dataset_folder, plans, device)
    trainer.on_train_start()  # data-augmentation workers, plans.json / dataset.json in the model folder
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    train_outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(warmup)]  # compilation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    train_outputs += [trainer.train_step(next(trainer.dataloader_train)) for _ in range(steps)]
    synchronize(device)
    live = (time.perf_counter() - start) / steps
    batches = [next(trainer.dataloader_train) for _ in range(min(steps, 10))]
    synchronize(device)
    start = time.perf_counter()
    train_outputs += [trainer.train_step(batch) for batch in batches]
    synchronize(device)
    compute = (time.perf_counter() - start) / len(batches)
    trainer.on_train_epoch_end(train_outputs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        outputs = [trainer.validation_step(next(trainer.dataloader_val)) for _ in range(warmup)]
        synchronize(device)
        start = time.perf_counter()
        outputs += [trainer.validation_step(next(trainer.dataloader_val)) for _ in range(val_steps)]
        synchronize(device)
        val = (time.perf_counter() - start) / val_steps
        trainer.on_validation_epoch_end(outputs)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    trainer.on_epoch_end()
    trainer.on_train_end()  # checkpoint_final.pth: the predict benchmark loads it
    cfg = trainer.configuration_manager
    return {"trainer": name, "plans": plans, "patch": "x".join(map(str, cfg.patch_size)), "batch": cfg.batch_size,
            "live_s": live, "compute_s": compute, "val_s": val, "peak_gib": peak}


def predict_seconds(work: Path, device: str, slices: int, tta: bool) -> str:
    """``bench_predict.py``'s table for the clinical-size volume, one repeat."""
    cmd = [sys.executable, str(Path(__file__).with_name("bench_predict.py")), "--run", str(work), "--device", device,
           "--slices", str(slices), "--repeats", "1", *(["--tta"] if tta else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench_predict.py failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout.split("\nlast cascade run")[0].strip()


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the data, models and logs (reused)")
    p.add_argument("--phantom", default="small", choices=("tiny", "small", "default"))
    p.add_argument("--steps", type=int, default=30, help="timed training iterations per trainer (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (compilation; default 5)")
    p.add_argument("--val-steps", type=int, default=10)
    p.add_argument("--slices", type=int, default=150, help="slices of the clinical-size predict volume")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: a dry run of the script's steps (no GPU figures)")
    args = p.parse_args(argv)
    for option in ("steps", "warmup", "val_steps", "slices"):
        if getattr(args, option) < 1:
            raise InputError(None, f"--{option.replace('_', '-')} must be >= 1")

    import torch
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("cuda", "no CUDA device (torch.cuda.is_available() is False): the GPU check needs an "
                                 "NVIDIA GPU and a CUDA build of torch")
    from nnunet_joint.planning import plans_name_of
    from nnunet_joint.study.data import prepare_data
    from nnunet_joint.study.folder import RunFolder
    from nnunet_joint.study.graph import Progress
    from nnunet_joint.study.profiles import PROFILES

    full = PROFILES["full"]
    run = RunFolder(args.work.resolve())
    run.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu (dry run)'}; torch "
          f"{torch.__version__}; nnUNet_compile="
          f"{os.environ.get('nnUNet_compile', '(unset: nnU-Net compiles on CUDA)')}")
    prepare_data(run, args.phantom, 0, None, None, Progress(5), encoder=full.encoder)
    workers = get_allowed_n_proc_DA()  # nnU-Net's number of augmentation workers, not a run folder's 1
    os.environ.update(run.environment(nnUNet_n_proc_DA=str(workers)))
    print(f"data-augmentation workers: {workers} (nnUNet_n_proc_DA)")
    device = torch.device(args.device)
    seresnet = plans_name_of(full.encoder)
    contenders = [(STAGE1, PLAIN_TRAINER, 501, DEFAULT_PLANS), (PLAIN, PLAIN_TRAINER, 504, DEFAULT_PLANS),
                  (OURS, JOINT_TRAINER, 504, seresnet)]
    measured = {}
    for cost, name, dataset, plans in contenders:
        print(f"training {name} on {DATASET_FOLDERS[dataset]} ({plans}) ...", flush=True)
        measured[cost] = measure(name, run.preprocessed / DATASET_FOLDERS[dataset], plans, device, args.steps,
                                 args.warmup, args.val_steps)

    print(f"\ntraining, {args.phantom} phantom, {args.steps} timed iterations after {args.warmup} warm-up")
    print(f"{'':38s}{'patch':>9s}{'batch':>6s}{'it/s live':>10s}{'it/s pre-drawn':>15s}{'s/val it':>10s}"
          f"{'peak GiB':>10s}")
    for cost, m in measured.items():
        print(f"{cost:38s}{m['patch']:>9s}{m['batch']:>6d}{1 / m['live_s']:10.2f}{1 / m['compute_s']:15.2f}"
              f"{m['val_s']:10.3f}{m['peak_gib']:10.2f}")
    ours, plain = measured[OURS], measured[PLAIN]
    print(f"ours / plain nnU-Net, iterations per second: {plain['live_s'] / ours['live_s']:.2f} (fed by the "
          f"augmentation workers), {plain['compute_s'] / ours['compute_s']:.2f} (batches drawn beforehand)")

    seconds = {cost: (m["live_s"], m["val_s"]) for cost, m in measured.items()}
    hours = "GPU-hours" if args.device == "cuda" else "hours on this CPU (dry run)"
    for imagenet in (False, True):
        trainings = profile_trainings(full, imagenet=imagenet)
        print(f"full profile ({len(trainings)} trainings, {'with' if imagenet else 'without'} the ImageNet rows): "
              f"{gpu_hours(trainings, seconds):.1f} {hours} of training at the measured cost per iteration")

    for tta in (False, True):
        print(f"\nnnunet_joint_predict, test-time mirroring {'on' if tta else 'off'}:")
        print(predict_seconds(run.root, args.device, args.slices, tta))
    print(f"\ngpu check done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
