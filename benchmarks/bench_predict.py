"""End-to-end predict time: ``nnunet_joint_predict`` (the cascade) next to nnU-Net's own ``nnUNetv2_predict``
running the same two models separately, on one phantom volume, in one run.

The default input is a LiTS-like scan at clinical resolution made by the phantom
(:func:`nnunet_joint.phantom.corpus.write_clinical_volume`: 512 x 512 x 150 slices, 0.75 mm pixels,
1 mm slices, five lesions), written into ``RUN_DIR/phantom/clinical/`` once. ``--volume volume-N``
takes a phantom corpus volume instead.

Both sides are timed as a user runs them: a fresh process each (imports, model loading, inference,
writing), with their default settings except test-time augmentation, which is off on both sides
unless ``--tta`` (nnU-Net: ``--disable_tta``; ours: off on the CPU by default), and ours writes no
overlay PNGs (its default; ``--overlays`` adds them, as the cascade did by default before). The nnU-Net side
is the sum of two ``nnUNetv2_predict`` calls (liver model on the volume, joint model on the whole
volume: nnU-Net has no cascade crop), each with one preprocessing and one export worker. Both
get ``nnUNet_def_n_proc`` = the CPU cores (nnU-Net caps its torch threads at it; a reproduce run's
environment sets 1). Repeats are interleaved (ours, then nnU-Net's) so the machine's load hits
both alike. CPU seconds (user + system) are printed beside wall seconds: on a shared machine they
move less with the load. Peak memory is the largest resident set of the command's process tree
(``wait4``).

Usage::

    python benchmarks/bench_predict.py --run RUN_DIR [--volume clinical] [--slices 150] [--repeats 3]
                                       [--tta] [--overlays] [--every-slice] [--device cpu]

``--every-slice`` also times ours with stage 1 on every slice (the earlier default) and prints both
variants' liver Dice against the volume's truth (``segmentation-*.nii.gz`` beside it).

``RUN_DIR`` is a run folder (``nnunet_joint_reproduce`` or the layout of ``tests/test_predict_e2e.py``)
with a trained liver model on Dataset501 and a joint model on Dataset504. ``--prepare`` builds one
first: ``nnunet_joint_reproduce --profile tiny`` (tiny phantom, a few iterations per model). The models' planned spacing
and patch size decide the network's share of the time; these numbers measure speed, not accuracy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnunet_joint.names import DATASET_FOLDERS, JOINT_DATASET, LIVER_DATASET, results_folder_pattern, trainer_name
from nnunet_joint.study.folder import RunFolder, nnunet_bin

LIVER_FOLDER, JOINT_FOLDER = DATASET_FOLDERS[LIVER_DATASET], DATASET_FOLDERS[JOINT_DATASET]


def prepare(run: RunFolder) -> None:
    """A run folder with both models: ``nnunet_joint_reproduce --profile tiny`` (tiny phantom, cascade)."""
    from nnunet_joint.study.cli import reproduce
    from nnunet_joint.study.profiles import PROFILES

    reproduce(run.root, PROFILES["tiny"], quiet=True)


def benchmark_volume(run: RunFolder, name: str, slices: int) -> Path:
    """The volume to predict: a phantom corpus volume, or the clinical-resolution one (made once)."""
    if name != "clinical":
        return run.phantom / "LiTS" / f"{name}.nii.gz"
    from nnunet_joint.phantom.corpus import CLINICAL_SHAPE, write_clinical_volume

    folder = run.phantom / ("clinical" if slices == CLINICAL_SHAPE[0] else f"clinical_{slices}")
    volume = folder / "volume-clinical.nii.gz"
    if not (folder / "clinical_truth.json").is_file():
        write_clinical_volume(folder, seed=0, slices=slices)
    return volume


def model_folder(run: RunFolder, dataset: str, trainer: str | None) -> Path:
    """The model folder of ``trainer`` (default: the only one; on the joint dataset the only joint model)."""
    default = trainer_name("joint") + "*" if dataset == JOINT_FOLDER else "*"
    folders = sorted((run.results / dataset).glob(results_folder_pattern(trainer or default)))
    if len(folders) != 1:
        raise SystemExit(f"expected one model folder in {run.results / dataset}, found "
                         f"{[f.name for f in folders]}; pass --liver-trainer / --lesion-trainer")
    return folders[0]


def folds_of(folder: Path) -> list[str]:
    from nnunet_joint.inference.models import available_folds

    return [str(f) for f in available_folds(folder)]


def liver_dice(volume: Path, outputs: list[Path]) -> dict[str, str]:
    """Each output's ``liver.nii.gz`` against the truth beside the volume (liver and lesions count as liver)."""
    import numpy as np
    import SimpleITK as sitk

    truth_file = volume.parent / volume.name.replace("volume-", "segmentation-")
    if not truth_file.is_file():
        return {out.name: f"no truth ({truth_file.name} not found)" for out in outputs}
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_file))) > 0
    found = {}
    for out in outputs:
        liver = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "liver.nii.gz"))) > 0
        found[out.name] = f"{2 * np.logical_and(liver, truth).sum() / (liver.sum() + truth.sum()):.4f}"
    return found


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system, the process tree), peak resident GB of its largest
    process, stderr."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / 1e9, stderr


def main(argv: list[str] | None = None) -> None:
    from nnunet_joint.cpu import cpu_threads

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="run folder with trained models (see module doc)")
    p.add_argument("--prepare", action="store_true", help="build the run folder from the tiny phantom first")
    p.add_argument("--volume", default="clinical",
                   help="'clinical' (512 x 512 phantom scan, made once) or a phantom LiTS volume (volume-N)")
    p.add_argument("--slices", type=int, default=150, help="slices of the clinical volume (default 150)")
    p.add_argument("--liver-trainer", help="trainer of the Dataset501 model folder (default: the only one)")
    p.add_argument("--lesion-trainer", help="trainer of the Dataset504 model folder (default: the only one)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tta", action="store_true", help="test-time mirroring on both sides (default: off on both)")
    p.add_argument("--overlays", action="store_true", help="ours also draws its overlay PNGs (default: off, "
                                                             "as nnunet_joint_predict's default)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--every-slice", action="store_true",
                   help="also time ours with stage 1 on every slice (--liver-slice-gap 0, the earlier default) "
                        "and print each variant's liver Dice against the clinical volume's truth")
    args = p.parse_args(argv)

    run = RunFolder(args.run.resolve())
    if args.prepare:
        prepare(run)
    liver, lesion = model_folder(run, LIVER_FOLDER, args.liver_trainer), model_folder(run, JOINT_FOLDER,
                                                                                        args.lesion_trainer)
    volume = benchmark_volume(run, args.volume, args.slices)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(volume))
    reader.ReadImageInformation()
    size = reader.GetSize()
    n_slices = size[2] if len(size) == 3 else 1
    threads = cpu_threads()
    env = run.environment(nnUNet_def_n_proc=str(threads))
    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        nn_in = work / "nnunet_in"
        nn_in.mkdir()
        os.symlink(volume, nn_in / f"{volume.name.removesuffix('.nii.gz')}_0000.nii.gz")
        ours_cmd = [sys.executable, "-c", "import sys; from nnunet_joint.inference.cli import main; "
                    "sys.exit(main(sys.argv[1:]))", "-i", str(volume), "-o", str(work / "ours"),
                    "--liver-model", str(liver), "--lesion-model", str(lesion), "--device", args.device, "--quiet",
                    "--verbose", "--tta" if args.tta else "--no-tta",
                    "--overlays" if args.overlays else "--no-overlays"]
        nnunet_cmds = [
            [nnunet_bin("nnUNetv2_predict_from_modelfolder"), "-i", str(nn_in), "-o", str(work / f"nnunet_{i}"),
             "-m", str(folder), "-f", *folds_of(folder), "-device", args.device, "-npp", "1", "-nps", "1",
             "--disable_progress_bar", *([] if args.tta else ["--disable_tta"])]
            for i, folder in enumerate((liver, lesion))]
        every_cmd = [*ours_cmd, "--liver-slice-gap", "0"]
        every_cmd[every_cmd.index(str(work / "ours"))] = str(work / "ours_every_slice")
        ours, theirs, ours_cpu, theirs_cpu, ours_rss, theirs_rss = [], [], [], [], [], []
        every, every_cpu, every_rss = [], [], []
        stages = ""
        for _ in range(args.repeats):
            seconds, cpu, rss, stderr = timed(ours_cmd, env)
            ours.append(seconds)
            ours_cpu.append(cpu)
            ours_rss.append(rss)
            marker = stderr.find("nnunet_joint_predict: time")
            stages = stderr[marker:].strip() if marker >= 0 else "(no --verbose table in the output)"
            if args.every_slice:
                seconds, cpu, rss, _ = timed(every_cmd, env)
                every.append(seconds)
                every_cpu.append(cpu)
                every_rss.append(rss)
            runs = [timed(cmd, env) for cmd in nnunet_cmds]
            theirs.append(sum(r[0] for r in runs))
            theirs_cpu.append(sum(r[1] for r in runs))
            theirs_rss.append(max(r[2] for r in runs))
        dice = liver_dice(volume, [work / "ours", work / "ours_every_slice"]) if args.every_slice else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"volume {volume} ({' x '.join(str(s) for s in size)} voxels, spacing "
          f"{' x '.join(f'{s:g}' for s in reader.GetSpacing())} mm); liver model {liver.name} folds {folds_of(liver)}; "
          f"lesion model {lesion.name} folds {folds_of(lesion)}; device {args.device}, {threads} CPU thread(s); "
          f"test-time mirroring {'on' if args.tta else 'off'} on both sides; overlays {'on' if args.overlays else 'off'}; "
          f"{args.repeats} repeats, interleaved")
    print(f"{'':36s}{'median s':>10s}{'min s':>9s}{'max s':>9s}{'s/slice':>9s}{'CPU s':>9s}{'peak GB':>9s}")
    rows = [("nnunet_joint_predict (cascade)", ours, ours_cpu, ours_rss)]
    if every:
        rows.append(("  same, stage 1 on every slice", every, every_cpu, every_rss))
    for name, values, cpu, rss in (*rows, ("nnUNetv2_predict x2 (separately)", theirs, theirs_cpu, theirs_rss)):
        med = statistics.median(values)
        print(f"{name:36s}{med:10.2f}{min(values):9.2f}{max(values):9.2f}{med / n_slices:9.3f}"
              f"{statistics.median(cpu):9.1f}{max(rss):9.2f}")
    print(f"ratio cascade / nnU-Net: {o / t:.2f} (wall, median), per repeat "
          f"{', '.join(f'{a / b:.2f}' for a, b in zip(ours, theirs))}; CPU time "
          f"{statistics.median(ours_cpu) / statistics.median(theirs_cpu):.2f}")
    for folder, value in dice.items():
        print(f"stage-1 liver Dice against the volume's truth, {folder}: {value}")
    print(f"\nlast cascade run, by stage (--verbose):\n{stages}")


if __name__ == "__main__":
    main()
