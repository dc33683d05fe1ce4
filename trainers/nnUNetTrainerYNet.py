"""Y-Net (multi-task): SE-ResNet U-Net plus a classification head on the deepest encoder features (MIDL framework 3)."""

from nnunet_joint import LESION_TYPES
from nnunet_joint.training.base import nnUNetTrainerSEResNetBase
from nnunet_joint.training.losses import YNetLoss
from nnunet_joint.training.settings import lambda_from_env


class nnUNetTrainerYNet(nnUNetTrainerSEResNetBase):
    """Loss ``λ·L_seg + (1−λ)·L_cls`` (λ from ``nnUNet_joint_lambda``, default 0.5), the
    classification term on the patches that show lesion only (:mod:`nnunet_joint.training.sampling`);
    the slice's lesion type is the argmax of the head, which pools inside the reference lesion in
    training and inside the lesion the Y-Net segments at validation and prediction (``cls_pooling``).
    Validation writes nnU-Net's segmentations and ``validation/classification.json``."""

    framework = "ynet"
    num_cls_classes = len(LESION_TYPES)
    lesion_centred_sampling = True  # the head's loss counts only patches that show lesion

    def _build_loss(self):
        lam = lambda_from_env()
        self.record["lambda"] = lam
        return YNetLoss(super()._build_loss(), lam, logits_of=lambda: self.plain_network().last_cls_logits)

    def train_step(self, batch: dict) -> dict:
        self.loss.cls_target = self.lesion_type_targets(batch["keys"])
        with self.head_sees_reference_lesion(batch):
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        self.loss.cls_target = self.lesion_type_targets(batch["keys"])
        with self.head_sees_reference_lesion(batch):
            return super().validation_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        self.write_classification_predictions()
