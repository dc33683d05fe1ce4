"""How much lesion the cascade's crops keep on a phantom, per fold, before any lesion model runs.

Runs ``nnunet_joint_reproduce`` up to the cropped Sheba datasets (``--stop-after data``): the
phantom, the LiTS conversion and planning, stage 1 (plain nnU-Net on the LiTS volumes, fold 0)
trained for the budget given here, and the Sheba conversion cropped by that stage-1 model. Then it
prints, per fold of the Sheba splits, the share of lesion pixels inside the crops, the slices that
lost lesion to the crop and the stage-1 liver Dice on the Sheba slices
(:func:`nnunet_joint.evaluation.coverage.cascade_coverage`, the numbers the report shows).

The LiTS lesion pretraining that reproduce trains beside stage 1 gets a minimal budget here: it
plays no part in the crops. Coverage depends on stage 1's quality, so the stage-1 budget is printed
with the figures.

Usage::

    python benchmarks/bench_cascade_coverage.py --out runs/coverage_default [--size default]
                                                [--stage1-epochs 4] [--stage1-iterations 25]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from nnunet_joint.evaluation.coverage import cascade_coverage, coverage_lines
    from nnunet_joint.names import DATASET_FOLDERS
    from nnunet_joint.study.cli import reproduce
    from nnunet_joint.study.folder import RunFolder
    from nnunet_joint.study.profiles import PROFILES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="run folder (created; a rerun resumes it)")
    p.add_argument("--size", default="default", choices=("tiny", "small", "default"), help="phantom size")
    p.add_argument("--stage1-epochs", type=int, default=4)
    p.add_argument("--stage1-iterations", type=int, default=25)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)

    base = {"default": PROFILES["full"], "small": PROFILES["study"], "tiny": PROFILES["tiny"]}[args.size]
    budget = {"nnUNet_joint_epochs": str(args.stage1_epochs), "nnUNet_joint_iterations": str(args.stage1_iterations)}
    minimal = {"nnUNet_joint_epochs": "1", "nnUNet_joint_iterations": "2"}
    profile = dataclasses.replace(base, stage1_budget=budget, lits_budget=minimal)
    start = time.perf_counter()
    reproduce(args.out, profile, stop_after="data", jobs=args.jobs, quiet=True)
    minutes = (time.perf_counter() - start) / 60
    run = RunFolder(args.out.resolve())
    coverage = cascade_coverage(run.raw / DATASET_FOLDERS[504],
                                run.preprocessed / DATASET_FOLDERS[504] / "splits_final.json", (0, 1, 2))
    print(f"phantom {args.size}, stage 1 {args.stage1_epochs} x {args.stage1_iterations} iterations "
          f"(plain nnU-Net, fold 0 of the LiTS volumes); {minutes:.1f} min")
    print("\n".join(coverage_lines(coverage)))


if __name__ == "__main__":
    main()
