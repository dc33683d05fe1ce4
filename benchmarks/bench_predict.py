"""End-to-end predict time: ``nnunet_joint_predict`` (the cascade) next to nnU-Net's own ``nnUNetv2_predict``
running the same two models separately, on one phantom volume, in one run.

Both sides are timed as a user runs them: a fresh process each (imports, model loading, inference,
writing). The nnU-Net side is the sum of two ``nnUNetv2_predict`` calls (liver model on the volume,
joint model on the whole volume: nnU-Net has no cascade crop), each with one preprocessing and one
export worker, so both sides use the same CPU threads.

Usage::

    python benchmarks/bench_predict.py --run RUN_DIR [--volume volume-2] [--repeats 3] [--device cpu]

``RUN_DIR`` is a run folder (``nnunet_joint_reproduce`` or the layout of ``tests/test_predict_e2e.py``)
with a trained liver model on Dataset501 and a joint model on Dataset504. ``--prepare`` builds one
first from the tiny phantom (plain ``nnUNetTrainer_JointBudget`` fold all, 1 x 60 iterations; joint model
fold 0, 6 x 12 iterations: the budgets of ``tests/test_predict_e2e.py``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnunet_joint.reproduce import RunFolder, nnunet_bin, run_nnunet

LIVER_DATASET, JOINT_DATASET = "Dataset501_LiTSLiver", "Dataset504_ShebaJoint"


def prepare(run: RunFolder) -> None:
    """Tiny phantom → datasets 501/504 → plain liver model (fold all) and joint model (fold 0)."""
    from nnunet_joint.dataset_conversion.convert_lits import convert_lits
    from nnunet_joint.dataset_conversion.convert_sheba import convert_sheba
    from nnunet_joint.phantom import generate_corpus

    generate_corpus(run.phantom, seed=0, size="tiny")
    convert_lits(run.phantom / "LiTS", raw_root=run.raw, overwrite=True)
    convert_sheba(run.phantom / "Sheba", raw_root=run.raw, preprocessed_root=run.preprocessed, overwrite=True)
    logs = run.root / "logs"
    run_nnunet([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", "501", "504", "-c", "2d", "-np", "2"], run,
               logs / "plan_and_preprocess.log")
    run_nnunet([nnunet_bin("nnUNetv2_train"), "501", "2d", "all", "-tr", "nnUNetTrainer_JointBudget", "-device",
                "cpu"], run, logs / "train_501.log", nnUNet_joint_epochs="1", nnUNet_joint_iterations="60")
    run_nnunet([nnunet_bin("nnUNetv2_train"), "504", "2d", "0", "-tr", "nnUNetTrainerJoint", "-device", "cpu"],
               run, logs / "train_504.log", nnUNet_joint_epochs="6", nnUNet_joint_iterations="12",
               nnUNet_joint_encoder="seresnet18")


def model_folder(run: RunFolder, dataset: str, trainer: str | None) -> Path:
    folders = sorted((run.results / dataset).glob(f"{trainer or '*'}__nnUNetPlans__2d"))
    if len(folders) != 1:
        raise SystemExit(f"expected one model folder in {run.results / dataset}, found "
                         f"{[f.name for f in folders]}; pass --liver-trainer / --lesion-trainer")
    return folders[0]


def folds_of(folder: Path) -> list[str]:
    from nnunet_joint.inference.models import available_folds

    return [str(f) for f in available_folds(folder)]


def timed(cmd: list[str], run: RunFolder) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=run.environment(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="run folder with trained models (see module doc)")
    p.add_argument("--prepare", action="store_true", help="build the run folder from the tiny phantom first")
    p.add_argument("--volume", default="volume-2", help="phantom LiTS volume to predict (name without .nii.gz)")
    p.add_argument("--liver-trainer", help="trainer of the Dataset501 model folder (default: the only one)")
    p.add_argument("--lesion-trainer", help="trainer of the Dataset504 model folder (default: the only one)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)

    run = RunFolder(args.run.resolve())
    if args.prepare:
        prepare(run)
    liver, lesion = model_folder(run, LIVER_DATASET, args.liver_trainer), model_folder(run, JOINT_DATASET,
                                                                                        args.lesion_trainer)
    volume = run.phantom / "LiTS" / f"{args.volume}.nii.gz"
    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        nn_in = work / "nnunet_in"
        nn_in.mkdir()
        shutil.copy(volume, nn_in / f"{args.volume}_0000.nii.gz")
        ours_cmd = [sys.executable, "-c", "import sys; from nnunet_joint.inference.cli import main; "
                    "sys.exit(main(sys.argv[1:]))", "-i", str(volume), "-o", str(work / "ours"),
                    "--liver-model", str(liver), "--lesion-model", str(lesion), "--device", args.device, "--quiet"]
        nnunet_cmds = [
            [nnunet_bin("nnUNetv2_predict_from_modelfolder"), "-i", str(nn_in), "-o", str(work / f"nnunet_{i}"),
             "-m", str(folder), "-f", *folds_of(folder), "-device", args.device, "-npp", "1", "-nps", "1",
             "--disable_progress_bar"]
            for i, folder in enumerate((liver, lesion))]
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(timed(ours_cmd, run))
            theirs.append(sum(timed(cmd, run) for cmd in nnunet_cmds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"volume {volume.name}; liver model {liver.name} folds {folds_of(liver)}; "
          f"lesion model {lesion.name} folds {folds_of(lesion)}; device {args.device}; {args.repeats} repeats")
    print(f"{'':38s}{'median s':>10s}{'min s':>10s}{'max s':>10s}")
    print(f"{'nnunet_joint_predict (cascade)':38s}{o:10.2f}{min(ours):10.2f}{max(ours):10.2f}")
    print(f"{'nnUNetv2_predict x2 (separately)':38s}{t:10.2f}{min(theirs):10.2f}{max(theirs):10.2f}")
    print(f"ratio cascade / nnU-Net: {o / t:.2f}")


if __name__ == "__main__":
    main()
