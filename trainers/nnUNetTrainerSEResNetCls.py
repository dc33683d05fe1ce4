"""Classification baseline: SE-ResNet classifier of the slice's lesion type (MIDL framework 1)."""

import numpy as np
import torch

from nnunet_joint import LESION_TYPES
from nnunet_joint.training.base import nnUNetTrainerSEResNetBase
from nnunet_joint.training.losses import ClassificationTargetLoss, lesion_in_patch


class nnUNetTrainerSEResNetCls(nnUNetTrainerSEResNetBase):
    """SE-ResNet encoder + pooling inside the reference lesion + linear head, trained with CE on the case's
    lesion type (``dataset.json['lesion_types']``) on nnU-Net's augmented patches that show lesion
    (lesion-centred sampling, masked loss: :mod:`nnunet_joint.training.sampling`). It answers "which type
    is this lesion?" given the lesion's outline, in training and validation alike (``cls_pooling``).

    nnU-Net's "pseudo Dice" in the training log and progress.png is the validation accuracy over
    patches that show lesion (tp = correct, fp = fn = wrong gives 2tp/(2tp+fp+fn) = accuracy).
    Final validation writes ``validation/classification.json`` instead of segmentations.
    """

    framework = "cls"
    num_cls_classes = len(LESION_TYPES)
    has_segmentation = False
    lesion_centred_sampling = True

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False  # no decoder

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # no decoder

    def _build_loss(self):
        return ClassificationTargetLoss()

    def train_step(self, batch: dict) -> dict:
        self.loss.cls_target = self.lesion_type_targets(batch["keys"])
        with self.head_sees_reference_lesion(batch):
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        target = self.lesion_type_targets(batch["keys"])
        self.loss.cls_target = target
        with self.head_sees_reference_lesion(batch):
            logits = self.network(batch["data"].to(self.device, non_blocking=True))
        loss = self.loss(logits, batch["target"])
        shows_lesion = lesion_in_patch(batch["target"]).to(target.device)
        correct = int(((logits.argmax(1) == target) & shows_lesion).sum())
        wrong = int(shows_lesion.sum()) - correct
        self.record_curve(batch)  # the learning curve's type accuracy (this step replaces nnU-Net's)
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": np.array([correct]),
                "fp_hard": np.array([wrong]), "fn_hard": np.array([wrong])}

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.write_classification_predictions()
