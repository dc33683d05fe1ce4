"""Our trainers' rank-dependent code in a real 2-process ``torch.distributed`` group (gloo, CPU).

Two processes (tests/distributed_worker.py) join one process group on localhost and run the Y-Net
(segmentation + classification head, lesion-centred sampling, a freezing schedule) on the tiny
phantom: class weights, nnU-Net's split of the batch over the ranks, a training step on each side
of a freezing step (the DDP wrapper rebuilt), a validation epoch (the learning curve gathered) and
the classification of the validation cases (gathered). A third process runs the same trainer
without a process group on the validation batches the ranks drew, from rank 0's weights: what the
ranks gathered must equal what one process computes. No part of nnU-Net or torch is replaced; the
worker's docstring says which CUDA-only lines of nnU-Net's DDP set-up a CPU group skips.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_joint import TRAINERS_DIR
from nnunet_joint.checkpoints import safe_torch_load
from nnunet_joint.names import DATASET_FOLDERS
from nnunet_joint.labels import FIRST_LESION_LABEL

pytestmark = pytest.mark.slow  # the tiny phantom run (shared with the e2e modules)

WORKER = Path(__file__).with_name("distributed_worker.py")
DATASET = DATASET_FOLDERS[503]
PLANS = "nnUNetSEResNet18Plans"
#: The tiny plans' batch of 2 would leave one sample per rank, and plain BatchNorm cannot train on the
#: 1x1 deepest feature map of a single 32x32 patch (nnU-Net's SyncBatchNorm, CUDA only, pools the ranks).
GLOBAL_BATCH = 4
OVERSAMPLE = 0.33  # nnU-Net's oversample_foreground_percent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(commands: list[list[str]], env: dict[str, str]) -> None:
    """Start the processes together, wait for all; a failure names the process and shows its output."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in commands]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for cmd, proc, output in zip(commands, procs, outputs):
        assert proc.returncode == 0, f"{' '.join(cmd[-4:])} exited {proc.returncode}:\n{output[-4000:]}"


def lesion_balanced_by_hand(folder: Path, keys: list[str], num_classes: int) -> np.ndarray:
    """The default class weights (lesion-balanced) of the segmentation labels from the preprocessed
    segmentations: background and liver 1, the lesion min(5, (background + liver) / lesion)."""
    import blosc2

    counts = np.zeros(num_classes)
    for key in keys:
        seg = blosc2.open(str(folder / f"{key}_seg.b2nd"), mode="r")[:]
        for c in range(num_classes):
            counts[c] += np.count_nonzero(seg == c)
    assert num_classes == 3  # background, liver, lesion
    return np.array([1.0, 1.0, min(5.0, (counts[0] + counts[1]) / counts[2])])


def lesion_patches(npz: Path, types: dict[str, str]) -> int:
    """Validation patches showing lesion whose case has a type: what the curve's ``n_typed`` counts."""
    arrays = np.load(npz)
    n = 0
    for name in arrays.files:
        if name.endswith("_target_0"):
            keys = arrays[name.replace("_target_0", "_keys")]
            shows = (arrays[name] >= FIRST_LESION_LABEL).reshape(len(keys), -1).any(1)
            n += sum(bool(s) and k in types for s, k in zip(shows, keys))
    return n


@pytest.fixture(scope="module")
def ranks(tiny_run, tmp_path_factory):
    """Results of rank 0, rank 1 and the single-process reference, and the folders they wrote."""
    root = tmp_path_factory.mktemp("distributed")
    preprocessed = root / "nnUNet_preprocessed"
    shutil.copytree(tiny_run.preprocessed / DATASET, preprocessed / DATASET)  # the shared run stays read-only
    plans_file = preprocessed / DATASET / f"{PLANS}.json"
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    plans["configurations"]["2d"]["batch_size"] = GLOBAL_BATCH
    plans_file.write_text(json.dumps(plans), encoding="utf-8")
    env = {**os.environ, "nnUNet_raw": str(tiny_run.raw), "nnUNet_preprocessed": str(preprocessed),
           "nnUNet_extTrainer": str(TRAINERS_DIR), "nnUNet_n_proc_DA": "0", "nnUNet_compile": "0",
           "nnUNet_joint_epochs": "5", "nnUNet_joint_iterations": "2", "nnUNet_joint_threads": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    run_workers([[sys.executable, str(WORKER), "ddp", str(rank), "2", str(root)] for rank in (0, 1)],
                {**env, "nnUNet_results": str(root / "results_ddp")})
    run_workers([[sys.executable, str(WORKER), "single", "0", "1", str(root)]],
                {**env, "nnUNet_results": str(root / "results_single")})
    results = [json.loads((root / name).read_text(encoding="utf-8"))
               for name in ("result_ddp0.json", "result_ddp1.json", "result_single0.json")]
    return (*results, root)


def test_nnunet_sees_two_ranks_and_each_trainer_uses_the_same_class_weights(ranks, tiny_run):
    r0, r1, single, root = ranks
    assert (r0["is_ddp"], r0["local_rank"], r1["is_ddp"], r1["local_rank"]) == (True, 0, True, 1)
    assert not single["is_ddp"]
    assert (r0["device_chosen_by_nnunet"], r1["device_chosen_by_nnunet"]) == ("cuda:0", "cuda:1")  # see the worker
    folder = root / "nnUNet_preprocessed" / DATASET
    train_keys = json.loads((folder / "splits_final.json").read_text(encoding="utf-8"))[0]["train"]
    expected = lesion_balanced_by_hand(folder / f"{PLANS}_2d", train_keys, 3)
    assert r0["ce_weight"] == r1["ce_weight"] == single["ce_weight"]
    np.testing.assert_allclose(r0["ce_weight"], expected, rtol=1e-6)


def test_the_global_batch_is_split_over_the_ranks_and_forced_patches_centre_on_lesion(ranks):
    r0, r1, single, _ = ranks
    assert single["batch_size"] == GLOBAL_BATCH and r0["batch_size"] == r1["batch_size"] == GLOBAL_BATCH // 2
    assert r0["training"]["train_batch_size"] == r1["training"]["train_batch_size"] == GLOBAL_BATCH // 2
    # one process forces the last B - round(B * (1 - p)) samples of each batch onto foreground: 1 of 4;
    # split over two ranks the forced sample falls to rank 1, and the ranks together force as many
    forced_per_batch = GLOBAL_BATCH - round(GLOBAL_BATCH * (1 - OVERSAMPLE))
    assert forced_per_batch == 1
    assert single["sampling"]["forced"] == forced_per_batch * single["sampling"]["batches"]
    assert (r0["sampling"]["forced"], r1["sampling"]["forced"]) == (0, forced_per_batch * r1["sampling"]["batches"])
    for result in (r0, r1, single):
        assert result["dataset_class"] == "LesionCentredBlosc2"
        assert result["sampling"]["forced_with_lesion"] == result["sampling"]["forced"]


def test_after_a_freezing_step_frozen_weights_stay_and_both_ranks_hold_the_same_weights(ranks):
    r0, r1, _, root = ranks
    for result in (r0, r1):
        training = result["training"]
        assert training["wrapped_in_ddp"] and training["frozen_groups"] == 1
        assert training["frozen"] and all(n.startswith("encoder.") for n in training["frozen"])
        assert training["frozen_unchanged"]  # bit-identical through the step after the rebuild
        assert training["trainable_changed"] == training["trainable"]  # every trainable tensor stepped
    assert r0["training"]["frozen"] == r1["training"]["frozen"]
    p0, p1 = safe_torch_load(root / "params_rank0.pt"), safe_torch_load(root / "params_rank1.pt")
    assert p0.keys() == p1.keys()
    different = [n for n in p0 if not torch.equal(p0[n], p1[n])]
    assert different == []  # gradients averaged over the ranks: one model


def test_learning_curve_gathers_every_ranks_patches(ranks):
    r0, r1, single, root = ranks
    counts = single["validation"]["curve_counts"]
    assert r0["validation"]["curve_counts"] == r1["validation"]["curve_counts"] == counts
    types = json.loads((root / "nnUNet_preprocessed" / DATASET / "dataset.json").read_text(encoding="utf-8"))
    per_rank = [lesion_patches(root / f"val_batches_rank{r}.npz", types["lesion_types"]) for r in (0, 1)]
    assert per_rank[1] > 0  # rank 1 holds patches the curve must not lose
    assert counts["typed"] == sum(per_rank)
    rows = [json.loads((Path(result["output_folder"]) / "learning_curve.json").read_text(encoding="utf-8"))["epochs"]
            for result in (r0, single)]
    assert len(rows[0]) == len(rows[1]) == 1
    for key in ("epoch", "lesion_dice", "type_accuracy", "n_typed"):
        assert rows[0][0][key] == rows[1][0][key], key
    assert rows[0][0]["n_typed"] == sum(per_rank)
    # nnU-Net's own pseudo-Dice, gathered by nnU-Net, agrees as well
    assert r0["validation"]["mean_fg_dice"] == pytest.approx(single["validation"]["mean_fg_dice"], abs=1e-12)


def test_classification_of_the_validation_cases_is_gathered_from_both_ranks(ranks):
    r0, r1, single, root = ranks
    splits = root / "nnUNet_preprocessed" / DATASET / "splits_final.json"
    val_keys = json.loads(splits.read_text(encoding="utf-8"))[0]["val"]
    written = json.loads((Path(r0["output_folder"]) / "validation" / "classification.json").read_text(encoding="utf-8"))
    assert sorted(written) == sorted(val_keys) == sorted(single["classification"])
    assert r1["classification"] == r0["classification"] == written
    for key in val_keys:
        assert written[key]["probabilities"] == pytest.approx(single["classification"][key]["probabilities"], abs=1e-6)
        assert written[key]["predicted"] == single["classification"][key]["predicted"]
