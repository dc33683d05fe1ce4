"""Learning curves as evidence: validation lesion Dice and lesion-type accuracy by epoch, as data.

nnU-Net validates every epoch on ``num_val_iterations_per_epoch`` batches of validation patches
and plots a pseudo-Dice per class (``progress.png``). Our tables use the lesion Dice (all types
merged) and the type accuracy, so every trainer we ship — plain nnU-Net included — measures those
on the same validation patches and writes ``fold_N/learning_curve.json``::

    {"framework": "joint", "definitions": {...},
     "epochs": [{"epoch": 0, "iterations": 20, "train_loss": 1.2, "val_loss": 1.1, "train_cls_loss": 0.9,
                 "lesion_dice": 0.31, "type_accuracy": 0.52, "n_typed": 14}, ...]}

* ``lesion_dice``: Dice of predicted vs reference lesion pixels (label >= 2), pooled over the
  epoch's validation patches; ``null`` for the classifier (no segmentation).
* ``type_accuracy``: over the validation patches whose reference holds lesion (``n_typed`` of
  them): the joint vote of the predicted lesion pixels in the patch (a patch without a predicted
  lesion pixel counts as wrong), or the classification head's argmax (Y-Net, classifier), against
  the case's type from ``dataset.json``; ``null`` where the framework does not type lesions.
* ``train_cls_loss``: the classification head's own training loss (Y-Net, classifier; ``null``
  otherwise), beside the total ``train_loss``: a Y-Net's total hides a head that memorises.

Patches, not whole slices: the curve shows learning and where it flattens; the tables' numbers are
the full-slice evaluation after training. Under DDP every rank counts its own patches and the
counts are summed over the ranks (gathered as nnU-Net gathers its pseudo-Dice) before rank 0
writes the row, so the curve is that of all validation patches, whatever the number of GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from nnunet_joint import LESION_TYPES
from nnunet_joint.io import write_json
from nnunet_joint.labels import FIRST_LESION_LABEL, lesion_vote, type_index
from nnunet_joint.names import LEARNING_CURVE_FILE
from nnunet_joint.network import unwrap_network

if TYPE_CHECKING:
    import torch

DEFINITIONS = {
    "lesion_dice": "Dice of lesion pixels (label >= 2, types merged), pooled over the epoch's validation patches",
    "type_accuracy": "fraction of validation patches holding reference lesion whose type was predicted right "
                     "(joint: vote of predicted lesion pixels, none = wrong; Y-Net/classifier: head argmax)",
    "train_cls_loss": "mean cross-entropy of the classification head over the epoch's training steps, on the "
                      "patches that show lesion (Y-Net, classifier; null for the other frameworks)",
}


def patch_counts(seg_logits: torch.Tensor | None, target: torch.Tensor, true_types: Sequence[int | None],
                 head_logits: torch.Tensor | None, joint: bool) -> dict[str, int]:
    """Lesion tp/fp/fn and typing counts of one validation batch (module docstring).

    Args:
        seg_logits: ``(B, C, H, W)`` segmentation logits at full resolution, or ``None`` (classifier).
        target: ``(B, 1, H, W)`` reference labels of the patches.
        true_types: each sample's case type index (``None`` when unknown).
        head_logits: ``(B, 3)`` classification-head logits (Y-Net, classifier), else ``None``.
        joint: the labels carry the type (joint dataset): type by the vote of predicted lesion pixels.
    """
    target = target.detach().cpu()[:, 0].long()
    counts = {"tp": 0, "fp": 0, "fn": 0, "correct": 0, "typed": 0}
    has_lesion = (target >= FIRST_LESION_LABEL).flatten(1).any(1)
    prediction = None
    if seg_logits is not None:
        prediction = seg_logits.detach().float().cpu().argmax(1)
        pred_lesion, ref_lesion = prediction >= FIRST_LESION_LABEL, target >= FIRST_LESION_LABEL
        counts["tp"] = int((pred_lesion & ref_lesion).sum())
        counts["fp"] = int((pred_lesion & ~ref_lesion).sum())
        counts["fn"] = int((~pred_lesion & ref_lesion).sum())
    for i, true_type in enumerate(true_types):
        if true_type is None or not bool(has_lesion[i]):
            continue
        if head_logits is not None:
            predicted = int(head_logits[i].detach().float().argmax())
        elif joint and prediction is not None:
            lesion = prediction[i] >= FIRST_LESION_LABEL
            types = (prediction[i][lesion] - FIRST_LESION_LABEL).numpy()
            predicted = lesion_vote(types)  # NO_CALL without predicted lesion pixels: a wrong call
        else:
            continue
        counts["typed"] += 1
        counts["correct"] += int(predicted == true_type)
    return counts


class LearningCurve:
    """Accumulates one epoch's validation counts and appends the epoch to ``learning_curve.json``."""

    def __init__(self, output_folder: str | Path, framework: str):
        self.path = Path(output_folder) / LEARNING_CURVE_FILE
        self.framework = framework
        self.epochs: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    def resume(self, current_epoch: int) -> None:
        """Keep the rows of epochs already trained (``--c``), drop anything after them."""
        self.epochs = []
        if current_epoch > 0 and self.path.is_file():
            try:
                rows = json.loads(self.path.read_text(encoding="utf-8")).get("epochs", [])
            except (ValueError, AttributeError):
                rows = []
            self.epochs = [r for r in rows if isinstance(r, dict) and r.get("epoch", current_epoch) < current_epoch]

    def start_epoch(self) -> None:
        self.counts = {"tp": 0, "fp": 0, "fn": 0, "correct": 0, "typed": 0}

    def add(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def gather(self) -> None:
        """Sum the epoch's counts over every rank of the process group (a collective: all ranks call it)."""
        import torch.distributed as dist

        parts: list[dict[str, int] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.counts)
        self.counts = {}
        for part in parts:
            self.add(part)

    def end_epoch(self, epoch: int, iterations: int, train_loss: float | None, val_loss: float | None,
                  segments: bool, types: bool, train_cls_loss: float | None = None) -> dict[str, Any]:
        c = self.counts
        denominator = 2 * c["tp"] + c["fp"] + c["fn"]
        row = {"epoch": int(epoch), "iterations": int(iterations),
               "train_loss": None if train_loss is None else float(train_loss),
               "val_loss": None if val_loss is None else float(val_loss),
               "train_cls_loss": None if train_cls_loss is None else float(train_cls_loss),
               "lesion_dice": (2 * c["tp"] / denominator if denominator else None) if segments else None,
               "type_accuracy": (c["correct"] / c["typed"] if c["typed"] else None) if types else None,
               "n_typed": int(c["typed"]) if types else 0}
        self.epochs.append(row)
        write_json({"framework": self.framework, "definitions": DEFINITIONS,
                    "lesion_types": list(LESION_TYPES), "epochs": self.epochs}, self.path)
        return row


def last_value(logger, key: str) -> float | None:
    """The latest value nnU-Net's logger holds for ``key`` (``None`` when it has none)."""
    try:
        return float(logger.get_value(key, step=-1))
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else value


class LearningCurveMixin:
    """Writes ``learning_curve.json`` for an ``nnUNetTrainer`` (mixed in before it, so it wraps nnU-Net's hooks).

    The network's output is taken from a forward hook during nnU-Net's own validation steps, so no
    extra forward pass runs.
    """

    def _learning_curve(self) -> LearningCurve:
        if getattr(self, "_curve", None) is None:
            self._curve = LearningCurve(self.output_folder, self.curve_framework())
        return self._curve

    def curve_framework(self) -> str:
        return "nnunet"

    def curve_types(self) -> bool:
        """Whether this training types lesions (a joint dataset, or a classification head)."""
        return self.dataset_json.get("lesion_types") is not None and len(self.label_manager.all_labels) > 3

    def curve_segments(self) -> bool:
        return True

    def curve_train_cls_loss(self) -> tuple[float, int] | None:
        """Sum and count of this rank's training-step losses of a classification head this epoch (trainers
        with one override this; ``None``: no head)."""
        return None

    def epoch_train_cls_loss(self) -> float | None:
        """The epoch's mean head loss over every training step of every rank (a collective under DDP:
        every rank calls it, as every rank trained)."""
        part = self.curve_train_cls_loss()
        if part is None:
            return None
        if self.is_ddp:
            import torch.distributed as dist

            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, part)
            part = (sum(p[0] for p in parts), sum(p[1] for p in parts))
        return part[0] / part[1] if part[1] else None

    def on_train_start(self):
        super().on_train_start()
        self._learning_curve().resume(self.current_epoch)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._learning_curve().start_epoch()
        self._curve_output = None
        self._curve_hook = unwrap_network(self.network).register_forward_hook(
            lambda _module, _inputs, output: setattr(self, "_curve_output", output))

    def validation_step(self, batch: dict) -> dict:
        out = super().validation_step(batch)
        self.record_curve(batch)
        return out

    def record_curve(self, batch: dict) -> None:
        """Add one validation batch to the epoch's counts (from the output the forward hook kept).
        A trainer whose ``validation_step`` does not call nnU-Net's (the classifier) calls this itself."""
        if self._curve_output is not None:
            self._learning_curve().add(self.curve_counts(batch, self._curve_output))

    def curve_counts(self, batch: dict, output) -> dict[str, int]:
        """Counts of one validation batch; subclasses with a classification head pass its logits."""
        return patch_counts(self.curve_seg_logits(output), self.curve_target(batch), self.curve_true_types(batch),
                            None, joint=self.curve_types())

    @staticmethod
    def curve_seg_logits(output) -> torch.Tensor | None:
        return output[0] if isinstance(output, (list, tuple)) else output

    @staticmethod
    def curve_target(batch: dict) -> torch.Tensor:
        target = batch["target"]
        return target[0] if isinstance(target, (list, tuple)) else target

    def curve_true_types(self, batch: dict) -> list[int | None]:
        types = self.dataset_json.get("lesion_types") or {}
        return [type_index(types[k]) if types.get(k) in LESION_TYPES else None for k in batch["keys"]]

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)
        self._curve_hook.remove()
        if self.is_ddp:
            self._learning_curve().gather()
        train_cls_loss = self.epoch_train_cls_loss()  # every rank: it empties each rank's list
        if self.local_rank != 0:
            return
        row = self._learning_curve().end_epoch(
            self.current_epoch, (self.current_epoch + 1) * self.num_iterations_per_epoch,
            finite_or_none(last_value(self.logger, "train_losses")), finite_or_none(last_value(self.logger, "val_losses")),
            self.curve_segments(), self.curve_types(), finite_or_none(train_cls_loss))
        shown = {k: round(v, 4) for k, v in row.items()
                 if k in ("lesion_dice", "type_accuracy", "train_cls_loss") and v is not None}
        self.print_to_log_file(f"learning curve: {shown}")
