"""Lesion-centred patches and the masked classification loss, on nnU-Net's real loader and the tiny run's data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnunet_joint.labels import FIRST_LESION_LABEL
from nnunet_joint.names import DATASET_FOLDERS
from nnunet_joint.training.losses import ClassificationTargetLoss
from nnunet_joint.training.sampling import LesionCentredBlosc2, lesion_centred, lesion_locations

pytestmark = pytest.mark.slow  # the tiny phantom run (shared with the e2e modules)


def test_lesion_locations_keep_only_lesion_classes_when_present():
    liver, lesion = np.zeros((3, 4), int), np.ones((2, 4), int)
    assert list(lesion_locations({1: liver, 2: lesion})) == [2]
    no_lesion = {1: liver, 2: lesion[:0]}
    assert lesion_locations(no_lesion) is no_lesion  # no lesion pixel: nnU-Net's own choice, unchanged
    assert lesion_locations({}) == {}


def test_forced_patches_show_lesion_and_the_loss_counts_exactly_the_patches_that_do(tiny_run):
    """Patches smaller than the crops: random ones may miss the lesion; forced ones never do."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = tiny_run.preprocessed / DATASET_FOLDERS[503]
    plans = PlansManager(json.loads((folder / "nnUNetSEResNet18Plans.json").read_text(encoding="utf-8")))
    dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    label_manager = plans.get_label_manager(dataset_json)
    data_folder = folder / "nnUNetSEResNet18Plans_2d"
    assert lesion_centred(nnUNetDatasetBlosc2) is LesionCentredBlosc2
    dataset = LesionCentredBlosc2(str(data_folder))
    shapes = [dataset.load_case(k)[0].shape[-2:] for k in dataset.identifiers]
    patch = (8, 8)
    assert all(s[0] > patch[0] and s[1] > patch[1] for s in shapes)  # every crop is larger than the patch
    batch_size, oversample = 12, 0.5
    loader = nnUNetDataLoader(dataset, batch_size, patch, patch, label_manager, oversample)
    np.random.seed(0)
    loss = ClassificationTargetLoss()
    forced_with_lesion = random_without = 0
    for _ in range(10):
        batch = loader.generate_train_batch()
        target = batch["target"]
        shows = (target >= FIRST_LESION_LABEL).flatten(1).any(1)
        forced = torch.tensor([loader.get_do_oversample(j) for j in range(batch_size)])
        assert bool(shows[forced].all())  # lesion-centred: every forced patch holds lesion
        forced_with_lesion += int(shows[forced].sum())
        random_without += int((~shows[~forced]).sum())
        loss.cls_target = torch.zeros(batch_size, dtype=torch.long)
        loss(torch.zeros(batch_size, 3), target)
        assert loss.last_counts == (int(shows.sum()), batch_size)  # only patches that show lesion count
    assert forced_with_lesion == 10 * int(round(batch_size * oversample))
    assert random_without > 0  # the random patches that missed the lesion exist, and were masked

    plain = nnUNetDataLoader(nnUNetDatasetBlosc2(str(data_folder)), batch_size, patch, patch, label_manager, 1.0)
    np.random.seed(0)
    plain_shows = [bool(((plain.generate_train_batch()["target"] >= FIRST_LESION_LABEL).flatten(1).any(1)).all())
                   for _ in range(10)]
    assert not all(plain_shows)  # nnU-Net's own sampler centres on liver too: not every forced patch shows lesion
