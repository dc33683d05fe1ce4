"""The named trainer variants, written out as classes in ``trainers/nnUNetTrainerVariants.py``.

nnU-Net picks a trainer by class name and names the results folder after it, so the name must
carry the combination ``framework × init × fine-tuning schedule`` (nnU-Net variants cannot be
combined at run time). The names are the vocabulary's (:func:`nnunet_joint.names.trainer_name`):
``<Framework>`` (scratch, no freezing), ``<Framework>_ImageNet`` / ``_LiTS``,
``<Framework>_<Init>_<Schedule>``, e.g. ``nnUNetTrainerJoint_LiTS_HierFreeze``. The classes are
generated from that table and checked in, so grep and editors find every trainer nnU-Net can load;
``tests/test_trainer_variants.py`` fails when the file and the table differ. Regenerate with::

    python -m nnunet_joint.training.variants > trainers/nnUNetTrainerVariants.py
"""

from __future__ import annotations

from nnunet_joint.names import (
    FINE_TUNING_SCHEDULES,
    FREEZE_ENCODER,
    FRAMEWORKS,
    HIERARCHICAL_FREEZING,
    HIERARCHICAL_UNFREEZING,
    NO_FREEZING,
    PAPER_FRAMEWORKS,
    parse_trainer_name,
    variant_names,
)

__all__ = ["render_variants_module", "variant_names"]

#: The schedule names as the generated module spells them (imported from the naming module).
_SCHEDULE_CONSTANTS = {NO_FREEZING: "NO_FREEZING", FREEZE_ENCODER: "FREEZE_ENCODER",
                       HIERARCHICAL_FREEZING: "HIERARCHICAL_FREEZING", HIERARCHICAL_UNFREEZING: "HIERARCHICAL_UNFREEZING"}


def render_variants_module() -> str:
    """The source of ``trainers/nnUNetTrainerVariants.py``: every pretrained variant of the papers'
    four frameworks as an explicit subclass of its framework's trainer."""
    bases = [FRAMEWORKS[f].trainer_base for f in PAPER_FRAMEWORKS]
    schedules = [NO_FREEZING, *FINE_TUNING_SCHEDULES]
    lines = [
        '"""Every pretrained variant of our trainers: ``<Framework>_<Init>`` and ``<Framework>_<Init>_<Schedule>``.',
        "",
        "Generated from the naming table by :mod:`nnunet_joint.training.variants`; do not edit. Regenerate with::",
        "",
        "    python -m nnunet_joint.training.variants > trainers/nnUNetTrainerVariants.py",
        '"""',
        "",
        "from nnunet_joint.names import " + ", ".join(_SCHEDULE_CONSTANTS[s] for s in sorted(
            schedules, key=lambda s: _SCHEDULE_CONSTANTS[s])),
    ]
    lines += [f"from nnunet_joint.trainers.{base} import {base}" for base in sorted(bases)]
    for base in bases:
        for name in variant_names(base):
            _, init, schedule = parse_trainer_name(name)
            lines += ["", "", f"class {name}({base}):",
                      f'    """{base} initialised from {init} weights, fine-tuning schedule {schedule}."""', "",
                      f'    init = "{init}"', f"    schedule = {_SCHEDULE_CONSTANTS[schedule]}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_variants_module(), end="")
