"""Patches centred on lesions for the trainers that learn a slice-level type (classifier, Y-Net).

A slice's lesion type is a valid target only for a patch that shows lesion. nnU-Net's sampler
centres a third of each batch (``oversample_foreground_percent``) on a random foreground class —
liver or lesion — and places the rest at random, so on crops larger than the patch many patches
show only liver. For the classifier and the Y-Net the forced-foreground patches are therefore
centred on lesion pixels whenever the case has any (nnU-Net's own sampler, fed only the lesion
classes' locations); the classification loss then counts only the samples whose patch holds
lesion (:class:`nnunet_joint.training.losses.ClassificationTargetLoss`), so the random patches
train the segmentation but never teach "this liver's texture is that type".

The dataset classes here wrap nnU-Net's and change nothing but the ``class_locations`` a case
reports; they are defined at module level so nnU-Net's data-augmentation workers can unpickle them.
"""

from __future__ import annotations

from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

from nnunet_joint.labels import FIRST_LESION_LABEL


def lesion_locations(class_locations: dict | None) -> dict | None:
    """Only the lesion classes' locations (labels >= 2) when the case has lesion pixels, else all."""
    if not class_locations:
        return class_locations
    lesion = {k: v for k, v in class_locations.items()
              if not isinstance(k, tuple) and int(k) >= FIRST_LESION_LABEL and len(v) > 0}
    return lesion or class_locations


class _LesionCentred:
    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        properties = {**properties, "class_locations": lesion_locations(properties.get("class_locations"))}
        return data, seg, seg_prev, properties


class LesionCentredBlosc2(_LesionCentred, nnUNetDatasetBlosc2):
    """nnU-Net's blosc2 dataset whose forced-foreground patches centre on lesion."""


class LesionCentredNumpy(_LesionCentred, nnUNetDatasetNumpy):
    """nnU-Net's numpy dataset whose forced-foreground patches centre on lesion."""


LESION_CENTRED = {nnUNetDatasetBlosc2: LesionCentredBlosc2, nnUNetDatasetNumpy: LesionCentredNumpy}


def lesion_centred(dataset_class: type) -> type:
    """The lesion-centred counterpart of one of nnU-Net's dataset classes."""
    try:
        return LESION_CENTRED[dataset_class]
    except KeyError:
        raise TypeError(f"no lesion-centred counterpart for nnU-Net dataset class {dataset_class.__name__}") from None
