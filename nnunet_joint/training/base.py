"""The shared base of our trainers: SE-ResNet U-Net, budget, initialisation, freezing, safe loading.

Each hook nnU-Net offers is overridden once here, as small as it can be; the four frameworks in
``trainers/`` only choose the network's heads and the loss. What a run used (architecture,
budget, initialisation report, freezing schedule, class weights) is written to
``joint_config.json`` in the fold folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_joint import LESION_TYPES
from nnunet_joint.checkpoints import load_transfer_weights, safe_torch_load
from nnunet_joint.freezing import SCHEDULES, epoch_boundaries, frozen_groups_at, set_frozen_encoder_groups
from nnunet_joint.io import write_json
from nnunet_joint.network.imagenet import load_imagenet_weights
from nnunet_joint.network.unet import SEResNetUNet
from nnunet_joint.training import settings
from nnunet_joint.training.losses import inverse_frequency_weights, label_frequencies, set_ce_class_weights

#: Key under which the architecture is recorded in the configuration of the plans (and so in the
#: ``plans.json`` copy nnU-Net keeps in the results folder, which its predictor reads back).
ARCHITECTURE_KEY = "nnunet_joint_architecture"
INITS = ("scratch", "ImageNet", "LiTS")
#: Per-level encoder strides: the standard SE-ResNet downsampling (stem, stage1..4) with the stem
#: at full resolution so the decoder ends at the input resolution. Fixed rather than taken from
#: each dataset's plans: the decoder's transposed convolutions have kernel = stride, so weights
#: transfer between datasets (LiTS -> Sheba) only if every dataset uses the same strides.
ENCODER_STRIDES_2D = [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]


def encoder_patch_size(patch_size, strides=ENCODER_STRIDES_2D) -> list[int]:
    """nnU-Net's planned patch size rounded up to a multiple of the encoder's total stride.

    nnU-Net pads images smaller than the patch, in training and in sliding-window inference, so
    a larger patch only adds context; everything else of the plans (spacing, normalisation,
    batch size, augmentation) is kept as planned.
    """
    divisor = np.prod(np.array(strides), axis=0)
    return [int(-(-int(p) // int(d)) * int(d)) for p, d in zip(patch_size, divisor)]


class nnUNetTrainerSEResNetBase(nnUNetTrainer):
    """Base of our trainers; subclasses set the class attributes below and, where needed, the loss."""

    #: seg | cls | ynet | joint
    framework: ClassVar[str] = "seg"
    #: scratch | ImageNet | LiTS (named variants set it; see nnunet_joint.training.variants)
    init: ClassVar[str] = "scratch"
    #: key of nnunet_joint.freezing.SCHEDULES
    schedule: ClassVar[str] = "NoFreeze"
    #: number of lesion types predicted by a classification head (0: no head)
    num_cls_classes: ClassVar[int] = 0
    #: whether the network has a segmentation decoder
    has_segmentation: ClassVar[bool] = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget = settings.Budget.from_env()
        self.budget.apply(self)
        self.architecture = self.architecture_of(self.configuration_manager)
        # record it (and the patch our encoder needs) so that the plans.json nnU-Net copies into the
        # results folder rebuilds this network and predicts with this patch
        for configuration in (self.configuration_manager.configuration,
                              self.plans_manager.plans["configurations"][self.configuration_name]):
            configuration[ARCHITECTURE_KEY] = self.architecture
            configuration["patch_size"] = self.architecture["patch_size"]
        self.frozen_groups: int | None = None
        self.record: dict = {"trainer": self.__class__.__name__, "framework": self.framework, "init": self.init,
                             "schedule": self.schedule, "schedule_table": SCHEDULES[self.schedule],
                             "architecture": self.architecture, **settings.settings_record(self.budget),
                             "num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
                             "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch}

    # ------------------------------------------------------------------ network

    @classmethod
    def architecture_of(cls, configuration_manager: ConfigurationManager) -> dict:
        """The recorded architecture, or (at the start of training) the one the environment asks for."""
        recorded = configuration_manager.configuration.get(ARCHITECTURE_KEY)
        if recorded is not None:
            return dict(recorded)
        if len(configuration_manager.patch_size) != 2:
            raise RuntimeError(f"{cls.__name__} is 2-D (nnU-Net's 2d configuration); got patch size "
                               f"{configuration_manager.patch_size}")
        return {"encoder": settings.encoder_from_env(), "strides": ENCODER_STRIDES_2D,
                "patch_size": encoder_patch_size(configuration_manager.patch_size),
                "planned_patch_size": [int(p) for p in configuration_manager.patch_size],
                "num_cls_classes": cls.num_cls_classes, "segmentation": cls.has_segmentation}

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> SEResNetUNet:
        arch = cls.architecture_of(configuration_manager)
        return SEResNetUNet(num_input_channels, num_output_channels, encoder_name=arch["encoder"],
                            strides=arch["strides"], deep_supervision=enable_deep_supervision,
                            num_cls_classes=arch["num_cls_classes"], segmentation=arch["segmentation"])

    def _get_deep_supervision_scales(self):
        # nnU-Net derives these from all pooling stages of the plans; our encoder has five levels
        if not self.enable_deep_supervision:
            return None
        return list(list(i) for i in 1 / np.cumprod(np.vstack(self.architecture["strides"]), axis=0))[:-1]

    def plain_network(self) -> SEResNetUNet:
        """The network without DDP / torch.compile wrappers."""
        mod = self.network.module if isinstance(self.network, DDP) else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    # ------------------------------------------------------------------ data of the fold

    def training_label_counts(self) -> np.ndarray:
        """Voxel count per label over the training cases of this fold (preprocessed segmentations)."""
        tr_keys, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, tr_keys)
        num_classes = len(self.label_manager.all_labels)
        return label_frequencies((dataset.load_case(k)[1][:] for k in dataset.identifiers), num_classes)

    def class_weights(self) -> torch.Tensor:
        counts = self.training_label_counts()
        weights = inverse_frequency_weights(counts)
        self.record["class_weights"] = {"label_counts": counts.tolist(), "weights": weights.tolist()}
        self.print_to_log_file(f"class weights (inverse frequency in the training fold): {np.round(weights, 4)}")
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def lesion_type_targets(self, keys) -> torch.Tensor:
        """Class index of each case's lesion type, from ``dataset.json['lesion_types']``."""
        types = self.dataset_json.get("lesion_types")
        if types is None:
            raise RuntimeError("dataset.json has no 'lesion_types': convert the dataset with "
                               "nnunet_joint_convert_sheba (it stores each case's lesion type)")
        try:
            idx = [LESION_TYPES.index(types[k]) for k in keys]
        except (KeyError, ValueError) as e:
            raise RuntimeError(f"dataset.json 'lesion_types' has no valid type for case {e}") from None
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ initialisation and freezing

    def on_train_start(self):
        super().on_train_start()
        if self.current_epoch == 0:  # a fresh run; a continued one restores its checkpoint instead
            self.initialise_weights()
        self.record["freezing_epochs"] = epoch_boundaries(SCHEDULES[self.schedule], self.num_epochs)
        self.print_to_log_file(f"nnunet_joint: {self.__class__.__name__}, encoder {self.architecture['encoder']}, "
                               f"budget {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
                               f"(validation {self.num_val_iterations_per_epoch}), schedule {self.schedule} "
                               f"{SCHEDULES[self.schedule]}")
        self.write_record()

    def initialise_weights(self) -> None:
        net = self.plain_network()
        if self.init == "ImageNet":
            path = settings.imagenet_weights_path()
            report = load_imagenet_weights(net.encoder, path)
        elif self.init == "LiTS":
            path = settings.lits_checkpoint_path()
            report = load_transfer_weights(net, path, net.head_prefixes)
        else:
            self.record["initialisation"] = {"init": "scratch"}
            return
        self.print_to_log_file(f"initialised from {self.init} weights {path}: {report.summary()}")
        self.record["initialisation"] = {"init": self.init, "path": str(path), **dataclasses.asdict(report)}

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        n = frozen_groups_at(SCHEDULES[self.schedule], self.current_epoch, self.num_epochs)
        if n != self.frozen_groups:
            frozen = set_frozen_encoder_groups(self.plain_network(), n)
            self.network.train()  # re-apply train/eval modes: frozen BatchNorm layers stay in eval
            if self.is_ddp:
                # DDP registers the parameters that require gradients when it is built
                self.network = DDP(self.network.module, device_ids=[self.local_rank])
            self.print_to_log_file(f"freezing: {n} encoder group(s) frozen from epoch {self.current_epoch} "
                                   f"({len(frozen)} parameter tensors)")
            self.frozen_groups = n

    def _build_loss(self):
        """nnU-Net's Dice + CE, the CE weighted by inverse class frequency in the training fold."""
        return set_ce_class_weights(super()._build_loss(), self.class_weights())

    # ------------------------------------------------------------------ classification of validation cases

    @torch.no_grad()
    def predict_case_types(self, keys) -> dict[str, dict]:
        """Lesion-type probabilities of each case from the classification head (whole preprocessed image).

        The image is zero-padded (zero is the mean after nnU-Net's CT normalisation) to a multiple
        of the encoder's total stride; 3-D cases are classified slice by slice and averaged.
        """
        net = self.plain_network()
        was_training = net.training
        net.eval()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(keys))
        total_stride = np.prod(np.array(self.architecture["strides"]), axis=0)
        out = {}
        for k in dataset.identifiers:
            data = torch.from_numpy(np.asarray(dataset.load_case(k)[0][:], dtype=np.float32))
            slices = data.permute(1, 0, 2, 3) if data.ndim == 4 else data[None]  # (slices, C, Y, X)
            pad = [(-s) % int(t) for s, t in zip(slices.shape[2:], total_stride)]
            slices = torch.nn.functional.pad(slices, (0, pad[1], 0, pad[0]))
            probs = torch.softmax(net.classify(slices.to(self.device)), dim=1).mean(0).cpu().numpy()
            out[k] = {"probabilities": [float(p) for p in probs], "predicted": LESION_TYPES[int(np.argmax(probs))]}
        net.train(was_training)
        return out

    def write_classification_predictions(self) -> dict:
        """Write ``validation/classification.json`` (case -> probabilities per type, predicted type)."""
        _, val_keys = self.do_split()
        if self.is_ddp:
            val_keys = val_keys[self.local_rank::torch.distributed.get_world_size()]
        predictions = self.predict_case_types(val_keys)
        if self.is_ddp:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, predictions)
            predictions = {k: v for part in gathered for k, v in part.items()}
        if self.local_rank == 0:
            truth = self.dataset_json.get("lesion_types", {})
            correct = [predictions[k]["predicted"] == truth.get(k) for k in predictions]
            accuracy = float(np.mean(correct)) if correct else float("nan")
            # case -> {"probabilities": [p_cyst, p_hemangioma, p_metastasis], "predicted": type}
            write_json(predictions, Path(self.output_folder) / "validation" / "classification.json")
            self.record["validation_classification"] = {"accuracy": accuracy, "n": len(correct)}
            self.print_to_log_file(f"validation classification accuracy: {accuracy:.4f} (n={len(correct)})")
        return predictions

    # ------------------------------------------------------------------ bookkeeping

    def on_train_end(self):
        super().on_train_end()
        self.write_record()

    def write_record(self) -> None:
        if self.local_rank == 0:
            write_json(self.record, Path(self.output_folder) / "joint_config.json")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's loader, with its ``torch.load(weights_only=False)`` replaced by our safe loader.

        (nnU-Net's method only works when given a path, so we route its ``torch.load`` instead of
        passing it a dict we loaded ourselves.)
        """
        with safe_torch_load_in_nnunet():
            super().load_checkpoint(filename_or_checkpoint)


@contextlib.contextmanager
def safe_torch_load_in_nnunet():
    """Make ``torch.load`` calls inside the block use :func:`safe_torch_load` (weights_only=True)."""
    original = torch.load

    def _safe(f, map_location=None, **_ignored):
        return safe_torch_load(f, map_location=map_location if map_location is not None else "cpu")

    torch.load = _safe
    try:
        yield
    finally:
        torch.load = original


def read_record(fold_folder: str | Path) -> dict:
    return json.loads((Path(fold_folder) / "joint_config.json").read_text(encoding="utf-8"))
