"""Named trainer variants generated from one small table, in nnU-Net's naming style.

nnU-Net picks a trainer by class name and names the results folder after it, so the name must
carry the combination ``framework × init × fine-tuning schedule`` (nnU-Net variants cannot be
combined at run time). Rather than writing 36 classes, each framework module calls
:func:`named_variants` once; the names are the experiment vocabulary's
(:func:`nnunet_joint.names.trainer_name`): ``<Framework>`` (scratch, no freezing),
``<Framework>_ImageNet`` / ``_LiTS``, ``<Framework>_<Init>_<Schedule>``, e.g.
``nnUNetTrainerJoint_LiTS_HierFreeze``.
"""

from __future__ import annotations

from nnunet_joint.names import NO_FREEZING, variant_names

__all__ = ["named_variants", "variant_names"]


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
