"""The SE-ResNet plans presets and the transfer of LiTS plans to the Sheba datasets (on the tiny run)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_joint.network.from_plans import SERESNET_UNET
from nnunet_joint.planning import PLANNERS, plan_and_preprocess, plans_name_of
from nnunet_joint.names import DATASET_FOLDERS
from nnunet_joint.study.folder import RunFolder

pytestmark = pytest.mark.slow  # shares the tiny phantom run (nnU-Net planning) with the e2e modules


def read_plans(run: RunFolder, dataset: int, plans: str) -> dict:
    return json.loads((run.preprocessed / DATASET_FOLDERS[dataset] / f"{plans}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def planned(tiny_run, tmp_path_factory) -> RunFolder:
    """A copy of the tiny run's 504 with its own nnUNetPlans and plans of all three presets (planned, not
    preprocessed; the run's nnUNetPlans are 502's, carried over)."""
    root = tmp_path_factory.mktemp("planned")
    run = RunFolder(root)
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        (getattr(run, sub.split("_")[1])).mkdir(parents=True)
        shutil.copytree(tiny_run.root / sub / DATASET_FOLDERS[504], root / sub / DATASET_FOLDERS[504])
    with run.nnunet_environment():
        for planner in ("ExperimentPlanner", *PLANNERS):
            plan_and_preprocess([504], planner, preprocess=False)
    return run


@pytest.mark.parametrize("planner", sorted(PLANNERS))
def test_each_preset_writes_our_network_into_2d_plans_only(planned, planner):
    encoder = PLANNERS[planner].encoder_name
    plans = read_plans(planned, 504, plans_name_of(encoder))
    assert plans["plans_name"] == plans_name_of(encoder) and plans["experiment_planner_used"] == planner
    assert list(plans["configurations"]) == ["2d"]  # the network is 2-D
    config = plans["configurations"]["2d"]
    assert config["architecture"]["network_class_name"] == SERESNET_UNET
    assert config["architecture"]["arch_kwargs"]["encoder_name"] == encoder
    assert all(p % 32 == 0 for p in config["patch_size"])
    assert config["batch_size"] >= 2
    default = read_plans(planned, 504, "nnUNetPlans")["configurations"]["2d"]
    # spacing, normalisation and resampling are nnU-Net's own
    for key in ("spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data", "batch_dice"):
        assert config[key] == default[key], key


@pytest.mark.parametrize("planner", sorted(PLANNERS))
def test_preset_network_from_plans_has_standard_stem_full_resolution_output_and_timm_keys(planned, planner):
    """Built by nnU-Net's own get_network_from_plans (what a plain trainer and the predictor do)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    encoder = PLANNERS[planner].encoder_name
    config = read_plans(planned, 504, plans_name_of(encoder))["configurations"]["2d"]
    arch = config["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 1, 5, deep_supervision=False).eval()
    assert net.encoder.conv1.stride == (2, 2) and net.encoder.maxpool.stride == (2, 2)
    with torch.no_grad():
        out = net(torch.zeros(2, 1, *config["patch_size"]))
    assert tuple(out.shape) == (2, 5, *config["patch_size"])
    timm = pytest.importorskip("timm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = timm.create_model(encoder, pretrained=False).state_dict()
    ours = {k[len("encoder."):]: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("encoder.")}
    theirs = {k: tuple(v.shape) for k, v in reference.items() if not k.startswith("fc.")}
    assert list(ours) == list(theirs)  # timm's names, in timm's order: the ImageNet key contract
    assert ours.pop("conv1.weight") == (64, 1, 7, 7) and theirs.pop("conv1.weight") == (64, 3, 7, 7)
    assert ours == theirs


def test_patch_and_batch_size_follow_nnunets_rules(planned):
    """Patch: median shape rounded up to the stride 32, shrunk while over the memory target; batch:
    round(reference / estimate * 12), at most 5 % of the dataset's voxels per step, at least 2."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    with planned.nnunet_environment():
        planner = PLANNERS["nnUNetPlannerSEResNet18"](504)
    arch = planner.architecture()

    def estimate(patch):
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], [], 1, 5, allow_init=False)
        return float(net.compute_conv_feature_map_size(patch))

    patch, batch = planner.patch_and_batch_size([1.0, 1.0], [100, 130], 1e12, arch)
    assert patch == [128, 160]
    assert batch == round(135_000_000 / estimate([128, 160]) * 12)
    _, capped = planner.patch_and_batch_size([1.0, 1.0], [100, 130], 128 * 160 * 60.0, arch)
    assert capped == 3  # 5 % of 60 patches' worth of voxels
    _, floor = planner.patch_and_batch_size([1.0, 1.0], [100, 130], 128 * 160 * 10.0, arch)
    assert floor == 2
    planner.UNet_vram_target_GB = 8 * estimate([64, 96]) / 135_000_000 * 2 / 12 * 1.01  # fits 64 x 96, not more
    small, _ = planner.patch_and_batch_size([1.0, 1.0], [100, 130], 1e12, arch)
    assert small == [64, 96]  # the axis furthest above the median shape shrinks first, by 32


def test_transfer_carries_lits_spacing_normalisation_and_architecture(tiny_run):
    """The reproduce route: 502 planned with the preset, its plans moved to 503/504 and used to preprocess."""
    plans = plans_name_of("seresnet18")
    source = read_plans(tiny_run, 502, plans)
    own = read_plans(tiny_run, 504, "nnUNetPlans")
    for target in (503, 504):
        moved = read_plans(tiny_run, target, plans)
        assert moved["dataset_name"] == DATASET_FOLDERS[target]
        assert moved["foreground_intensity_properties_per_channel"] == source["foreground_intensity_properties_per_channel"]
        # everything but the batch, which is the target's own under nnU-Net's 5 % rule (fit_batch_to_dataset)
        assert {k: v for k, v in moved["configurations"]["2d"].items() if k != "batch_size"} == {
            k: v for k, v in source["configurations"]["2d"].items() if k != "batch_size"}
        assert 2 <= moved["configurations"]["2d"]["batch_size"] <= source["configurations"]["2d"]["batch_size"]
        data = tiny_run.preprocessed / DATASET_FOLDERS[target] / moved["configurations"]["2d"]["data_identifier"]
        assert len(list(data.glob("*.b2nd"))) == 2 * len(list((tiny_run.raw / DATASET_FOLDERS[target] / "labelsTr")
                                                              .glob("*.nii.gz")))
    # the target's own default plans normalise with the same window (not with their own statistics)
    assert own["foreground_intensity_properties_per_channel"] == source["foreground_intensity_properties_per_channel"]


def test_a_second_preset_reuses_the_fingerprint_and_a_first_one_computes_it_afresh(planned):
    """reuse_fingerprint keeps the dataset_fingerprint.json there (a marker written into it survives);
    without it nnU-Net fingerprints the raw data again (the marker is gone, the spacings are back)."""
    fingerprint_file = planned.preprocessed / DATASET_FOLDERS[504] / "dataset_fingerprint.json"
    original = json.loads(fingerprint_file.read_text(encoding="utf-8"))
    fingerprint_file.write_text(json.dumps({**original, "marker": 1}), encoding="utf-8")
    with planned.nnunet_environment():
        plan_and_preprocess([504], "ExperimentPlanner", preprocess=False, reuse_fingerprint=True)
        assert json.loads(fingerprint_file.read_text(encoding="utf-8"))["marker"] == 1
        plan_and_preprocess([504], "ExperimentPlanner", preprocess=False)
    again = json.loads(fingerprint_file.read_text(encoding="utf-8"))
    assert "marker" not in again and again["spacings"] == original["spacings"]


WINDOW = (-160.0, 240.0)  # the abdominal soft-tissue window, W 400 / L 40


def normalised(hu):
    """nnU-Net's CTNormalization with the window: clip, subtract its centre, divide by a quarter of its width."""
    low, high = WINDOW
    return (np.clip(hu, low, high) - (low + high) / 2) / ((high - low) / 4)


def test_every_plans_file_normalises_ct_with_one_window(tiny_run):
    expected = {"0": {"max": 240.0, "mean": 40.0, "median": 40.0, "min": -160.0, "percentile_00_5": -160.0,
                      "percentile_99_5": 240.0, "std": 100.0}}
    for dataset, plans in ((501, "nnUNetPlans"), (502, plans_name_of("seresnet18")), (503, "nnUNetPlans"),
                           (503, plans_name_of("seresnet18")), (504, "nnUNetPlans"), (504, plans_name_of("seresnet18"))):
        assert read_plans(tiny_run, dataset, plans)["foreground_intensity_properties_per_channel"] == expected


@pytest.mark.parametrize("dataset", [502, 503])
def test_preprocessed_lesions_keep_their_contrast_in_the_window(tiny_run, dataset):
    """Each case's preprocessed lesion median against the window applied by hand to its raw HU: LiTS
    (502) and Sheba (503) data went through the same window, and a cyst is not at the clip floor."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    plans = read_plans(tiny_run, dataset, plans_name_of("seresnet18"))
    folder = tiny_run.preprocessed / DATASET_FOLDERS[dataset] / plans["configurations"]["2d"]["data_identifier"]
    data = infer_dataset_class(str(folder))(str(folder))
    raw = tiny_run.raw / DATASET_FOLDERS[dataset]
    compared, cysts = 0, 0
    for key in data.identifiers:
        image, seg, _, _ = data.load_case(key)
        lesion = np.asarray(seg[0]) == 2
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{key}_0000.nii.gz")))
        raw_lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{key}.nii.gz"))) == 2
        quartiles = np.percentile(hu[raw_lesion], [25, 75]) if raw_lesion.sum() >= 20 else (0, np.inf)
        if lesion.sum() < 10 or quartiles[1] - quartiles[0] > 30:
            continue  # resampling shrinks a heterogeneous lesion's parts unevenly: its median moves
        got = float(np.median(np.asarray(image[0])[lesion]))
        median_hu = float(np.median(hu[raw_lesion]))
        assert got == pytest.approx(normalised(median_hu), abs=0.1), key
        compared += 1
        if median_hu < 20:  # a cyst: water density, far above the window's floor (-2)
            assert got > normalised(WINDOW[0]) + 1.5, key
            cysts += 1
    assert compared >= 3 and cysts >= 1


def test_a_10_hu_cyst_passes_nnunets_preprocessor_inside_the_window(tiny_run):
    """nnU-Net's own preprocessor with the moved plans: 10 HU is (10 - 40) / 100, not the clip floor."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = read_plans(tiny_run, 504, plans_name_of("seresnet18"))
    manager = PlansManager(plans)
    config = manager.get_configuration("2d")
    image = np.full((1, 1, 64, 64), 110.0, np.float32)  # liver
    image[..., 16:48, 16:32] = 10.0  # a cyst
    image[..., :, 56:] = -1000.0  # air
    spacing = [999.0, *config.spacing]
    data = DefaultPreprocessor(verbose=False).run_case_npy(
        image, np.ones_like(image, dtype=np.int16), {"spacing": spacing}, manager, config,
        json.loads((tiny_run.raw / DATASET_FOLDERS[504] / "dataset.json").read_text()))[0]
    assert data[0, 0, 30, 24] == pytest.approx(-0.3) and data[0, 0, 30, 8] == pytest.approx(0.7)
    assert data[0, 0, 30, 60] == pytest.approx(-2.0)


@pytest.mark.parametrize("window", [["240", "-160"], ["0", "nan"]])
def test_a_bad_ct_window_is_one_line_before_anything_is_planned(window, capsys):
    from nnunet_joint.planning import main

    with pytest.raises(SystemExit) as e:
        main(["-d", "504", "--ct-window", *window])
    low, high = (float(v) for v in window)
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: --ct-window: needs two finite HU values LOW < HIGH, got {low} {high}\n"


def test_a_carried_batch_is_capped_by_the_targets_size_as_nnunet_plans_it(tmp_path):
    """A data-rich source's batch carried to a small target: nnU-Net's 5 %-of-the-dataset cap, counted on
    the target (60 slices of 100 x 120 pixels at 0.5 mm, resampled to 1 mm: 50 x 60 = 3,000 pixels each),
    never above the source's batch and never below 2."""
    from nnunet_joint.planning import fit_batch_to_dataset

    fingerprint = tmp_path / "dataset_fingerprint.json"
    fingerprint.write_text(json.dumps({"shapes_after_crop": [[1, 100, 120]] * 60,
                                       "spacings": [[999.0, 0.5, 0.5]] * 60}))

    def fitted(batch: int, patch: list[int], cases: int = 60) -> int:
        plans = tmp_path / "plans.json"
        plans.write_text(json.dumps({"configurations": {"2d": {"spacing": [1.0, 1.0], "patch_size": patch,
                                                               "batch_size": batch}}}))
        fit_batch_to_dataset(plans, fingerprint, cases)
        return json.loads(plans.read_text())["configurations"]["2d"]["batch_size"]

    assert fitted(45, [32, 32]) == 9  # round(60 * 3000 * 0.05 / 1024) = round(8.79)
    assert fitted(5, [32, 32]) == 5  # the source's batch is already below the cap
    assert fitted(45, [64, 64]) == 2  # round(2.20) = 2
    assert fitted(45, [64, 64], cases=10) == 2  # the floor: round(0.37) = 0 -> 2
