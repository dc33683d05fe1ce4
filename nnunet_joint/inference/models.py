"""Finding the cascade's two trained models and running them with nnU-Net's own predictor.

nnU-Net's ``initialize_from_trained_model_folder`` loads checkpoints with
``torch.load(weights_only=False)``, which runs code from a hostile file, and builds whatever
network class ``plans.json`` names. :func:`load_model` runs that same loader, but only after the
plans' architecture passed the allow-list (:mod:`nnunet_joint.network.from_plans`) and with its
``torch.load`` routed to our weights-only loader (:func:`~nnunet_joint.checkpoints.nnunet_loads_safely`,
the path our trainers resume by too). The trainer class is found by nnU-Net's lookup
(``nnUNet_extTrainer`` pointed at our ``trainers/`` when unset). Several folds are an ensemble of
parameter sets, as in nnU-Net (logits averaged). Preprocessing, sliding-window prediction,
test-time mirroring and the resampling back to the input grid are nnU-Net's; the sliding window sends
its tiles to the network several at a time (:mod:`~nnunet_joint.inference.tile_batches`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from nnunet_joint import LESION_TYPES, TRAINERS_DIR
from nnunet_joint.checkpoints import nnunet_loads_safely
from nnunet_joint.cpu import cpu_threads
from nnunet_joint.errors import InputError
from nnunet_joint.io import quiet_stdout, read_json_file
from nnunet_joint.names import (
    CROP_MARGIN_MM,
    DATASET_FOLDERS,
    JOINT_DATASET,
    LIVER_DATASET,
    NNUNET_TRAINER,
    PLAIN_TRAINER,
    parse_results_folder_name,
    results_folder_name,
    results_folder_pattern,
)
from nnunet_joint.names import trainer_name as experiment_trainer
from nnunet_joint.network.from_plans import check_architecture

CHECKPOINT_NAME = "checkpoint_final.pth"
#: Stage 1 is a plain liver segmentation: nnU-Net's own trainer is the strongest, simplest choice
#: (``nnUNetTrainer_JointBudget`` is the same trainer at the reproduce run's budget).
LIVER_TRAINER_PREFERENCE = (NNUNET_TRAINER, PLAIN_TRAINER)
#: Stage 2 default: the joint model; among several, the MIDL paper's best (LiTS-initialised) first.
JOINT_TRAINER_PREFERENCE = (experiment_trainer("joint", "LiTS"), experiment_trainer("joint"))
JOINT_TRAINER_PATTERN = experiment_trainer("joint") + "*"


# ----------------------------------------------------------------------------- finding models


def _results_root(role: str) -> Path:
    root = os.environ.get("nnUNet_results")
    if not root:
        raise InputError(None, f"no {role} model given and nnUNet_results is not set; pass the model folder "
                               f"(e.g. --{role}-model PATH/{results_folder_name('{Trainer}', '{Plans}')}) or set "
                               "nnUNet_results")
    return Path(root)


def default_model_folder(role: str, dataset: str, pattern: str, preference: Sequence[str]) -> Path:
    """``$nnUNet_results/<dataset>/<trainer>__<plans>__2d`` chosen by ``preference``.

    A preferred trainer wins (whatever its plans, if it was trained with one set of plans only);
    otherwise a single match of ``pattern``; several matches are an error that lists them, so the
    user chooses rather than getting an arbitrary model.
    """
    dataset_dir = _results_root(role) / dataset
    if not dataset_dir.is_dir():
        raise InputError(dataset_dir, f"no trained {role} model: folder not found (train {dataset} first or "
                                      f"pass --{role}-model)")

    def found(glob: str) -> list[Path]:
        return sorted(p for p in dataset_dir.glob(glob) if p.is_dir() and parse_results_folder_name(p.name))

    for trainer in preference:
        candidates = found(results_folder_pattern(trainer))
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise InputError(dataset_dir, f"{trainer} was trained with several plans ("
                                          f"{', '.join(p.name for p in candidates)}); choose one with --{role}-model")
    matches = found(results_folder_pattern(pattern))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InputError(dataset_dir, f"no trained {role} model ({results_folder_pattern(pattern)}) in this folder")
    raise InputError(dataset_dir, f"several {role} models ({', '.join(p.name for p in matches)}); "
                                  f"choose one with --{role}-model")


def liver_model_folder(given: str | os.PathLike | None) -> Path:
    """Stage-1 model folder: the given one, or plain nnU-Net's on Dataset501 (any trainer if alone)."""
    if given is not None:
        return Path(given)
    return default_model_folder("liver", DATASET_FOLDERS[LIVER_DATASET], NNUNET_TRAINER + "*", LIVER_TRAINER_PREFERENCE)


def lesion_model_folder(given: str | os.PathLike | None) -> Path:
    """Stage-2 model folder: the given one (joint or Y-Net), or the joint model on Dataset504."""
    if given is not None:
        return Path(given)
    return default_model_folder("lesion", DATASET_FOLDERS[JOINT_DATASET], JOINT_TRAINER_PATTERN,
                                JOINT_TRAINER_PREFERENCE)


def available_folds(folder: Path) -> list[int | str]:
    """Folds 0-4 holding ``checkpoint_final.pth`` (an ensemble), else ``all`` if it has one."""
    folds: list[int | str] = [f for f in range(5) if (folder / f"fold_{f}" / CHECKPOINT_NAME).is_file()]
    if not folds and (folder / "fold_all" / CHECKPOINT_NAME).is_file():
        folds = ["all"]
    return folds


def parse_folds(values: Sequence[str] | None) -> list[int | str] | None:
    """``--folds 0 1 2`` / ``--folds all`` -> fold identifiers (``None``: detect)."""
    if not values:
        return None
    out: list[int | str] = []
    for v in values:
        if v == "all":
            out.append("all")
        elif re.fullmatch(r"\d+", v):
            out.append(int(v))
        else:
            raise InputError(None, f"--folds: {v!r} is not a fold number or 'all'")
    return out


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "not found: not an nnU-Net model folder (expected plans.json and dataset.json)")
    return read_json_file(path)


def find_trainer_class(trainer_name: str) -> type:
    """nnU-Net's trainer lookup by class name; our ``trainers/`` is searched when nothing else is set."""
    os.environ.setdefault("nnUNet_extTrainer", str(TRAINERS_DIR))
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with quiet_stdout():
            return recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError:
        raise InputError(None, f"trainer class {trainer_name!r} not found in nnU-Net or in nnUNet_extTrainer="
                               f"{os.environ.get('nnUNet_extTrainer')}") from None


def has_classification_head(network: torch.nn.Module) -> bool:
    return getattr(network, "cls_head", None) is not None or callable(getattr(network, "classify", None))


# ----------------------------------------------------------------------------- predictor settings


@dataclass(frozen=True)
class PredictorSettings:
    """How nnU-Net's predictor runs a model (what ``nnUNetv2_predict`` sets with its options).

    Attributes:
        tta: test-time mirroring over the axes the trainer allows (``--disable_tta`` in nnU-Net is
            ``tta=False``): 4 network passes per tile for a 2-D model instead of 1.
        tile_step_size: nnU-Net's ``-step_size`` (0.5: tiles overlap by half).
        threads: torch CPU threads (default: the cores this process may use); nnU-Net's sliding
            window caps them at ``nnUNet_def_n_proc`` (8 unless set).
        slab_slices: the cascade predicts a 2-D model's image this many slices at a time (nnU-Net's
            preprocessing, sliding window and resampling on each slab), so memory is bounded by
            the slab, not the scan.
    """

    tta: bool = True
    tile_step_size: float = 0.5
    threads: int | None = None
    slab_slices: int = 32

    @staticmethod
    def tta_default(device: torch.device) -> bool:
        """Test-time mirroring by default only on CUDA: on the CPU it quadruples a 2-D model's network
        time (``nnunet_joint_predict`` and the cascade crops of ``convert_sheba`` share this rule)."""
        return device.type == "cuda"


@dataclass
class Prediction:
    """One model's output on one image, on the image's own grid (array order).

    Attributes:
        segmentation: ``(z, y, x)`` label map with the model's label values.
        probabilities: ``(num_labels, z, y, x)`` softmax, channels in ``label_values`` order
            (``None`` when not asked for).
        slice_type_probabilities: Y-Net only: ``(len(LESION_TYPES), z, y, x)``, each slice's
            head probabilities broadcast over the slice.
    """

    segmentation: np.ndarray
    probabilities: np.ndarray | None
    slice_type_probabilities: np.ndarray | None = None


class CascadeModel:
    """A trained nnU-Net model folder, safely loaded, ready to predict arrays."""

    def __init__(self, folder: Path, trainer_name: str, folds: list[int | str], predictor, labels: dict[str, int],
                 dataset_json: dict, settings: PredictorSettings | None = None):
        self.folder = folder
        self.trainer_name = trainer_name
        self.folds = folds
        self.predictor = predictor
        self.labels = labels
        self.dataset_json = dataset_json
        self.settings = settings or PredictorSettings()

    @property
    def label_values(self) -> list[int]:
        return list(self.predictor.label_manager.all_labels)

    @property
    def is_joint(self) -> bool:
        """Pixel-wise lesion types (labels named after every lesion type)."""
        return all(t in self.labels for t in LESION_TYPES)

    @property
    def is_ynet(self) -> bool:
        """One lesion label plus a classification head that types each slice."""
        return "lesion" in self.labels and has_classification_head(self.predictor.network)

    @property
    def crop_margin_mm(self) -> float:
        """The crop margin the converter used for this model's training data (recorded in dataset.json)."""
        source = self.dataset_json.get("source")
        if isinstance(source, dict) and isinstance(source.get("margin_mm"), (int, float)):
            return float(source["margin_mm"])
        return CROP_MARGIN_MM  # a dataset.json that does not record the converter's margin

    @property
    def slab_axis(self) -> int | None:
        """For a 2-D configuration, the array axis nnU-Net cuts the image into slices along
        (``transpose_forward[0]``): slabs along it predict independently. ``None`` for 3-D."""
        p = self.predictor
        if len(p.configuration_manager.patch_size) != 2:
            return None
        return int(p.plans_manager.transpose_forward[0])

    def resampling_configuration(self, spacing_zyx: Sequence[float]):
        """nnU-Net's configuration, with nnU-Net's own ``force_separate_z`` resampling option where that is
        the same computation: a 2-D model keeps the spacing between its slices, so resampling each slice
        in-plane equals nnU-Net's 3-D resampling (B-splines evaluated at their own nodes along that axis)
        up to float rounding, at a fraction of the cost (order 3 on 32 slices of 512 x 512: about 7x less
        time). One difference: skimage clips each resized image to its input's range, per slice here,
        per slab in 3-D; it shows only at a spline overshoot in a slice that lacks the slab's extreme
        values, which CT after nnU-Net's CT normalisation (clipped to two foreground percentiles, so
        air/fat and bone hit the limits) nearly never does. Used only when the slices' axis is the one
        nnU-Net itself would pick as low-resolution (the largest spacing, alone) on the way in and is not
        outranked by another single axis on the way back, with nnU-Net's default
        resampling functions and plans that leave ``force_separate_z`` to nnU-Net; otherwise unchanged.
        """
        from nnunetv2.preprocessing.resampling.default_resampling import get_lowres_axis
        from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

        p = self.predictor
        cm = p.configuration_manager
        if self.slab_axis is None:
            return cm
        transposed = [float(spacing_zyx[i]) for i in p.plans_manager.transpose_forward]
        if [int(a) for a in get_lowres_axis(transposed)] != [0]:
            return cm
        # back to the input grid, nnU-Net resamples from [slice spacing, *planned in-plane spacing]: forced
        # separate-z there takes that grid's low-resolution axis, which must be the slices' one as well (two
        # or three tied axes make nnU-Net resample in 3-D, forced or not)
        back_axes = [int(a) for a in get_lowres_axis([transposed[0], *[float(v) for v in cm.spacing]])]
        if len(back_axes) == 1 and back_axes != [0]:
            return cm
        configuration = copy.deepcopy(cm.configuration)
        for kind in ("data", "seg", "probabilities"):
            kwargs = configuration.get(f"resampling_fn_{kind}_kwargs")
            if configuration.get(f"resampling_fn_{kind}") != "resample_data_or_seg_to_shape" or \
                    not isinstance(kwargs, dict) or kwargs.get("force_separate_z", "absent") is not None:
                return cm  # not nnU-Net's default resampling, or already decided by the plans
            kwargs["force_separate_z"] = True
        return ConfigurationManager(configuration)

    def channel(self, label_name: str) -> int:
        """Probability channel of a named label."""
        return self.label_values.index(self.labels[label_name])

    def describe(self) -> dict:
        return {"folder": str(self.folder), "trainer": self.trainer_name, "folds": self.folds,
                "tta": self.settings.tta, "tile_step_size": self.settings.tile_step_size}

    def predict(self, image_zyx: np.ndarray, spacing_zyx: Sequence[float], probabilities: bool = True,
                timer: Callable[[str], contextlib.AbstractContextManager] | None = None) -> Prediction:
        """Run nnU-Net's preprocessing, sliding window (ensemble over folds) and resampling back.

        Args:
            image_zyx: the image in array order (not modified).
            spacing_zyx: its voxel size (array order).
            probabilities: also return the softmax on the image grid (``False``: segmentation only,
                nnU-Net's faster path that takes the argmax of the resampled logits).
            timer: ``timer(name)`` is a context manager timing one step ("preprocess", "network",
                "resample back").
        """
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        step = timer or (lambda name: contextlib.nullcontext())
        p = self.predictor
        threads = self.settings.threads or cpu_threads()
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with step("preprocess"):
                configuration = self.resampling_configuration(spacing_zyx)
                preprocessor = configuration.preprocessor_class(verbose=False)
                # run_case_npy converts to float32 with a copy: the caller's array is not touched
                data, _, props = preprocessor.run_case_npy(image_zyx[None], None,
                                                           {"spacing": [float(s) for s in spacing_zyx]},
                                                           p.plans_manager, configuration, p.dataset_json)
                data_t = torch.from_numpy(data)
            with step("network"):
                logits = p.predict_logits_from_preprocessed_data(data_t).cpu()
                slice_types = self._slice_type_probabilities(data_t, props) if self.is_ynet else None
            del data, data_t
            with step("resample back"):
                exported = convert_predicted_logits_to_segmentation_with_correct_shape(
                    logits, p.plans_manager, configuration, p.label_manager, props,
                    return_probabilities=probabilities, num_threads_torch=threads)
        finally:
            torch.set_num_threads(previous_threads)
        if probabilities:
            segmentation, probs = exported
            return Prediction(np.asarray(segmentation), np.asarray(probs, dtype=np.float32), slice_types)
        return Prediction(np.asarray(exported), None, slice_types)

    @torch.inference_mode()
    def _slice_type_probabilities(self, data: torch.Tensor, props: dict) -> np.ndarray:
        """Y-Net head on every whole preprocessed slice, averaged over folds, back on the input grid.

        The same whole-slice classification as the trainer's validation
        (:meth:`~nnunet_joint.network.unet.SEResNetUNet.slice_type_probabilities`).
        """
        p = self.predictor
        network = p.network
        slices = data.permute(1, 0, 2, 3).to(p.device)  # (slices, C, Y, X)
        probs = torch.zeros((slices.shape[0], len(LESION_TYPES)))
        network.eval()
        for params in p.list_of_parameters:
            network.load_state_dict(params)
            probs += network.slice_type_probabilities(slices).cpu()
        probs = (probs / len(p.list_of_parameters)).numpy()
        # into the transposed, uncropped grid, then back to the input's axis order
        shape = tuple(props["shape_before_cropping"])
        full = np.full((len(LESION_TYPES), *shape), 1.0 / len(LESION_TYPES), dtype=np.float32)
        first = int(props["bbox_used_for_cropping"][0][0])
        for i in range(probs.shape[0]):
            full[:, first + i] = probs[i][:, None, None]
        backward = p.plans_manager.transpose_backward
        return full.transpose([0] + [a + 1 for a in backward])


def check_plans(plans: dict, where: Path) -> None:
    """Every configuration's architecture must be allow-listed before nnU-Net imports anything it names."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise InputError(where, "no 'configurations' in the plans")
    for configuration in configurations.values():
        if isinstance(configuration, dict) and "architecture" in configuration:
            check_architecture(configuration["architecture"], where)


def load_model(folder: str | os.PathLike, folds: Sequence[int | str] | None, device: torch.device,
               settings: PredictorSettings | None = None) -> CascadeModel:
    """Load a trained nnU-Net model folder with nnU-Net's own loader, safely.

    ``nnUNetPredictor.initialize_from_trained_model_folder`` runs under
    :func:`~nnunet_joint.checkpoints.nnunet_loads_safely` (its ``torch.load`` is our weights-only
    loader, the same path our trainers resume by), after the plans' architecture has passed the
    allow-list (:func:`check_plans`).

    ``settings`` (default: nnU-Net's own: mirroring on, step 0.5) set up nnU-Net's predictor.

    Raises:
        InputError: missing folder, JSON or checkpoint, a checkpoint that would run code, plans that
            name a class outside the allow-list, weights that do not fit the network the plans
            describe, or a model with other than one input channel.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "model folder not found")
    dataset_json = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    parts = parse_results_folder_name(folder.name)
    if parts is None:
        raise InputError(folder, "not an nnU-Net results folder (expected a name like "
                                 f"{results_folder_name('<Trainer>', '<Plans>', '<configuration>')})")
    trainer_name = parts[0]
    if folds is None:
        folds = available_folds(folder)
        if not folds:
            raise InputError(folder, f"no {CHECKPOINT_NAME} in fold_0..fold_4 or fold_all: the model is not "
                                     "trained (to the end)")
    for fold in folds:
        path = folder / f"fold_{fold}" / CHECKPOINT_NAME
        if not path.is_file():
            raise InputError(path, "checkpoint not found")
    # plans name the class to build: refuse anything outside the allow-list before nnU-Net imports it
    check_plans(plans, folder / "plans.json")
    find_trainer_class(trainer_name)  # sets nnUNet_extTrainer to our trainers when unset; clear error if unknown

    with quiet_stdout():  # nnU-Net's CPU notice and trainer search are not for our users
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        from nnunet_joint.inference.tile_batches import nnUNetPredictorTileBatches

        settings = settings or PredictorSettings()
        predictor = nnUNetPredictorTileBatches(tile_step_size=settings.tile_step_size, use_gaussian=True,
                                               use_mirroring=settings.tta,
                                               perform_everything_on_device=device.type == "cuda",
                                               device=device, verbose=False,
                                               allow_tqdm=False)  # one bar per stage, not one per slab
        first = folder / f"fold_{folds[0]}" / CHECKPOINT_NAME
        try:
            with nnunet_loads_safely():
                predictor.initialize_from_trained_model_folder(str(folder), list(folds), CHECKPOINT_NAME)
        except KeyError as e:
            raise InputError(first, f"not an nnU-Net checkpoint (no {e} entry)") from None
        except RuntimeError as e:
            lines = " ".join(str(e).strip().splitlines()[:2])[:300]
            raise InputError(folder, f"the checkpoints do not build the network plans.json describes ({lines})") \
                from None
    if predictor.trainer_name != trainer_name:
        raise InputError(first, f"checkpoint of trainer {predictor.trainer_name!r} in a folder named for "
                                f"{trainer_name!r}")
    for fold, params in zip(folds, predictor.list_of_parameters):  # nnU-Net checks only the first fold's
        try:
            predictor.network.load_state_dict(params)
        except RuntimeError as e:
            first_lines = " ".join(str(e).strip().splitlines()[:2])[:300]
            raise InputError(folder / f"fold_{fold}" / CHECKPOINT_NAME,
                             f"weights do not fit the network built from plans.json ({first_lines})") from None
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    num_input_channels = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                                      dataset_json)
    if num_input_channels != 1:
        raise InputError(folder / "dataset.json", f"the model takes {num_input_channels} input channels; "
                                                  "the cascade gives it one CT image")
    labels = {str(k): int(v) for k, v in dataset_json["labels"].items() if isinstance(v, int)}
    return CascadeModel(folder, trainer_name, list(folds), predictor, labels, dataset_json, settings)
