"""Plain nnU-Net, honouring our budget variables: the baseline rows of the experiment matrix."""

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_joint.training.settings import Budget


class nnUNetTrainer_JointBudget(nnUNetTrainer):
    """``nnUNetTrainer`` unchanged (default architecture, loss, augmentation) except that
    ``nnUNet_joint_epochs`` / ``nnUNet_joint_iterations`` set its length, so plain nnU-Net and our
    trainers can be compared at the same budget. With neither variable set it *is* nnUNetTrainer."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        Budget.from_env().apply(self)
        self.print_to_log_file(f"budget {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
                               f"(validation {self.num_val_iterations_per_epoch})")
