"""Joint model (pixel-wise classification): background / liver / cyst / hemangioma / metastasis (MIDL framework 4)."""

from nnunet_joint.training.base import nnUNetTrainerSEResNetBase


class nnUNetTrainerJoint(nnUNetTrainerSEResNetBase):
    """SE-ResNet U-Net with one output per joint class; CE weights inversely proportional to the
    class frequencies of the training fold (plus nnU-Net's Dice term).

    The slice's lesion type is the majority vote of its predicted lesion pixels (evaluation/);
    validation always exports probabilities so the no-lesion fallback (largest summed type
    probability inside the liver) can be computed.
    """

    framework = "joint"

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities=True)
