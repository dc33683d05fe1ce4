"""Plain nnU-Net, honouring our budget variables: stage 1, the baseline rows, and the baseline from LiTS."""

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_joint.checkpoints import load_transfer_weights, nnunet_loads_safely
from nnunet_joint.network.from_plans import check_architecture
from nnunet_joint.network import unwrap_network
from nnunet_joint.training.curves import LearningCurveMixin
from nnunet_joint.training.recipes import RECIPES, RecipeLRScheduler
from nnunet_joint.training.settings import (apply_to_trainer, fused_sgd, lits_checkpoint_path, prepare_final_validation,
                                            recipe_choice, recipe_with_overrides)


class nnUNetTrainer_JointBudget(LearningCurveMixin, nnUNetTrainer):
    """``nnUNetTrainer`` unchanged (default architecture, loss, augmentation) except that
    ``nnUNet_joint_epochs`` / ``nnUNet_joint_iterations`` set its length and ``nnUNet_joint_lr_recipe``
    its learning-rate recipe, so plain nnU-Net and our trainers can be compared at the same budget and
    recipe. With none of these variables set it *is* nnUNetTrainer (the default recipe is its poly rule).

    Like our own trainers it loads checkpoints safely (``--c``/``--val`` never unpickle code), builds
    only allow-listed networks from the plans (:mod:`nnunet_joint.network.from_plans`) and writes
    ``learning_curve.json`` (:mod:`nnunet_joint.training.curves`)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_to_trainer(self)
        self.recipe_name = recipe_choice()
        self.recipe = recipe_with_overrides(RECIPES[self.recipe_name])
        self.initial_lr = self.recipe.peak_lr
        self.print_to_log_file(f"budget {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
                               f"(validation {self.num_val_iterations_per_epoch}), learning rate {self.recipe_name} "
                               f"{self.recipe.as_dict()}")

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        check_architecture(configuration_manager.configuration.get("architecture"), f"plans {plans_manager.plans_name}")
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)

    def configure_optimizers(self):
        """nnU-Net's SGD, fused on CPU, with the run's learning-rate recipe (both as in our trainers)."""
        optimizer, _ = super().configure_optimizers()
        optimizer = fused_sgd(optimizer, self.device)
        return optimizer, RecipeLRScheduler(optimizer, self.recipe, self.num_epochs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation; without test-time mirroring when ``nnUNet_joint_val_mirroring=0``,
        and none now when ``nnUNet_joint_final_validation=0`` (a later ``--val`` runs it)."""
        if prepare_final_validation(self):
            super().perform_actual_validation(save_probabilities)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        with nnunet_loads_safely():
            super().load_checkpoint(filename_or_checkpoint)


#: nnU-Net's segmentation outputs: the part of its U-Net a transfer re-initialises (as nnU-Net's own
#: ``load_pretrained_weights`` skips ``.seg_layers.``), since source and target label sets differ.
SEG_OUTPUT_PREFIXES = ("decoder.seg_layers.",)


class nnUNetTrainer_JointBudget_LiTS(nnUNetTrainer_JointBudget):
    """Plain nnU-Net initialised from plain nnU-Net trained on the LiTS lesion dataset (Dataset502).

    The pretraining is ``nnUNetTrainer_JointBudget`` on Dataset502 with the same plans (502's
    ``nnUNetPlans`` carried to the Sheba datasets), so the architecture is identical and every
    weight but the segmentation outputs loads — through the project's safe loader, not nnU-Net's
    ``-pretrained_weights`` (``weights_only=False``). The checkpoint: ``nnUNet_joint_lits_checkpoint``,
    else ``$nnUNet_results/Dataset502_LiTSLesion/nnUNetTrainer_JointBudget__<plans>__2d/fold_all``
    (or ``fold_0``). Everything else, the recipe included, is the scratch row's.
    """

    init = "LiTS"

    def on_train_start(self):
        super().on_train_start()
        if self.current_epoch == 0:  # a fresh run; a continued one restores its checkpoint instead
            self.initialise_weights()

    def initialise_weights(self) -> None:
        """Load the LiTS model's weights into the built network, the segmentation outputs excepted."""
        path = lits_checkpoint_path(self.plans_manager.plans_name, trainer=nnUNetTrainer_JointBudget.__name__)
        report = load_transfer_weights(unwrap_network(self.network), path, SEG_OUTPUT_PREFIXES)
        self.print_to_log_file(f"initialised from LiTS weights {path}: {report.summary()}")
