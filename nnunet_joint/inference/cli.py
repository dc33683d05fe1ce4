"""``nnunet_joint_predict``: the liver → lesion cascade on new CT (NIfTI or DICOM, volume or slice).

Thin command line over :func:`predict`. Every input is read and checked before a model is loaded;
outputs go to a temporary folder beside ``OUT_DIR`` that is renamed when everything is written,
so a failure or a killed run leaves no partial output (the next run removes a killed run's hidden
temporary), and the input is never touched. An existing ``OUT_DIR`` is replaced only when all it
holds was written by this command (:mod:`nnunet_joint.inference.output_folder`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from nnunet_joint.cpu import passive_openmp
from nnunet_joint.errors import InputError, cli_entry, warn
from nnunet_joint.inference.inputs import InputCase, discover_inputs, read_case
from nnunet_joint.inference.output_folder import MARKER, check_output_folder, write_marker  # noqa: F401 (cli.MARKER)
from nnunet_joint.io import atomic_path, clean_stale_temporaries, quiet_stdout
from nnunet_joint.names import (COARSE_SPACING_MM, DATASET_FOLDERS, JOINT_DATASET, LIVER_DATASET, NNUNET_TRAINER,
                                results_folder_name, trainer_name)


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def predict(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    liver_model: str | os.PathLike | None = None,
    lesion_model: str | os.PathLike | None = None,
    liver_folds: Sequence[int | str] | None = None,
    lesion_folds: Sequence[int | str] | None = None,
    device: str | None = None,
    quiet: bool = False,
    overlays: bool = False,
    tta: bool | None = None,
    step_size: float = 0.5,
    threads: int | None = None,
    verbose: bool = False,
    liver_slice_gap_mm: float | None = COARSE_SPACING_MM,
) -> dict[str, list[dict]]:
    """Run the cascade on every image under ``input_path`` and write the outputs to ``out_dir``.

    One input (a file or a DICOM series) writes into ``out_dir`` itself; a folder of inputs writes
    one subfolder per input, named after it.

    Args:
        overlays: also write overlay PNGs of the slices with lesions. Off by default: they are a
            picture of what the label maps and ``lesions.json`` already hold, and drawing them took
            about a quarter of a 512 x 512 x 150 scan's prediction time on two CPU cores.
        tta: nnU-Net's test-time mirroring (``None``: on for CUDA, off for the CPU, where it costs
            4 network passes per tile of a 2-D model).
        step_size: nnU-Net's sliding-window step (fraction of the patch size).
        threads: torch CPU threads (default: the cores this process may use).
        verbose: print the time and peak memory of every stage to stderr.
        liver_slice_gap_mm: on a volume, a 2-D stage 1 predicts slices at most this far apart and
            interpolates between them (default 3 mm, the coarse stage 1's spacing; ``None`` or 0: every
            slice). Stage 2 always predicts every slice.

    Returns:
        Input name -> its ``lesions.json`` lesion entries.

    Raises:
        InputError: any bad input, output folder or model (nothing is written then).
    """
    from nnunet_joint.cpu import cpu_threads
    from nnunet_joint.inference.models import PredictorSettings, lesion_model_folder, liver_model_folder, load_model
    from nnunet_joint.inference.timing import StageTimer

    if not 0 < step_size <= 1:
        raise InputError(None, f"--step-size {step_size}: must be in (0, 1]")
    if liver_slice_gap_mm is not None and not 0 <= liver_slice_gap_mm < float("inf"):
        raise InputError(None, f"--liver-slice-gap {liver_slice_gap_mm}: must be 0 (every slice) or a positive "
                               "number of millimetres")
    if threads is not None and threads < 1:
        raise InputError(None, f"--threads {threads}: must be at least 1")
    timer = StageTimer()
    input_path, out_dir = Path(input_path), Path(out_dir)
    check_output_folder(out_dir, input_path)
    clean_stale_temporaries(out_dir)  # hidden .OUT.partial-* folders of killed runs
    cases = discover_inputs(input_path)
    with timer("read and check input" + ("s" if len(cases) > 1 else "")):
        # every input is checked before any model runs; the first is kept (a single input is read
        # once), the others are read again in turn rather than all held in memory
        first = read_case(cases[0])
        for case in cases[1:]:
            read_case(case)
    torch_device = _device(device)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    threads = threads or cpu_threads()
    settings = PredictorSettings(tta=PredictorSettings.tta_default(torch_device) if tta is None else bool(tta),
                                 tile_step_size=float(step_size), threads=threads)
    with timer("load models"):  # CascadeModel.predict sets the threads and restores them
        liver_dir, lesion_dir = liver_model_folder(liver_model), lesion_model_folder(lesion_model)
        liver = load_model(liver_dir, liver_folds, torch_device, settings=settings)
        lesion = load_model(lesion_dir, lesion_folds, torch_device, settings=settings)
    if not (lesion.is_joint or lesion.is_ynet):
        raise InputError(lesion_dir, "not a stage-2 model: needs labels cyst/hemangioma/metastasis (joint) or "
                                     "'lesion' with a classification head (Y-Net)")
    models = {"liver": {**liver.describe(), "slice_gap_mm": liver_slice_gap_mm or 0},
              "lesion": {**lesion.describe(), "kind": "joint" if lesion.is_joint else "ynet",
                         "crop_margin_mm": lesion.crop_margin_mm}}
    say(f"liver model: {liver_dir} (folds {liver.folds}); lesion model: {lesion_dir} (folds {lesion.folds}); "
        f"device {torch_device}, {threads} thread(s), test-time mirroring {'on' if settings.tta else 'off'}")
    results: dict[str, list[dict]] = {}
    slices = 0
    single = len(cases) == 1 and not (input_path.is_dir() and not cases[0].is_dicom)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for n, case in enumerate(cases, start=1):
            ct, first = (first, None) if n == 1 else (None, None)  # not held past its case
            results[case.name], case_slices = _predict_case(  # stages add up over the inputs in one table
                case, ct, tmp if single else tmp / case.name, liver, lesion, models, quiet, overlays, say,
                f"[{n}/{len(cases)}] {case.name}", timer, liver_slice_gap_mm)
            del ct
            slices += case_slices
        write_marker(tmp, input_path)
        check_output_folder(out_dir, input_path)  # again: the user may have added files meanwhile
    if verbose:
        print(timer.report(f"nnunet_joint_predict: time and peak memory (RSS) by stage, {threads} thread(s), "
                           f"test-time mirroring {'on' if settings.tta else 'off'}", slices), file=sys.stderr)
    return results


def _predict_case(case: InputCase, ct, out: Path, liver, lesion, models: dict, quiet: bool, overlays: bool, say,
                  label: str, timer, liver_slice_gap_mm: float | None) -> tuple[list[dict], int]:
    from nnunet_joint.inference.cascade import run_cascade, write_case_outputs

    start = time.monotonic()
    if ct is None:
        with timer("read input"):
            ct = read_case(case)
    say(f"{label}: {'slice' if ct.is_slice else 'volume'} {ct.image.GetSize()}, stage 1 (liver) then stage 2 "
        "(lesions) on the liver crop")
    with quiet_stdout(quiet):
        result = run_cascade(ct, liver, lesion, timer=timer, progress=not quiet, liver_slice_gap_mm=liver_slice_gap_mm)
    lesions = write_case_outputs(ct, result, out, models, overlays=overlays, timer=timer, progress=not quiet)
    if result.no_liver is not None:  # printed even with --quiet: the empty result needs its reason
        warn(case.path, f"{result.no_liver}; no lesions written (lesions.json says so)")
    say(f"{label}: {len(lesions)} lesion(s) "
        f"{', '.join(lesion_entry['type'] for lesion_entry in lesions)} in {time.monotonic() - start:.1f} s")
    return lesions, int(ct.array.shape[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_joint_predict",
        description="Liver -> lesion cascade on CT: liver mask, lesion label map with type codes (0 background, "
                    "1 liver, 2 cyst, 3 hemangioma, 4 metastasis; the input's geometry), lesions.json and, with "
                    "--overlays, overlay PNGs.",
    )
    p.add_argument("-i", "--input", required=True, type=Path,
                   help="NIfTI/MHA/NRRD volume or slice (HxW or 1xHxW), DICOM series folder, or a folder of "
                        "these (one output subfolder each, named after the input)")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="output folder (new, empty, or written by this command before and holding nothing "
                        "else: it is replaced)")
    p.add_argument("--liver-model", type=Path,
                   help=f"stage-1 nnU-Net results folder ({results_folder_name('<Trainer>', '<Plans>')}); default "
                        f"$nnUNet_results/{DATASET_FOLDERS[LIVER_DATASET]}/"
                        f"{results_folder_name(NNUNET_TRAINER, '<plans>')} (plain nnU-Net: "
                        "the strongest simple liver segmenter), else nnUNetTrainer_JointBudget, else the only "
                        "nnUNetTrainer* folder there")
    p.add_argument("--lesion-model", type=Path,
                   help="stage-2 results folder: a joint model (pixel-wise types) or a Y-Net (types from its "
                        f"classification head, per slice); default $nnUNet_results/{DATASET_FOLDERS[JOINT_DATASET]}/"
                        f"{results_folder_name(trainer_name('joint', 'LiTS'), '<plans>')}, else nnUNetTrainerJoint, "
                        "else the only "
                        "nnUNetTrainerJoint* folder")
    p.add_argument("--folds", nargs="+", metavar="F",
                   help="folds of both models (numbers or 'all'); default: every fold_0..fold_4 with "
                        "checkpoint_final.pth (an ensemble, logits averaged), else fold_all")
    p.add_argument("--liver-folds", nargs="+", metavar="F", help="folds of the liver model (overrides --folds)")
    p.add_argument("--lesion-folds", nargs="+", metavar="F", help="folds of the lesion model (overrides --folds)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="nnU-Net's test-time augmentation (mirroring; 4 network passes per tile of a 2-D model); "
                        "default: on with cuda, off on the CPU")
    p.add_argument("--step-size", type=float, default=0.5,
                   help="nnU-Net's sliding-window step as a fraction of the patch size (default 0.5, nnU-Net's)")
    p.add_argument("--liver-slice-gap", type=float, default=COARSE_SPACING_MM, metavar="MM",
                   help=f"on a volume, stage 1 (liver) predicts slices at most MM apart and interpolates between "
                        f"them (default {COARSE_SPACING_MM:g}; 0: every slice). Stage 2 sees every slice")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the CPU cores this process may use)")
    p.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=False,
                   help="also write overlay PNGs of the slices with lesions (default: off; they cost about a "
                        "quarter of a whole scan's prediction time on two CPU cores)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings (no progress bars)")
    p.add_argument("--verbose", action="store_true",
                   help="print the time and peak memory of every stage (reading, model loading, preprocessing, "
                        "network, resampling back, crop, paste-back, lesion analysis, writing)")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    passive_openmp()  # before torch is imported: see nnunet_joint.cpu
    from nnunet_joint.inference.models import parse_folds

    args = build_parser().parse_args(argv)
    if args.quiet:
        warnings.simplefilter("ignore")  # library deprecation notices are not errors
    folds = parse_folds(args.folds)
    results = predict(args.input, args.output, args.liver_model, args.lesion_model,
                      liver_folds=parse_folds(args.liver_folds) or folds,
                      lesion_folds=parse_folds(args.lesion_folds) or folds,
                      device=args.device, quiet=args.quiet, overlays=args.overlays, tta=args.tta,
                      step_size=args.step_size, threads=args.threads, verbose=args.verbose,
                      liver_slice_gap_mm=args.liver_slice_gap)
    if not args.quiet:
        total = sum(len(v) for v in results.values())
        print(f"{len(results)} input(s), {total} lesion(s): {args.output}", file=sys.stderr)
    return 0
