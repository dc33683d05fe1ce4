"""The SE-ResNet U-Net as nnU-Net plans presets, and nnU-Net's planning and preprocessing run in-process.

**Presets** (nnU-Net's ResEnc idea: the architecture is plans data, the trainer stays thin):
``nnUNetPlannerSEResNet18/34/50`` write plans ``nnUNetSEResNet18Plans`` (34, 50) whose 2d
configuration names :class:`~nnunet_joint.network.unet.SEResNetUNet` and its kwargs (encoder,
the six level strides, decoder widths) with a patch size divisible by the network's total stride
(32) and a batch size from nnU-Net's memory model. Spacing, normalisation, resampling and the
batch-size rules are nnU-Net's own (the default planner computes them; the preset replaces patch
size, batch size and architecture). The network is 2-D: the presets write only the ``2d``
configuration.

Training then uses nnU-Net's own commands::

    nnunet_joint_plan_and_preprocess -d 502 -c 2d -pl nnUNetPlannerSEResNet50
    nnunet_joint_plan_and_preprocess -d 503 504 -c 2d --plans-from 502 -p nnUNetSEResNet50Plans
    nnUNetv2_train 504 2d 0 -tr nnUNetTrainerJoint_LiTS_HierFreeze -p nnUNetSEResNet50Plans

**Why our own command.** nnU-Net 2.8's ``nnUNetv2_plan_and_preprocess -pl NAME`` looks planners up
only inside the nnunetv2 package (there is no ``nnUNet_extTrainer`` for planners), so it cannot
find ours; ``nnunet_joint_plan_and_preprocess`` takes the same options and finds nnU-Net's
planners and ours. ``--plans-from`` is nnU-Net's transfer route (``move_plans_between_datasets``,
then preprocessing the targets with the moved plans): source and targets share spacing,
normalisation and architecture; the same as ``nnUNetv2_move_plans_between_datasets`` followed by
``nnUNetv2_preprocess``.

**One CT window** (:data:`CT_WINDOW_HU`). nnU-Net's ``CTNormalization`` clips CT at the
0.5/99.5 percentiles of the training set's foreground, then subtracts its mean and divides by its
std. On the LiTS lesion dataset that window is the liver's (about 43..171 HU on the phantom), so
cysts (0-20 HU) sat at the clip floor in every row that uses plans carried from LiTS, and each
dataset's own plans normalised differently. Every plans file this step writes (planned or carried
over) therefore gets one documented window instead: the abdominal soft-tissue window W 400 / L 40
(-160..240 HU), centred (mean 40) and scaled to [-2, 2] (std 100), written into the plans'
``foreground_intensity_properties_per_channel`` — data that nnU-Net's own preprocessing and
prediction read, so plain nnU-Net rows, our rows and the LiTS pretraining see the same window
(``ct_window=None`` / ``--no-ct-window`` keeps nnU-Net's percentiles).

**In-process.** nnU-Net's fingerprinting, integrity check and preprocessing always start a
``spawn`` worker pool, and every worker imports torch and nnU-Net again (4-40 s each on a loaded
2-core machine) — most of the time for a few hundred small 2-D slices. With ``-np 1`` (our default)
the same nnU-Net code runs each case in this process instead (:func:`in_process_pools`); with
``-np N > 1`` nnU-Net's pools are used unchanged, which pays off for many large volumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator, List, Sequence, Tuple, Union

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_joint.errors import InputError, cli_entry
from nnunet_joint.io import quiet_stdout
from nnunet_joint.names import COARSE_PLANS, COARSE_SPACING_MM
from nnunet_joint.network.seresnet import ENCODER_DEPTHS
from nnunet_joint.network.unet import DEFAULT_DECODER_CHANNELS, STANDARD_STRIDES

NETWORK_CLASS_NAME = "nnunet_joint.network.unet.SEResNetUNet"
#: The CT window of every plans file we write (HU): abdominal soft tissue, W 400 / L 40. Fat (-100),
#: water and cysts (0-20), liver (about 110) and enhanced vessels (150-190) all lie inside it.
CT_WINDOW_HU = (-160.0, 240.0)


def plans_name_of(encoder: str) -> str:
    """``seresnet50`` -> ``nnUNetSEResNet50Plans``: the plans identifier of an encoder's preset."""
    if encoder not in ENCODER_DEPTHS:
        raise ValueError(f"no plans preset for encoder {encoder!r}; choose one of {sorted(ENCODER_DEPTHS)}")
    return f"nnUNetSEResNet{ENCODER_DEPTHS[encoder]}Plans"


# ----------------------------------------------------------------------------- the presets

class nnUNetPlannerSEResNet(ExperimentPlanner):
    """nnU-Net's planner with the SE-ResNet U-Net as its 2-D network (the presets below set the encoder).

    Memory model: nnU-Net's (feature-map elements per sample, ``compute_conv_feature_map_size``,
    in dynamic-network-architectures' counting convention) with the reference value nnU-Net's
    residual-encoder presets use for that convention (135 M elements ~ batch 12 in 8 GB), since the
    SE-ResNet is a residual encoder too. It was not measured on a GPU here.
    """

    encoder_name = "seresnet50"
    decoder_channels = DEFAULT_DECODER_CHANNELS
    n_conv_per_stage_decoder = 2

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or plans_name_of(self.encoder_name), overwrite_target_spacing, suppress_transpose)
        # ``UNet_class`` stays nnU-Net's: the default plan is computed first (spacing, normalisation,
        # resampling), then patch, batch and architecture are replaced with ours.
        self.SEResNet_reference_val_2d = 135_000_000  # nnU-Net's ResEnc presets, same counting convention

    def architecture(self) -> dict:
        """The plans' ``architecture`` entry: our network class and its kwargs (no imports needed)."""
        return {"network_class_name": NETWORK_CLASS_NAME,
                "arch_kwargs": {"encoder_name": self.encoder_name,
                                "strides": [list(s) for s in STANDARD_STRIDES],
                                "decoder_channels": list(self.decoder_channels),
                                "n_conv_per_stage_decoder": self.n_conv_per_stage_decoder},
                "_kw_requires_import": []}

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """nnU-Net's plan (spacing, normalisation, resampling) with our patch, batch and architecture."""
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(spacing) != 2:
            return plan  # 3-D configurations are dropped in save_plans: the network is 2-D
        architecture = self.architecture()
        patch_size, batch_size = self.patch_and_batch_size(spacing, median_shape, approximate_n_voxels_dataset,
                                                           architecture)
        plan.update(patch_size=patch_size, batch_size=batch_size, architecture=architecture)
        return plan

    def patch_and_batch_size(self, spacing, median_shape, approximate_n_voxels_dataset: float,
                             architecture: dict) -> tuple[list[int], int]:
        """nnU-Net's 2-D rules with our network.

        Start from the median image (aspect ratio of the spacing), round each axis up to the total
        stride (32), shrink the axis furthest above the median shape while the memory estimate
        exceeds the target, then fill the memory with the batch, capped at 5 % of the dataset's
        voxels per step and at least 2 (nnU-Net's ``max_dataset_covered`` and minimum).
        """
        divisor = np.prod(np.array(STANDARD_STRIDES), axis=0)
        inverse = 1 / np.array(spacing, dtype=float)
        initial = np.minimum(np.round(inverse * (2048 ** 2 / np.prod(inverse)) ** 0.5),
                             np.asarray(median_shape[:2], dtype=float))
        patch = [int(max(d, -(-int(p) // d) * d)) for p, d in zip(initial, divisor)]
        num_input_channels = len(self.dataset_json["channel_names"])
        num_labels = len(self.dataset_json["labels"])

        def estimate(size: list[int]) -> float:
            return float(self.static_estimate_VRAM_usage(
                tuple(size), num_input_channels, num_labels, architecture["network_class_name"],
                architecture["arch_kwargs"], architecture["_kw_requires_import"]))

        reference = self.SEResNet_reference_val_2d * self.UNet_vram_target_GB / self.UNet_reference_val_corresp_GB
        ref_bs = self.UNet_reference_val_corresp_bs_2d
        current = estimate(patch)
        while current / ref_bs * 2 > reference and any(p > d for p, d in zip(patch, divisor)):
            ratios = [p / m if p > d else 0.0 for p, m, d in zip(patch, median_shape, divisor)]
            axis = int(np.argmax(ratios))
            patch[axis] -= int(divisor[axis])
            current = estimate(patch)
        batch_size = round(reference / current * ref_bs)
        cap = round(approximate_n_voxels_dataset * self.max_dataset_covered / np.prod(patch, dtype=np.float64))
        return patch, int(max(min(batch_size, cap), self.UNet_min_batch_size))

    def save_plans(self, plans: dict) -> None:
        plans["configurations"] = {k: v for k, v in plans["configurations"].items() if k == "2d"}
        super().save_plans(plans)


class nnUNetPlannerSEResNet18(nnUNetPlannerSEResNet):
    """SE-ResNet-18 encoder; plans ``nnUNetSEResNet18Plans``."""

    encoder_name = "seresnet18"


class nnUNetPlannerSEResNet34(nnUNetPlannerSEResNet):
    """SE-ResNet-34 encoder; plans ``nnUNetSEResNet34Plans``."""

    encoder_name = "seresnet34"


class nnUNetPlannerSEResNet50(nnUNetPlannerSEResNet):
    """SE-ResNet-50 encoder; plans ``nnUNetSEResNet50Plans``."""

    encoder_name = "seresnet50"


PLANNERS: dict[str, type[nnUNetPlannerSEResNet]] = {
    c.__name__: c for c in (nnUNetPlannerSEResNet18, nnUNetPlannerSEResNet34, nnUNetPlannerSEResNet50)}


def planner_of(encoder: str) -> str:
    """The planner of an encoder's preset (``seresnet50`` -> ``nnUNetPlannerSEResNet50``)."""
    for name, cls in PLANNERS.items():
        if cls.encoder_name == encoder:
            return name
    raise ValueError(f"no plans preset for encoder {encoder!r}; choose one of {sorted(ENCODER_DEPTHS)}")


class nnUNetPlannerCoarse(ExperimentPlanner):
    """nnU-Net's default planner with every target spacing at least :data:`~nnunet_joint.names.COARSE_SPACING_MM`;
    plans :data:`~nnunet_joint.names.COARSE_PLANS`.

    For a faster stage 1: LiTS-like CT at 0.7-0.8 mm pixels is planned by nnU-Net at that
    spacing (512 x 512 slices), while a liver mask needs no more than a few millimetres (16x fewer
    pixels at 3 mm). It is nnU-Net's own ``overwrite_target_spacing`` set to ``max(nnU-Net's
    target, 3 mm)`` per axis, so data already coarser keep nnU-Net's spacing. The axis a 2-D model
    slices along stays nnU-Net's choice from its own target spacing: with the coarsened one, ties
    and thin slices could move it into the image plane.
    """

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = COARSE_PLANS,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        if self.overwrite_target_spacing is None:
            self.overwrite_target_spacing = [max(float(s), COARSE_SPACING_MM)
                                             for s in self.determine_fullres_target_spacing()]

    def determine_transpose(self):
        coarse, self.overwrite_target_spacing = self.overwrite_target_spacing, None
        try:
            return super().determine_transpose()
        finally:
            self.overwrite_target_spacing = coarse


def planner_class(name: str) -> type:
    """One of our planners, or any planner nnU-Net itself finds (``ExperimentPlanner``, ResEnc presets)."""
    if name in PLANNERS:
        return PLANNERS[name]
    if name == nnUNetPlannerCoarse.__name__:
        return nnUNetPlannerCoarse
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "experiment_planning"), name,
                                        current_module="nnunetv2.experiment_planning")
    if found is None:
        raise InputError(None, f"planner {name!r} not found (ours: {', '.join(PLANNERS)}, "
                               f"{nnUNetPlannerCoarse.__name__}; or one of "
                               "nnU-Net's, e.g. ExperimentPlanner, nnUNetPlannerResEncM)")
    return found


# ----------------------------------------------------------------------------- one CT window

def ct_window_properties(window: tuple[float, float]) -> dict[str, float]:
    """The intensity properties ``CTNormalization`` reads, for a fixed window: clip to it, map it to [-2, 2]."""
    low, high = (float(v) for v in window)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise InputError("--ct-window", f"needs two finite HU values LOW < HIGH, got {low} {high}")
    centre = (low + high) / 2
    return {"max": high, "mean": centre, "median": centre, "min": low, "percentile_00_5": low,
            "percentile_99_5": high, "std": (high - low) / 4}


def set_ct_window(plans_file: Path, window: tuple[float, float] = CT_WINDOW_HU) -> None:
    """Write ``window`` into a plans file for every channel some configuration normalises with ``CTNormalization``."""
    from nnunet_joint.io import write_json

    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    properties = ct_window_properties(window)
    ct_channels = {str(i) for config in plans["configurations"].values()
                   for i, scheme in enumerate(config.get("normalization_schemes", [])) if scheme == "CTNormalization"}
    for channel in sorted(ct_channels):
        plans["foreground_intensity_properties_per_channel"][channel] = dict(properties)
    write_json(plans, plans_file, sort_keys=False, indent=4)


#: nnU-Net's ExperimentPlanner defaults (instance attributes ``max_dataset_covered``, ``UNet_min_batch_size``):
#: a training step covers at most 5 % of the dataset's voxels, with at least 2 samples.
MAX_DATASET_COVERED = 0.05
MIN_BATCH_SIZE = 2


def fit_batch_to_dataset(plans_file: Path, fingerprint_file: Path, num_cases: int) -> None:
    """Cap each configuration's batch size by nnU-Net's rule for *this* dataset: a step covers at most
    ``max_dataset_covered`` (5 %) of its voxels, and at least ``UNet_min_batch_size`` (2) samples.

    nnU-Net's ``move_plans_between_datasets`` carries the source's batch size with its spacing,
    normalisation and architecture. A data-rich source (the LiTS lesion slices) plans a batch of
    dozens; carried to the ~60 training slices of a Sheba fold it would show most of the fold in
    every step, a different training from the one nnU-Net plans for a small dataset. The batch is a
    training setting, not part of what the transfer must share, so the target gets the batch
    nnU-Net would give it (never above the source's); every row on the target, from scratch or from
    LiTS, trains with the same one. The dataset's size is nnU-Net's ``approximate_n_voxels_dataset``:
    the median case shape, resampled to the configuration's spacing, times the number of cases.
    """
    from nnunet_joint.io import write_json

    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    fingerprint = json.loads(fingerprint_file.read_text(encoding="utf-8"))
    shapes = np.array(fingerprint["shapes_after_crop"], dtype=np.float64)
    spacings = np.array(fingerprint["spacings"], dtype=np.float64)
    for config in plans["configurations"].values():
        if "batch_size" not in config or "spacing" not in config:
            continue  # a cascade's inheriting configuration
        spacing = np.array(config["spacing"], dtype=np.float64)
        axes = slice(shapes.shape[1] - len(spacing), None)  # 2d: the in-plane axes
        resampled = np.round(shapes[:, axes] * spacings[:, axes] / spacing)
        n_voxels = float(np.prod(np.median(resampled, axis=0), dtype=np.float64)) * num_cases
        cap = round(n_voxels * MAX_DATASET_COVERED / np.prod(config["patch_size"], dtype=np.float64))
        config["batch_size"] = int(max(min(config["batch_size"], cap), MIN_BATCH_SIZE))
    write_json(plans, plans_file, sort_keys=False, indent=4)


def _plans_file(dataset_id: int | str, plans_identifier: str) -> Path:
    from nnunetv2.paths import nnUNet_preprocessed

    return Path(nnUNet_preprocessed) / _dataset_name(dataset_id) / f"{plans_identifier}.json"


# ----------------------------------------------------------------------------- in-process running

class _Finished:
    """What ``Pool.starmap_async`` returns, for a result computed already."""

    def __init__(self, value: Any):
        self._value = value

    def ready(self) -> bool:
        return True

    def get(self) -> Any:
        return self._value


class _Alive:
    @staticmethod
    def is_alive() -> bool:
        return True


class _SerialPool:
    """A ``multiprocessing.Pool`` stand-in that runs every task at once, in this process."""

    def __init__(self, *_args, **_kwargs):
        self._pool = [_Alive()]  # nnU-Net watches its workers through this attribute

    def __enter__(self) -> "_SerialPool":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    @staticmethod
    def starmap(function: Callable, iterable: Iterable) -> list:
        return [function(*args) for args in iterable]

    def starmap_async(self, function: Callable, iterable: Iterable) -> _Finished:
        return _Finished(self.starmap(function, iterable))


_SERIAL_MULTIPROCESSING = SimpleNamespace(get_context=lambda *_a, **_k: SimpleNamespace(Pool=_SerialPool))
#: nnU-Net modules whose ``multiprocessing.get_context("spawn").Pool`` runs the per-case work.
_POOLED_MODULES = (
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor",
    "nnunetv2.experiment_planning.verify_dataset_integrity",
    "nnunetv2.preprocessing.preprocessors.default_preprocessor",
)


@contextlib.contextmanager
def in_process_pools() -> Iterator[None]:
    """Run nnU-Net's fingerprinting, integrity check and preprocessing without worker processes."""
    import importlib

    modules = [importlib.import_module(m) for m in _POOLED_MODULES]
    originals = [m.multiprocessing for m in modules]
    for module in modules:
        module.multiprocessing = _SERIAL_MULTIPROCESSING
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.multiprocessing = original


def _dataset_name(dataset_id: int | str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset_id)
    except RuntimeError:
        raise InputError(None, f"dataset {dataset_id} not found in nnUNet_raw / nnUNet_preprocessed") from None


def plan_and_preprocess(dataset_ids: Sequence[int], planner: str = "ExperimentPlanner",
                        configurations: Sequence[str] = ("2d",), num_processes: int = 1,
                        verify_dataset_integrity: bool = False, plans_name: str | None = None,
                        gpu_memory_target_in_gb: float | None = None, preprocess: bool = True,
                        quiet: bool = True, ct_window: tuple[float, float] | None = CT_WINDOW_HU,
                        reuse_fingerprint: bool = False) -> str:
    """Fingerprint, plan (with ``planner``) and preprocess datasets, as ``nnUNetv2_plan_and_preprocess``.

    The plans get ``ct_window`` before preprocessing (None: nnU-Net's own percentile window).
    ``reuse_fingerprint`` keeps a ``dataset_fingerprint.json`` already in the preprocessed folder
    (nnU-Net's ``clean=False``): for a second preset planned on the same raw data right after the
    first, whose fingerprint it would compute again (about 10 s per dataset on the small phantom).

    Returns:
        The plans identifier written (e.g. ``nnUNetSEResNet18Plans``).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiment_dataset

    planner_cls = planner_class(planner)
    pools = in_process_pools() if num_processes <= 1 else contextlib.nullcontext()
    n = max(1, num_processes)
    with pools, quiet_stdout(quiet):
        extract_fingerprints(list(dataset_ids), num_processes=n, check_dataset_integrity=verify_dataset_integrity,
                             clean=not reuse_fingerprint, verbose=False, show_progress_bar=not quiet)
        identifier = None
        for d in dataset_ids:
            _, identifier = plan_experiment_dataset(d, planner_cls, gpu_memory_target_in_gb,
                                                    overwrite_plans_name=plans_name)
            if ct_window is not None:
                set_ct_window(_plans_file(d, identifier), ct_window)
        if preprocess:
            preprocess_(dataset_ids, identifier, configurations, n, quiet)
    assert identifier is not None
    return identifier


def preprocess_(dataset_ids: Sequence[int], plans_identifier: str, configurations: Sequence[str],
                num_processes: int, quiet: bool = True) -> None:
    """nnU-Net's ``preprocess`` for some configurations (in-process when the pools are patched)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess

    preprocess(list(dataset_ids), plans_identifier, tuple(configurations), [num_processes] * len(configurations),
               verbose=False, show_progress_bar=not quiet)


def transfer_plans(source_id: int, target_ids: Sequence[int], plans_identifier: str,
                   configurations: Sequence[str] = ("2d",), num_processes: int = 1, quiet: bool = True,
                   ct_window: tuple[float, float] | None = CT_WINDOW_HU, verify_dataset_integrity: bool = False,
                   reuse_fingerprint: bool = False) -> None:
    """nnU-Net's transfer route: the source's plans moved to each target, which is then preprocessed with them.

    Pretraining and fine-tuning then share spacing, normalisation (``ct_window``, or with None the
    source's intensity statistics) and architecture; the batch size is the target's own under nnU-Net's
    rule (:func:`fit_batch_to_dataset`). The targets are fingerprinted first (nnU-Net's
    trainer copies ``dataset_fingerprint.json`` into its results), and each one's ``dataset.json`` is
    copied to its preprocessed folder, which nnU-Net's preprocessor reads. ``reuse_fingerprint``: as in
    :func:`plan_and_preprocess` (a second preset moved to the same targets).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
        move_plans_between_datasets,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    source = _dataset_name(source_id)
    plans_file = Path(nnUNet_preprocessed) / source / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise InputError(plans_file, f"not found: plan dataset {source_id} with the {plans_identifier} preset first")
    pools = in_process_pools() if num_processes <= 1 else contextlib.nullcontext()
    with pools, quiet_stdout(quiet):
        extract_fingerprints(list(target_ids), num_processes=max(1, num_processes), clean=not reuse_fingerprint,
                             verbose=False, check_dataset_integrity=verify_dataset_integrity,
                             show_progress_bar=not quiet)
        for target in target_ids:
            name = _dataset_name(target)
            (Path(nnUNet_preprocessed) / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(nnUNet_raw) / name / "dataset.json", Path(nnUNet_preprocessed) / name / "dataset.json")
            move_plans_between_datasets(source_id, target, plans_identifier, plans_identifier)
            fit_batch_to_dataset(_plans_file(target, plans_identifier),
                                 Path(nnUNet_preprocessed) / name / "dataset_fingerprint.json",
                                 json.loads((Path(nnUNet_raw) / name / "dataset.json").read_text())["numTraining"])
            if ct_window is not None:
                set_ct_window(_plans_file(target, plans_identifier), ct_window)
        preprocess_(target_ids, plans_identifier, configurations, max(1, num_processes), quiet)


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_joint_plan_and_preprocess",
        description="nnUNetv2_plan_and_preprocess that also finds our SE-ResNet plans presets "
                    f"({', '.join(PLANNERS)}), runs in-process by default, and can carry one "
                    "dataset's plans to others (--plans-from).")
    p.add_argument("-d", nargs="+", type=int, required=True, help="dataset ids")
    p.add_argument("-pl", default="ExperimentPlanner", help="planner class (ours or nnU-Net's)")
    p.add_argument("-c", nargs="+", default=["2d"], help="configurations to preprocess (default 2d)")
    p.add_argument("-np", type=int, default=1, help="worker processes; 1 = in this process (default)")
    p.add_argument("-gpu_memory_target", type=float, default=None, help="GPU memory target in GB (planner)")
    p.add_argument("-overwrite_plans_name", default=None, help="plans name instead of the planner's")
    p.add_argument("--verify_dataset_integrity", action="store_true", help="run nnU-Net's integrity check")
    p.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    p.add_argument("--plans-from", type=int, default=None, metavar="SOURCE_ID",
                   help="do not plan: move SOURCE_ID's plans (-p) to the -d datasets and preprocess them")
    p.add_argument("-p", default=None, help="plans identifier for --plans-from (e.g. nnUNetSEResNet50Plans)")
    p.add_argument("--ct-window", nargs=2, type=float, default=list(CT_WINDOW_HU), metavar=("LOW", "HIGH"),
                   help="CT window (HU) written into the plans for every CT channel (default: -160 240, the "
                        "abdominal soft-tissue window)")
    p.add_argument("--no-ct-window", action="store_true", help="keep nnU-Net's window (foreground percentiles)")
    p.add_argument("--verbose", action="store_true", help="show nnU-Net's own output")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    window = None if args.no_ct_window else tuple(args.ct_window)
    if window is not None:
        ct_window_properties(window)  # a bad window stops before anything is written
    if args.plans_from is not None:
        if not args.p:
            raise InputError(None, "--plans-from needs -p PLANS_IDENTIFIER (e.g. nnUNetSEResNet50Plans)")
        transfer_plans(args.plans_from, args.d, args.p, args.c, args.np, quiet=not args.verbose, ct_window=window)
        print(f"moved {args.p} from dataset {args.plans_from} to {', '.join(map(str, args.d))} and preprocessed "
              f"{', '.join(args.c)}")
        return 0
    identifier = plan_and_preprocess(args.d, args.pl, args.c, args.np, args.verify_dataset_integrity,
                                     args.overwrite_plans_name, args.gpu_memory_target, not args.no_pp,
                                     quiet=not args.verbose, ct_window=window)
    print(f"planned {', '.join(map(str, args.d))} with {args.pl}: plans {identifier}"
          + ("" if args.no_pp else f"; preprocessed {', '.join(args.c)}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
