"""Plain nnU-Net, honouring our budget variables: stage 1 and the baseline rows of the experiment matrix."""

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_joint.checkpoints import nnunet_loads_safely
from nnunet_joint.network.from_plans import check_architecture
from nnunet_joint.training.curves import LearningCurveMixin
from nnunet_joint.training.settings import Budget, apply_threads


class nnUNetTrainer_JointBudget(LearningCurveMixin, nnUNetTrainer):
    """``nnUNetTrainer`` unchanged (default architecture, loss, augmentation) except that
    ``nnUNet_joint_epochs`` / ``nnUNet_joint_iterations`` set its length, so plain nnU-Net and our
    trainers can be compared at the same budget. With neither variable set it *is* nnUNetTrainer.

    Like our own trainers it loads checkpoints safely (``--c``/``--val`` never unpickle code), builds
    only allow-listed networks from the plans (:mod:`nnunet_joint.network.from_plans`) and writes
    ``learning_curve.json`` (:mod:`nnunet_joint.training.curves`)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        Budget.from_env().apply(self)
        apply_threads()
        self.print_to_log_file(f"budget {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
                               f"(validation {self.num_val_iterations_per_epoch})")

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        check_architecture(configuration_manager.configuration.get("architecture"), f"plans {plans_manager.plans_name}")
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        with nnunet_loads_safely():
            super().load_checkpoint(filename_or_checkpoint)
