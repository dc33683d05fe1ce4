"""Learning-rate recipes as data: nnU-Net's for training from scratch, a warm-up for fine-tuning.

nnU-Net trains from scratch with SGD (momentum 0.99, Nesterov), learning rate 1e-2 decayed by
the poly rule ``lr = peak * (1 - epoch / epochs) ** 0.9``. Started at full rate on ~220 slices,
pretrained weights (LiTS or ImageNet) are washed out in the first epochs, which shrinks exactly
the gaps the papers study. Fine-tuning therefore warms the rate up linearly first, as nnU-Net 2.8
does for pretrained checkpoints (its ``nnUNetTrainer_warmup`` / ``PretrainedTrainer``), then decays
it by the same poly rule over the remaining epochs:

===========  ==================  ===============================================
recipe       used by             learning rate per epoch
===========  ==================  ===============================================
scratch      scratch rows        nnU-Net's: ``peak (1 - e/E)^0.9``, peak 1e-2
fine-tune    ImageNet and LiTS   ``peak (e+1)/W`` for ``e < W``, then poly from W;
             rows                W = 10 % of the epochs, peak 1e-2
===========  ==================  ===============================================

The rule is a function of the epoch alone, so a resumed run (``--c``) continues it exactly.
``nnUNet_joint_peak_lr`` overrides the peak of either recipe (recorded in ``joint_config.json``).
The choice of the fine-tuning peak and its evidence are in docs/measured_figures.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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


#: name -> recipe; ``recipe_for`` picks one by initialisation.
RECIPES: dict[str, Recipe] = {
    "scratch": Recipe(peak_lr=1e-2, warmup_fraction=0.0),
    "fine-tune": Recipe(peak_lr=1e-2, warmup_fraction=0.1),
}


def recipe_name(init: str) -> str:
    return "scratch" if init == "scratch" else "fine-tune"


class RecipeLRScheduler(_LRScheduler):
    """Sets every parameter group's learning rate to ``recipe.lr_at(epoch)``; nnU-Net steps it with the epoch."""

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
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
