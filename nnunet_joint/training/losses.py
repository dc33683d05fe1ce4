"""Losses of our trainers, built around nnU-Net's own (wrapped, not copied).

- segmentation and joint: nnU-Net's Dice + CE, the CE weighted by a class-weight rule
  (:data:`CLASS_WEIGHT_RULES`, chosen with ``nnUNet_joint_class_weights``) computed on the training
  fold (the papers' weighted CE; nnU-Net's soft Dice is kept because it is what makes nnU-Net robust
  to the tiny lesion fraction — docs/trainers.md says so);
- Y-Net: ``λ·L_seg + (1−λ)·L_cls``;
- classifier: cross-entropy on the slice's lesion type.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_joint.labels import FIRST_LESION_LABEL


def label_frequencies(segmentations: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Voxel count per label over a set of label maps (negative labels, e.g. nnU-Net's -1 padding, are ignored)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for seg in segmentations:
        seg = np.asarray(seg)
        values = seg[seg >= 0].astype(np.int64).ravel()
        counts += np.bincount(values, minlength=num_classes)[:num_classes]
    return counts


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Class weights inversely proportional to class frequency, normalised to mean 1.

    A class absent from the fold gets the largest weight of the present ones (it never occurs as
    a target there, so its weight only matters for consistency of the numbers we report).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("no labelled voxels to compute class weights from")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / counts[present]
    weights[~present] = weights[present].max()
    return weights / weights.mean()


#: No lesion type weighs more than this many times the lesion cap (15 with the default cap 5); the phantom's
#: rarest type, cysts at 0.4 % of the crops' voxels, gets 8.7 under the default rule, so the bound binds only
#: for a type several times rarer than the others.
TYPE_WEIGHT_CAP_FACTOR = 3.0


def lesion_balanced_weights(counts: np.ndarray, lesion_cap: float) -> np.ndarray:
    """Background and liver weigh 1; the lesion labels are balanced among themselves and, as a whole,
    weigh ``min(lesion_cap, rest / lesion)`` times a non-lesion voxel; no type weighs more than
    :data:`TYPE_WEIGHT_CAP_FACTOR` ``x lesion_cap``.

    Why not the papers' literal rule (:func:`inverse_frequency_weights`): counted over every label,
    background included, it gives each lesion type 30-110x the liver's weight on liver crops, and a
    CE weighted so is minimised by calling a pixel lesion once its probability exceeds ~1 % of the
    liver's: recall 0.93 at precision ~0.4 (docs/class_weights.md). Here the types still get
    inverse-frequency weights *among themselves* (a rare type weighs what a common one does in
    total: ``w_t = f * N_lesion / (k * n_t)`` for the ``k`` types present), which is the papers'
    idea of balancing rare classes, while the lesion as a whole weighs ``f`` per voxel against the
    rest: ``f = 1`` leaves the lesion/non-lesion decision where an unweighted CE puts it. A label
    absent from the fold gets the largest lesion weight (it is never a target there).

    Args:
        counts: voxels per label, labels 0 (background), 1 (liver), 2... (lesion or lesion types).
        lesion_cap: the most a lesion voxel weighs against a non-lesion voxel.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("no labelled voxels to compute class weights from")
    if not lesion_cap > 0:
        raise ValueError(f"lesion_cap must be positive, got {lesion_cap}")
    weights = np.ones_like(counts)
    lesion = counts[FIRST_LESION_LABEL:]
    present = lesion > 0
    if not present.any():
        return weights
    rest_total, lesion_total = counts[:FIRST_LESION_LABEL].sum(), lesion.sum()
    factor = min(lesion_cap, rest_total / lesion_total) if rest_total > 0 else lesion_cap
    type_weights = np.zeros_like(lesion)
    type_weights[present] = factor * lesion_total / (present.sum() * lesion[present])
    # a type far rarer than the others would otherwise weigh without bound (1 % of the lesion voxels:
    # 33x the cap), the over-segmentation this rule exists to avoid, into that one type
    type_weights[present] = np.minimum(type_weights[present], TYPE_WEIGHT_CAP_FACTOR * lesion_cap)
    type_weights[~present] = type_weights[present].max()
    weights[FIRST_LESION_LABEL:] = type_weights
    return weights


def unweighted(counts: np.ndarray) -> np.ndarray:
    """Every label weighs 1: nnU-Net's own CE."""
    return np.ones(len(counts), dtype=np.float64)


#: How much a lesion voxel weighs against a non-lesion voxel in the default rule. Measured on fold 0 of
#: the small phantom (joint model from scratch, 1,200 iterations, docs/class_weights.md): 1 (the
#: unweighted lesion/rest decision) lost the types (26 of 31 slices called metastasis), 5 kept Dice1
#: 0.80 at precision 0.85 and typed 0.61; the papers' literal rule (30-110x) over-segmented (0.50).
DEFAULT_LESION_CAP = 5.0

#: Class-weight rules by name (``nnUNet_joint_class_weights``); each maps voxel counts per label of the
#: training fold to CE weights. The default, :data:`DEFAULT_CLASS_WEIGHTS`, was chosen from fold-0
#: runs of the joint model (docs/class_weights.md); the papers' literal reading stays reachable.
CLASS_WEIGHT_RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "inverse-frequency": inverse_frequency_weights,
    "lesion-balanced": partial(lesion_balanced_weights, lesion_cap=DEFAULT_LESION_CAP),
    "lesion-balanced-x1": partial(lesion_balanced_weights, lesion_cap=1.0),
    "none": unweighted,
}
DEFAULT_CLASS_WEIGHTS = "lesion-balanced"


def set_ce_class_weights(loss: nn.Module, weights: torch.Tensor) -> nn.Module:
    """Give the CE term inside nnU-Net's (deep-supervised) Dice+CE loss class weights."""
    inner = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
    if not hasattr(inner, "ce"):
        raise TypeError(f"expected nnU-Net's DC_and_CE_loss, got {type(inner).__name__}")
    inner.ce.weight = weights
    return loss


def lesion_in_patch(segmentation_target) -> torch.Tensor:
    """Per sample: does the patch's reference hold lesion pixels (label >= 2)? (deep supervision: full resolution)"""
    target = segmentation_target[0] if isinstance(segmentation_target, (list, tuple)) else segmentation_target
    return (target >= FIRST_LESION_LABEL).flatten(1).any(1)


class ClassificationTargetLoss(nn.Module):
    """Cross-entropy of class logits against the slice types of the current batch, on lesion patches only.

    nnU-Net's ``train_step`` calls ``loss(output, target)`` with the segmentation target; the
    slice's lesion type is not in it, so the trainer sets :attr:`cls_target` from the batch keys
    before each step. A slice's type is a valid target only for a patch that shows lesion
    (:mod:`nnunet_joint.training.sampling`): given the segmentation target, samples without lesion
    pixels are left out (mean over the rest); a batch without any gives 0, with a gradient path, and
    :attr:`last_counts` says how many samples counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(reduction="none")
        self.cls_target: torch.Tensor | None = None
        self.last_counts: tuple[int, int] = (0, 0)  # (samples that counted, samples in the batch)
        self.training_values: list[torch.Tensor] = []  # this epoch's training-step losses (steps with a typed sample)

    def forward(self, cls_logits: torch.Tensor, segmentation_target=None) -> torch.Tensor:
        if self.cls_target is None:
            raise RuntimeError("classification target was not set for this batch")
        per_sample = self.ce(cls_logits, self.cls_target)
        if segmentation_target is None:
            mask = torch.ones_like(per_sample, dtype=torch.bool)
        else:
            mask = lesion_in_patch(segmentation_target).to(per_sample.device)
        self.last_counts = (int(mask.sum()), int(mask.numel()))
        if not bool(mask.any()):
            return (per_sample * 0.0).sum()
        loss = per_sample[mask].mean()
        if torch.is_grad_enabled():  # a training step (nnU-Net validates under no_grad); kept on its device
            self.training_values.append(loss.detach())
        return loss

    def epoch_training_loss(self) -> tuple[float, int]:
        """Sum and number of the classification losses of the training steps since the last call, for the
        learning curve (summed over DDP ranks there): a head whose loss rises, or drops to 0 while typing
        validation at chance, is shaken or memorising, which the total loss of a Y-Net hides. One transfer
        per epoch, not per step."""
        values, self.training_values = self.training_values, []
        return (float(torch.stack(values).sum()), len(values)) if values else (0.0, 0)


class YNetLoss(nn.Module):
    """``λ·L_seg(seg_output, seg_target) + (1−λ)·L_cls(cls_logits, cls_target)``.

    The network's ``forward`` returns the segmentation (what nnU-Net's training loop, validation and
    predictor expect) and keeps the logits of its classification head in ``last_cls_logits``;
    ``logits_of`` fetches them (through DDP / torch.compile wrappers).
    """

    def __init__(self, seg_loss: nn.Module, lam: float, logits_of: Callable[[], torch.Tensor]):
        super().__init__()
        self.seg_loss = seg_loss
        self.cls_loss = ClassificationTargetLoss()
        self.lam = float(lam)
        self.logits_of = logits_of

    @property
    def cls_target(self) -> torch.Tensor | None:
        return self.cls_loss.cls_target

    @cls_target.setter
    def cls_target(self, value: torch.Tensor | None) -> None:
        self.cls_loss.cls_target = value

    def forward(self, seg_output, seg_target) -> torch.Tensor:
        seg = self.seg_loss(seg_output, seg_target)
        cls = self.cls_loss(self.logits_of(), seg_target)
        return self.lam * seg + (1.0 - self.lam) * cls
