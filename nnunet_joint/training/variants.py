"""Named trainer variants generated from one small table, in nnU-Net's naming style.

nnU-Net picks a trainer by class name and names the results folder after it, so the name must
carry the combination ``framework × init × fine-tuning schedule`` (nnU-Net variants cannot be
combined at run time). Rather than writing 36 classes, each framework module calls
:func:`named_variants` once:

- ``<Framework>``                      scratch, no freezing
- ``<Framework>_ImageNet`` / ``_LiTS``  initialised from ImageNet / the LiTS lesion model, no freezing
- ``<Framework>_<Init>_<Schedule>``     plus a freezing schedule (``FreezeEnc``, ``HierFreeze``, ``HierUnfreeze``)

e.g. ``nnUNetTrainerJoint_LiTS_HierFreeze``. Single underscores: nnU-Net splits results folder
names on ``__``.
"""

from __future__ import annotations

from nnunet_joint.freezing import SCHEDULES

PRETRAINED_INITS = ("ImageNet", "LiTS")
NO_FREEZING = "NoFreeze"


def variant_names(base_name: str) -> list[str]:
    names = []
    for init in PRETRAINED_INITS:
        names.append(f"{base_name}_{init}")
        names += [f"{base_name}_{init}_{s}" for s in SCHEDULES if s != NO_FREEZING]
    return names


def named_variants(base: type) -> dict[str, type]:
    """Subclasses of ``base`` for every pretrained init × schedule, keyed by class name."""
    variants = {}
    for name in variant_names(base.__name__):
        init, _, schedule = name[len(base.__name__) + 1:].partition("_")
        schedule = schedule or NO_FREEZING
        doc = f"{base.__name__} initialised from {init} weights, fine-tuning schedule {schedule}."
        variants[name] = type(name, (base,), {"init": init, "schedule": schedule,
                                              "__module__": base.__module__, "__doc__": doc})
    return variants
