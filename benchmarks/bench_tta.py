"""What test-time augmentation (nnU-Net's mirroring) costs and gains in ``nnunet_joint_predict``, on the phantom.

The cascade runs twice on the same unseen phantom data (a corpus of another seed than the one the
models were trained on), with ``--no-tta`` and ``--tta``, in one process, alternating (``--rounds``;
wall and CPU seconds include loading the models, as a user runs it), and both
outputs are scored against the phantom's truth with the project's metrics
(``nnunet_joint.evaluation.metrics``):

- Sheba-like slices: lesion Dice per slice (Dice1) and pooled (Dice2), recall, success rate, and the
  slice's lesion type (majority vote of the predicted lesion pixels; no lesion pixel: no call,
  counted wrong);
- LiTS-like volumes: stage-1 liver Dice and lesion Dice (all types merged) per volume.

Usage::

    python benchmarks/bench_tta.py --run RUN_DIR [--seed 1] [--size small] [--lesion-folds 0]

``RUN_DIR`` holds the two models as for ``bench_predict.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_joint import LESION_TYPES
from nnunet_joint.evaluation.metrics import (NO_CALL, evaluate_slice, joint_slice_type, lesion_dice, liver_dice,
                                             summarise)
from nnunet_joint.study.folder import RunFolder

from bench_predict import JOINT_FOLDER, LIVER_FOLDER, model_folder


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def score(phantom: Path, out: Path) -> dict:
    """Metrics of one prediction run against the phantom's truth."""
    results = []
    with open(phantom / "Sheba" / "cases.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        name = Path(row["image"]).name.removesuffix(".nii.gz")
        predicted = _array(out / "sheba" / name / "lesions.nii.gz")
        reference = _array(phantom / "Sheba" / row["mask"]).astype(np.uint8) * 2  # any lesion label >= 2
        pred_type = joint_slice_type(predicted)
        results.append(evaluate_slice(name, 0, predicted, reference, LESION_TYPES.index(row["lesion_type"]),
                                      pred_type))
    metrics = summarise(results)["aggregate"]["metrics"]
    typed = [r for r in results if r.pred_type is not None]
    out_metrics = {name: metrics[name]["mean"] for name in ("dice", "global_dice", "recall", "success_rate")}
    out_metrics["type_accuracy"] = float(np.mean([r.pred_type == r.true_type for r in typed]))
    out_metrics["no_call"] = sum(r.pred_type == NO_CALL for r in typed)
    out_metrics["n_slices"] = len(results)
    livers, lesions = [], []
    for volume in sorted((phantom / "LiTS").glob("volume-*.nii.gz")):
        truth = _array(volume.with_name(volume.name.replace("volume", "segmentation")))
        name = volume.name.removesuffix(".nii.gz")
        livers.append(liver_dice(_array(out / "lits" / name / "liver.nii.gz") > 0, truth > 0))
        lesions.append(lesion_dice(_array(out / "lits" / name / "lesions.nii.gz"), truth))  # tumour label 2
    out_metrics["lits_liver_dice"] = float(np.mean(livers))
    out_metrics["lits_lesion_dice"] = float(np.mean(lesions))
    out_metrics["n_volumes"] = len(livers)
    return out_metrics


def main(argv: list[str] | None = None) -> None:
    from nnunet_joint.inference.cli import predict
    from nnunet_joint.inference.models import parse_folds
    from nnunet_joint.phantom import generate_corpus

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--seed", type=int, default=1, help="phantom seed of the test data (not the training seed 0)")
    p.add_argument("--size", default="small", help="phantom size of the test data")
    p.add_argument("--lesion-trainer", help="trainer of the Dataset504 model folder (default: the only one)")
    p.add_argument("--lesion-folds", nargs="+", default=None)
    p.add_argument("--rounds", type=int, default=1, help="timing rounds per setting (alternating)")
    args = p.parse_args(argv)

    run = RunFolder(args.run.resolve())
    for key, value in run.environment().items():
        if key.startswith("nnUNet"):
            os.environ[key] = value
    liver, lesion = model_folder(run, LIVER_FOLDER, None), model_folder(run, JOINT_FOLDER, args.lesion_trainer)
    phantom = run.root / f"phantom_seed{args.seed}_{args.size}"
    if not (phantom / "phantom_truth.json").is_file():
        generate_corpus(phantom, seed=args.seed, size=args.size)
    work = run.root / f"bench_tta_seed{args.seed}_{args.size}"  # one folder per test corpus
    seconds: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    scores = {}
    for _ in range(args.rounds):
        for tta in (False, True):
            start, start_cpu = time.perf_counter(), time.process_time()
            for kind, source in (("sheba", phantom / "Sheba" / "slices"), ("lits", phantom / "LiTS")):
                inputs = source
                if kind == "lits":  # only the volumes, not the segmentations
                    inputs = work / "lits_inputs"
                    inputs.mkdir(parents=True, exist_ok=True)
                    for volume in source.glob("volume-*.nii.gz"):
                        link = inputs / volume.name
                        if not link.exists():
                            link.symlink_to(volume)
                predict(inputs, work / f"tta_{tta}" / kind, liver, lesion, lesion_folds=parse_folds(args.lesion_folds),
                        device="cpu", quiet=True, overlays=False, tta=tta)
            seconds[tta].append(time.perf_counter() - start)
            cpu[tta].append(time.process_time() - start_cpu)
            scores[tta] = score(phantom, work / f"tta_{tta}")
    print(f"test data: phantom seed {args.seed}, size {args.size}: {scores[False]['n_slices']} Sheba-like slices, "
          f"{scores[False]['n_volumes']} LiTS-like volumes; models {liver.name}, {lesion.name}")
    names = ["seconds", "CPU seconds", "dice", "global_dice", "recall", "success_rate", "type_accuracy", "no_call",
             "lits_liver_dice", "lits_lesion_dice"]
    print(f"{'':10s}" + "".join(f"{n:>17s}" for n in names))
    for tta in (False, True):
        values = [float(np.median(seconds[tta])), float(np.median(cpu[tta]))] + [scores[tta][n] for n in names[2:]]
        print(f"{'tta ' + ('on' if tta else 'off'):10s}" + "".join(f"{v:17.3f}" for v in values))


if __name__ == "__main__":
    main()
