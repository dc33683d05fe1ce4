"""Fine-tuning schedules (EMBC 2019 "hierarchical fine-tuning") as data, and the freezing they need.

A schedule is a list of ``(start_fraction, n_frozen)`` entries: from
``start_fraction * num_epochs`` on, the first ``n_frozen`` encoder groups (shallow to deep:
stem, stage1, ..., stage4, see :data:`~nnunet_joint.network.seresnet.PARAM_GROUPS`) are frozen.
``0`` freezes nothing, ``5`` the whole encoder. Decoder and heads always train.

Schedules, with their start epochs for a 100-epoch budget:

============ ================================================ ===============================
name         groups frozen                                    start epochs (100 epochs)
============ ================================================ ===============================
NoFreeze     0                                                0
FreezeEnc    5 (whole encoder)                                0
HierFreeze   0, 1, 2, 3, 4                                    0, 20, 40, 60, 80
HierUnfreeze 5, 4, 3, 2, 1, 0                                 0, 17, 33, 50, 67, 83
============ ================================================ ===============================

Decisions (the EMBC paper's intent as we read it):

* **HierFreeze** fine-tunes everything first, then freezes stages shallow -> deep, as the
  generic low-level features settle before the task-specific deep ones. The deepest stage
  (stage4) never freezes: with the whole encoder frozen the last phase would just be FreezeEnc,
  and the deepest features are the ones the new task (lesion *types*) most needs to adapt.
* **HierUnfreeze** is gradual unfreezing (ULMFiT-style): it starts as FreezeEnc (the LiTS
  encoder is kept while the fresh heads and decoder adapt), then releases stages deep ->
  shallow, and ends with the whole network trainable, so its last phase equals NoFreeze.
  Six equal phases instead of five for that reason.

Rounding: entry ``i`` starts at epoch ``floor(f_i * num_epochs + 0.5)`` (round half up). With
tiny budgets several entries can round to the same epoch; then the **later entry wins** (the
earlier lasts zero epochs), and an entry whose start is ``>= num_epochs`` is never reached.
For 5 epochs HierUnfreeze starts its entries at 0, 1, 2, 3, 3, 4, so the "2 frozen" phase
collapses and epochs run with 5, 4, 3, 1, 0 groups frozen.

Freezing follows segmentation_models_pytorch's ``freeze_encoder``: ``requires_grad=False``
*and* the frozen groups' BatchNorm layers stay in eval mode (running statistics unchanged) even
after the trainer's ``network.train()``, which :meth:`SEResNetUNet.train` re-applies.
"""

from __future__ import annotations

import math

from torch import nn

from nnunet_joint.names import (
    FREEZE_ENCODER,
    HIERARCHICAL_FREEZING,
    HIERARCHICAL_UNFREEZING,
    NO_FREEZING,
)
from nnunet_joint.network.seresnet import PARAM_GROUPS

N_ENCODER_GROUPS = len(PARAM_GROUPS)

Schedule = list[tuple[float, int]]

#: name -> [(start fraction of the epoch budget, number of encoder groups frozen), ...]
SCHEDULES: dict[str, Schedule] = {
    NO_FREEZING: [(0.0, 0)],
    FREEZE_ENCODER: [(0.0, N_ENCODER_GROUPS)],
    HIERARCHICAL_FREEZING: [(0.0, 0), (0.2, 1), (0.4, 2), (0.6, 3), (0.8, 4)],
    HIERARCHICAL_UNFREEZING: [(i / 6, N_ENCODER_GROUPS - i) for i in range(6)],
}


def validate_schedule(schedule: Schedule) -> None:
    """Raise ``ValueError`` unless the schedule starts at 0, increases, and names 0..5 groups."""
    if not schedule:
        raise ValueError("a freezing schedule needs at least one entry")
    if schedule[0][0] != 0.0:
        raise ValueError(f"a freezing schedule must start at fraction 0.0, got {schedule[0][0]}")
    fractions = [f for f, _ in schedule]
    if any(b <= a for a, b in zip(fractions, fractions[1:])) or fractions[-1] >= 1.0:
        raise ValueError(f"start fractions must increase strictly within [0, 1): {fractions}")
    for _, n in schedule:
        if not (isinstance(n, int) and 0 <= n <= N_ENCODER_GROUPS):
            raise ValueError(f"number of frozen groups must be an int in 0..{N_ENCODER_GROUPS}, got {n!r}")


def epoch_boundaries(schedule: Schedule, num_epochs: int) -> list[int]:
    """Start epoch of each schedule entry (same length as the schedule, non-decreasing).

    ``floor(f * num_epochs + 0.5)``; equal values mean collapsed entries (the later wins).
    """
    validate_schedule(schedule)
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    return [math.floor(f * num_epochs + 0.5) for f, _ in schedule]


def frozen_groups_at(schedule: Schedule, epoch: int, num_epochs: int) -> int:
    """Number of encoder groups frozen during ``epoch`` (0-based) of a ``num_epochs`` budget."""
    n_frozen = schedule[0][1]
    for start, (_, n) in zip(epoch_boundaries(schedule, num_epochs), schedule):
        if start <= epoch:
            n_frozen = n  # later entries win ties
    return n_frozen


def set_frozen_encoder_groups(network: nn.Module, n: int) -> list[str]:
    """Freeze the first ``n`` encoder groups of an :class:`SEResNetUNet` and unfreeze the rest.

    Sets ``requires_grad`` on the encoder parameters and records ``n`` on the network, whose
    ``train()`` keeps the frozen groups' BatchNorm layers in eval mode. The current train/eval
    mode is re-applied at once. Decoder and heads are not touched. An optimizer built over all
    parameters keeps working: parameters without a gradient (``zero_grad(set_to_none=True)``,
    as nnU-Net does) are skipped by SGD, momentum and weight decay included.

    Returns:
        The frozen parameter names, as in ``network.named_parameters()``.
    """
    if not (0 <= n <= N_ENCODER_GROUPS):
        raise ValueError(f"number of frozen groups must be in 0..{N_ENCODER_GROUPS}, got {n}")
    encoder = network.encoder
    prefix = getattr(network, "encoder_key_prefix", "encoder.")
    frozen: list[str] = []
    for name, param in encoder.named_parameters():
        is_frozen = encoder.group_index(name) < n
        param.requires_grad_(not is_frozen)
        if is_frozen:
            frozen.append(prefix + name)
    network.frozen_encoder_groups = n
    network.train(network.training)
    return frozen
