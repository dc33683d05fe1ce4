"""Learning-rate recipes as data: one recipe per run, whatever a row's initialisation.

nnU-Net trains with SGD (momentum 0.99, Nesterov), learning rate 1e-2 decayed by the poly rule
``lr = peak * (1 - epoch / epochs) ** 0.9``; nnU-Net 2.8 fine-tunes pretrained checkpoints with a
linear warm-up first (its ``nnUNetTrainer_warmup``). A comparison of initialisations (LiTS vs
scratch) must differ in the initial weights only, so the recipe is not chosen by the row's
initialisation: every trainer of a run uses the one ``nnUNet_joint_lr_recipe`` names:

=============  ===============================================================================
recipe         learning rate per epoch
=============  ===============================================================================
poly           nnU-Net's: ``peak (1 - e/E)^0.9``, peak 1e-2 (the default; plain nnU-Net's too)
warmup-poly    ``peak (e+1)/W`` for ``e < W``, then poly from W; W = 10 % of the epochs, peak 1e-2
=============  ===============================================================================

**Why poly by default.** The development run (a small phantom of another seed, joint model from
LiTS, 1,200 iterations, 30 validation slices; docs/study-setting.md) scored peak 1e-2 without
warm-up Dice1 0.79 / type accuracy 0.90 and with a 10 % warm-up 0.74 / 0.83: warm-up was not
better (2 of 30 slices apart, within noise), and without it every row, plain nnU-Net included,
trains with nnU-Net's own recipe.

**The classification head learns at a tenth of it** (:data:`HEAD_LR_SCALE`, ``nnUNet_joint_head_lr_scale``):
the classifier's and the Y-Net's head (``cls_head.*``) are a parameter group of their own whose learning
rate is the recipe's times the scale, whatever the row's initialisation. At nnU-Net's 1e-2 (momentum 0.99)
a freshly initialised head over the encoder's features does not fit its training patches: on the study's
fold 0 of the paper-sized target the classifier from LiTS ended with a training loss of 1.08 (chance: ln 3 =
1.10) and called 86 of 111 validation slices metastasis (accuracy 0.46); with its head at a tenth it fitted
them (0.41) and typed 0.62, no type above 41 % of its calls (docs/model_diagnosis.md).

The rule is a function of the epoch alone, so a resumed run (``--c``) continues it exactly.
``nnUNet_joint_peak_lr`` / ``nnUNet_joint_warmup_fraction`` override the chosen recipe's numbers
(for every row of a run alike); all is recorded in ``joint_config.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch.nn import Module
from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler

POLY_EXPONENT = 0.9


@dataclass(frozen=True)
class Recipe:
    """Peak learning rate and the fraction of the epochs spent warming up to it (0: none)."""

    peak_lr: float
    warmup_fraction: float

    def warmup_epochs(self, num_epochs: int) -> int:
        return math.floor(self.warmup_fraction * num_epochs + 0.5)

    def lr_at(self, epoch: int, num_epochs: int) -> float:
        warmup = self.warmup_epochs(num_epochs)
        if epoch < warmup:
            return self.peak_lr * (epoch + 1) / warmup
        decay_epochs = max(1, num_epochs - warmup)
        progress = min(1.0, (epoch - warmup) / decay_epochs)
        return self.peak_lr * (1 - progress) ** POLY_EXPONENT

    def as_dict(self) -> dict:
        return asdict(self)


#: name -> recipe; ``nnUNet_joint_lr_recipe`` picks one for every row of a run.
RECIPES: dict[str, Recipe] = {
    "poly": Recipe(peak_lr=1e-2, warmup_fraction=0.0),
    "warmup-poly": Recipe(peak_lr=1e-2, warmup_fraction=0.1),
}
DEFAULT_RECIPE = "poly"


#: The classification head's learning rate as a fraction of the recipe's (``nnUNet_joint_head_lr_scale``).
HEAD_LR_SCALE = 0.1
#: The parameter-group key the scheduler multiplies the recipe's learning rate by (absent: 1).
LR_SCALE = "lr_scale"


def head_param_groups(network: Module, head_prefix: str, scale: float) -> list[dict]:
    """The network's parameters as two optimiser groups: those under ``head_prefix`` with ``lr_scale =
    scale``, all others with 1 (an empty head group is left out)."""
    head, rest = [], []
    for name, parameter in network.named_parameters():
        (head if name.startswith(head_prefix) else rest).append(parameter)
    return [{"params": rest, LR_SCALE: 1.0}, *([{"params": head, LR_SCALE: scale}] if head else [])]


class RecipeLRScheduler(_LRScheduler):
    """Sets every parameter group's learning rate to ``recipe.lr_at(epoch)`` times the group's ``lr_scale``
    (1 when absent); nnU-Net steps it with the epoch."""

    def __init__(self, optimizer: Optimizer, recipe: Recipe, num_epochs: int):
        self.recipe = recipe
        self.num_epochs = num_epochs
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step: int | None = None) -> None:  # noqa: D102 - nnU-Net's call convention
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.recipe.lr_at(int(current_step), self.num_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get(LR_SCALE, 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
