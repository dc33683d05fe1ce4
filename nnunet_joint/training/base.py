"""The shared base of our trainers: SE-ResNet U-Net, budget, initialisation, freezing, safe loading.

Each hook nnU-Net offers is overridden once here, as small as it can be; the four frameworks in
``trainers/`` only choose the network's heads and the loss. What a run used (architecture,
budget, initialisation report, freezing schedule, class weights) is written to
``joint_config.json`` in the fold folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_joint import LESION_TYPES
from nnunet_joint.checkpoints import load_transfer_weights, nnunet_loads_safely
from nnunet_joint.freezing import SCHEDULES, epoch_boundaries, frozen_groups_at, set_frozen_encoder_groups
from nnunet_joint.io import write_json
from nnunet_joint.labels import FIRST_LESION_LABEL, type_index
from nnunet_joint.names import CLASSIFICATION_FILE, JOINT_CONFIG_FILE, NO_FREEZING, SCRATCH
from nnunet_joint.network.from_plans import SERESNET_UNET, build_network
from nnunet_joint.network import unwrap_network
from nnunet_joint.network.imagenet import load_imagenet_weights
from nnunet_joint.network.unet import SEResNetUNet
from nnunet_joint.training import settings
from nnunet_joint.training.curves import LearningCurveMixin, patch_counts
from nnunet_joint.training.losses import (CLASS_WEIGHT_RULES, ClassificationTargetLoss, label_frequencies,
                                          set_ce_class_weights)
from nnunet_joint.training.recipes import RECIPES, RecipeLRScheduler, head_param_groups
from nnunet_joint.training.sampling import lesion_centred



def as_slices(array: torch.Tensor) -> torch.Tensor:
    """A preprocessed case ``(C, Z, Y, X)`` or ``(C, Y, X)`` as 2-D slices ``(slices, C, Y, X)``."""
    return array.permute(1, 0, 2, 3) if array.ndim == 4 else array[None]


class nnUNetTrainerSEResNetBase(LearningCurveMixin, nnUNetTrainer):
    """Base of our trainers; subclasses set the class attributes below and, where needed, the loss."""

    #: seg | cls | ynet | joint
    framework: ClassVar[str] = "seg"
    #: scratch | ImageNet | LiTS (named variants set it; see nnunet_joint.training.variants)
    init: ClassVar[str] = SCRATCH
    #: key of nnunet_joint.freezing.SCHEDULES
    schedule: ClassVar[str] = NO_FREEZING
    #: number of lesion types predicted by a classification head (0: no head)
    num_cls_classes: ClassVar[int] = 0
    #: whether the network has a segmentation decoder
    has_segmentation: ClassVar[bool] = True
    #: centre forced-foreground patches on lesion (trainers of a slice-level type: nnunet_joint.training.sampling)
    lesion_centred_sampling: ClassVar[bool] = False
    #: how a classification head pools (nnunet_joint.network.heads): inside the lesion, the reference one in
    #: training (:meth:`head_sees_reference_lesion`); at validation and prediction the Y-Net pools inside the
    #: lesion it segments, the classifier inside the reference lesion (it has no decoder: it answers "which
    #: type is this lesion?", as the handcrafted reference does). Why: docs/model_diagnosis.md
    cls_pooling: ClassVar[str] = "lesion"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget = settings.apply_to_trainer(self)
        self.architecture = {"plans": self.plans_manager.plans_name,
                             **self.configuration_manager.configuration.get("architecture", {}),
                             "patch_size": list(self.configuration_manager.patch_size),
                             "batch_size": self.configuration_manager.batch_size}
        self.recipe_name = settings.recipe_choice()  # the run's, not the initialisation's: rows differ in weights only
        self.recipe = settings.recipe_with_overrides(RECIPES[self.recipe_name])
        self.initial_lr = self.recipe.peak_lr
        self.frozen_groups: int | None = None
        self.record: dict = {"trainer": self.__class__.__name__, "framework": self.framework, "init": self.init,
                             "schedule": self.schedule, "schedule_table": SCHEDULES[self.schedule],
                             "architecture": self.architecture, **settings.settings_record(self.budget),
                             "num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
                             "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
                             "learning_rate": {"recipe": self.recipe_name, **self.recipe.as_dict(),
                                               "warmup_epochs": self.recipe.warmup_epochs(self.num_epochs)},
                             "lesion_centred_sampling": self.lesion_centred_sampling,
                             **({"cls_pooling": self.cls_pooling} if self.num_cls_classes else {})}

    def initialize(self):
        super().initialize()
        if self.lesion_centred_sampling:
            self.dataset_class = lesion_centred(self.dataset_class)

    def configure_optimizers(self):
        """nnU-Net's SGD (fused on CPU: :func:`~nnunet_joint.training.settings.fused_sgd`) with the run's
        learning-rate recipe (:mod:`nnunet_joint.training.recipes`); a classification head is a parameter
        group of its own at the recipe's rate times ``nnUNet_joint_head_lr_scale``."""
        optimizer, _ = super().configure_optimizers()
        if self.num_cls_classes:
            scale = settings.head_lr_scale()
            groups = head_param_groups(self.plain_network(), SEResNetUNet.cls_head_prefix, scale)
            optimizer = type(optimizer)(groups, **optimizer.defaults)  # nnU-Net's SGD settings, two groups
            self.record["learning_rate"]["head_lr_scale"] = scale
        optimizer = settings.fused_sgd(optimizer, self.device)
        self.record["fused_sgd"] = bool(optimizer.param_groups[0].get("fused"))
        return optimizer, RecipeLRScheduler(optimizer, self.recipe, self.num_epochs)

    # ------------------------------------------------------------------ learning curves

    def curve_framework(self) -> str:
        return self.framework

    def curve_types(self) -> bool:
        return self.num_cls_classes > 0 or super().curve_types()

    def curve_segments(self) -> bool:
        return self.has_segmentation

    def curve_train_cls_loss(self) -> tuple[float, int] | None:
        cls_loss = getattr(self.loss, "cls_loss", self.loss)  # the Y-Net's head term, or the classifier's loss
        return cls_loss.epoch_training_loss() if isinstance(cls_loss, ClassificationTargetLoss) else None

    def curve_counts(self, batch: dict, output) -> dict[str, int]:
        head = self.plain_network().last_cls_logits if self.num_cls_classes > 0 else None
        seg = self.curve_seg_logits(output) if self.has_segmentation else None
        return patch_counts(seg, self.curve_target(batch), self.curve_true_types(batch), head,
                            joint=self.framework == "joint")

    # ------------------------------------------------------------------ network

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> SEResNetUNet:
        """The SE-ResNet U-Net the plans describe (a preset's), plus this framework's head.

        nnU-Net's predictor calls this too, so ``nnUNetv2_predict -p <SE-ResNet plans>`` rebuilds
        the same network from the results folder's ``plans.json``.
        """
        architecture = configuration_manager.configuration.get("architecture") or {}
        name = architecture.get("network_class_name")
        if name != SERESNET_UNET:
            raise RuntimeError(
                f"{cls.__name__} trains the SE-ResNet U-Net, but plans {plans_manager.plans_name!r} configure "
                f"{name!r}: plan with 'nnunet_joint_plan_and_preprocess -pl nnUNetPlannerSEResNet50' (or 18, 34) "
                f"and train with '-p nnUNetSEResNet50Plans'")
        return build_network(architecture, num_input_channels, num_output_channels, enable_deep_supervision,
                             where=f"plans {plans_manager.plans_name}", num_cls_classes=cls.num_cls_classes,
                             segmentation=cls.has_segmentation, cls_pooling=cls.cls_pooling)

    def plain_network(self) -> SEResNetUNet:
        """The network without DDP / torch.compile wrappers."""
        return unwrap_network(self.network)

    @contextlib.contextmanager
    def head_sees_reference_lesion(self, batch: dict) -> Iterator[None]:
        """The head pools inside the batch's reference lesion (labels >= 2 of the full-resolution
        target) for the steps in this block (:meth:`SEResNetUNet.pooling_inside`)."""
        target = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
        with self.plain_network().pooling_inside((target >= FIRST_LESION_LABEL).to(self.device)):
            yield

    # ------------------------------------------------------------------ data of the fold

    def training_label_counts(self) -> np.ndarray:
        """Voxel count per label over the training cases of this fold (preprocessed segmentations)."""
        tr_keys, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, tr_keys)
        num_classes = len(self.label_manager.all_labels)
        return label_frequencies((dataset.load_case(k)[1][:] for k in dataset.identifiers), num_classes)

    def class_weights(self) -> torch.Tensor:
        """The CE's weights: the run's rule (:func:`settings.class_weight_choice`) on the training fold's counts."""
        rule = settings.class_weight_choice()
        counts = self.training_label_counts()
        weights = CLASS_WEIGHT_RULES[rule](counts)
        self.record["class_weights"] = {"rule": rule, "label_counts": counts.tolist(), "weights": weights.tolist()}
        self.print_to_log_file(f"class weights ({rule}, from the training fold's label counts): {np.round(weights, 4)}")
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def lesion_type_targets(self, keys) -> torch.Tensor:
        """Class index of each case's lesion type, from ``dataset.json['lesion_types']``."""
        types = self.dataset_json.get("lesion_types")
        if types is None:
            raise RuntimeError("dataset.json has no 'lesion_types': convert the dataset with "
                               "nnunet_joint_convert_sheba (it stores each case's lesion type)")
        try:
            idx = [type_index(types[k]) for k in keys]
        except (KeyError, ValueError) as e:
            raise RuntimeError(f"dataset.json 'lesion_types' has no valid type for case {e}") from None
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ initialisation and freezing

    def on_train_start(self):
        self.refuse_earlier_optimiser_state()
        super().on_train_start()
        if self.current_epoch == 0:  # a fresh run; a continued one restores its checkpoint instead
            self.initialise_weights()
        self.record["freezing_epochs"] = epoch_boundaries(SCHEDULES[self.schedule], self.num_epochs)
        encoder = self.architecture.get("arch_kwargs", {}).get("encoder_name")
        self.print_to_log_file(f"nnunet_joint: {self.__class__.__name__}, plans {self.architecture['plans']} "
                               f"(encoder {encoder}, patch {self.architecture['patch_size']}), "
                               f"budget {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
                               f"(validation {self.num_val_iterations_per_epoch}), schedule {self.schedule} "
                               f"{SCHEDULES[self.schedule]}, learning rate {self.recipe_name} {self.recipe.as_dict()}")
        self.write_record()

    def initialise_weights(self) -> None:
        net = self.plain_network()
        if self.init == "ImageNet":
            path = settings.imagenet_weights_path()
            report = load_imagenet_weights(net.encoder, path)
        elif self.init == "LiTS":
            path = settings.lits_checkpoint_path(self.plans_manager.plans_name)
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
                # DDP registers the parameters that require gradients when it is built; the new wrapper
                # keeps the old one's devices (nnU-Net's GPU, or none for a CPU module)
                self.network = DDP(self.network.module, device_ids=self.network.device_ids)
            self.print_to_log_file(f"freezing: {n} encoder group(s) frozen from epoch {self.current_epoch} "
                                   f"({len(frozen)} parameter tensors)")
            self.frozen_groups = n

    def _build_loss(self):
        """nnU-Net's Dice + CE, the CE weighted by the run's class-weight rule on the training fold."""
        return set_ce_class_weights(super()._build_loss(), self.class_weights())

    # ------------------------------------------------------------------ classification of validation cases

    @torch.no_grad()
    def predict_case_types(self, keys) -> dict[str, dict]:
        """Lesion-type probabilities of each case from the classification head (whole preprocessed image,
        :meth:`SEResNetUNet.slice_type_probabilities`); 3-D cases are classified slice by slice and averaged.
        """
        net = self.plain_network()
        was_training = net.training
        net.eval()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(keys))
        out = {}
        # a head-only network pooling inside the lesion is given the reference lesion; a Y-Net finds its own
        reference_lesion = net.pools_inside_lesion and net.decoder is None
        for k in dataset.identifiers:
            data, seg = dataset.load_case(k)[:2]
            slices = as_slices(torch.from_numpy(np.asarray(data[:], dtype=np.float32)))
            masks = as_slices(torch.from_numpy(np.asarray(seg[:]) >= FIRST_LESION_LABEL)) if reference_lesion else None
            probs = net.slice_type_probabilities(slices.to(self.device), lesion_masks=None if masks is None
                                                 else masks.to(self.device)).mean(0).cpu().numpy()
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
            write_json(predictions, Path(self.output_folder) / "validation" / CLASSIFICATION_FILE)
            self.record["validation_classification"] = {"accuracy": accuracy, "n": len(correct)}
            self.print_to_log_file(f"validation classification accuracy: {accuracy:.4f} (n={len(correct)})")
        return predictions

    # ------------------------------------------------------------------ bookkeeping

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation; without test-time mirroring when ``nnUNet_joint_val_mirroring=0``
        (the final checkpoint, saved before, keeps the mirroring axes for prediction), and none now when
        ``nnUNet_joint_final_validation=0`` (:func:`~nnunet_joint.training.settings.prepare_final_validation`)."""
        if settings.prepare_final_validation(self):
            super().perform_actual_validation(save_probabilities)

    def on_train_end(self):
        super().on_train_end()
        self.write_record()

    def write_record(self) -> None:
        if self.local_rank == 0:
            write_json(self.record, Path(self.output_folder) / JOINT_CONFIG_FILE)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's loader, its ``torch.load(weights_only=False)`` routed to our safe loader.

        A head row's checkpoint saved before the head had its own learning rate holds one optimiser group
        where this build has two. Everything but the optimiser state loads (nnU-Net loads that last), so
        ``--val`` validates it; resuming its training is refused at the start of training
        (:meth:`refuse_earlier_optimiser_state`), rather than continued under another recipe."""
        with nnunet_loads_safely():
            try:
                super().load_checkpoint(filename_or_checkpoint)
            except ValueError as e:
                if "number of parameter groups" not in str(e):
                    raise
                self.earlier_optimiser_state = str(filename_or_checkpoint)
                self.print_to_log_file(f"{filename_or_checkpoint}: optimiser state of another number of parameter "
                                       "groups not loaded (the weights are)")

    def refuse_earlier_optimiser_state(self) -> None:
        """Stop a resumed training whose checkpoint's optimiser state did not load (:meth:`load_checkpoint`)."""
        if getattr(self, "earlier_optimiser_state", None):
            raise RuntimeError(
                f"{self.earlier_optimiser_state}: its optimiser state has another number of parameter groups than "
                f"this build's (a build before the classification head got its own learning rate, "
                f"{settings.ENV_HEAD_LR_SCALE}, saved it); its training cannot be resumed under the recipe it started with: "
                "move the fold folder aside and train the fold again") from None
