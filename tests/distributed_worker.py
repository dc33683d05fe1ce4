"""One process of the 2-process DDP test (tests/test_distributed.py), or its single-process reference.

Started as a script: ``python distributed_worker.py ddp RANK WORLD_SIZE OUT`` (``MASTER_ADDR`` /
``MASTER_PORT`` set by the test) joins a gloo process group and runs our trainer's rank-dependent
code on the CPU; ``python distributed_worker.py single 0 1 OUT`` runs the same trainer without a
process group on the validation batches the ranks saved. Each writes ``OUT/result_<mode><rank>.json``.

nnU-Net's DDP path is written for CUDA, and three of its lines cannot run on a CPU process group:
``nnUNetTrainer.__init__`` sets the device to ``cuda:<rank>`` whenever a process group exists,
``initialize`` wraps the network with ``DDP(..., device_ids=[rank])`` (refused for a CPU module) and
converts it to ``SyncBatchNorm`` (whose training forward refuses CPU tensors). :func:`initialize_on_cpu`
therefore runs nnU-Net's ``initialize`` as for one process and then does what its DDP branch does,
with nnU-Net's own functions, minus those CUDA-only parts: the global batch split over the ranks
(``_set_batch_size_and_oversample``), a ``DDP`` wrapper and the DDP loss (batch Dice gathered over
the ranks). Everything else is the trainer's own code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

TRAINER = "nnUNetTrainerYNet_LiTS_HierFreeze"  # segmentation + classification head, lesion-centred, freezing
DATASET = "503"
PLANS = "nnUNetSEResNet18Plans"
#: With the budget of 5 epochs, HierFreeze freezes nothing in epoch 0 and the stem from epoch 1 on.
EPOCHS = 5
VAL_BATCHES = 2
SAMPLING_BATCHES = 6


def initialize_on_cpu(trainer) -> None:
    """nnU-Net's ``initialize`` for a CPU process (module docstring)."""
    trainer.device, trainer.grad_scaler = torch.device("cpu"), None  # nnU-Net chose cuda:<rank> under DDP
    distributed = trainer.is_ddp
    trainer.is_ddp = False
    trainer.initialize()
    trainer.is_ddp = distributed
    if distributed:
        trainer._set_batch_size_and_oversample()
        trainer.network = DDP(trainer.network)
        trainer.loss = trainer._build_loss()


def save_batches(batches: list[dict], path: Path) -> None:
    arrays = {}
    for i, batch in enumerate(batches):
        arrays[f"{i}_data"] = batch["data"].numpy()
        arrays[f"{i}_keys"] = np.asarray(batch["keys"], dtype=str)
        for j, target in enumerate(batch["target"]):
            arrays[f"{i}_target_{j}"] = target.numpy()
    np.savez(path, **arrays)


def load_batches(path: Path) -> list[dict]:
    arrays = np.load(path)
    batches = []
    for i in range(VAL_BATCHES):
        targets = sorted((k for k in arrays.files if k.startswith(f"{i}_target_")),
                         key=lambda k: int(k.rsplit("_", 1)[1]))
        batches.append({"data": torch.from_numpy(arrays[f"{i}_data"]), "keys": list(arrays[f"{i}_keys"]),
                        "target": [torch.from_numpy(arrays[k]) for k in targets]})
    return batches


def sampling(trainer) -> dict:
    """Forced-foreground patches of nnU-Net's loader with this rank's batch size, oversampling and dataset class."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    from nnunet_joint.labels import FIRST_LESION_LABEL

    tr_keys, _ = trainer.do_split()
    patch = trainer.configuration_manager.patch_size
    loader = nnUNetDataLoader(trainer.dataset_class(trainer.preprocessed_dataset_folder, tr_keys), trainer.batch_size,
                              patch, patch, trainer.label_manager, trainer.oversample_foreground_percent)
    forced = forced_with_lesion = 0
    for _ in range(SAMPLING_BATCHES):
        batch = loader.generate_train_batch()
        shows = (batch["target"] >= FIRST_LESION_LABEL).flatten(1).any(1)
        for j in range(trainer.batch_size):
            if loader.get_do_oversample(j):
                forced += 1
                forced_with_lesion += int(shows[j])
    return {"forced": forced, "forced_with_lesion": forced_with_lesion, "batches": SAMPLING_BATCHES}


def train_across_freezing_step(trainer, loader, out: Path, rank: int) -> dict:
    """Epoch 0 (nothing frozen) and epoch 1 (stem frozen: the DDP wrapper is rebuilt), one step each."""
    plain = trainer.plain_network()
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    trainer.train_step(next(loader))
    trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    before = {n: p.detach().clone() for n, p in plain.named_parameters()}
    batch = next(loader)
    trainer.train_step(batch)
    frozen = [n for n, p in plain.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in plain.named_parameters() if p.requires_grad]
    torch.save({n: p.detach() for n, p in plain.named_parameters()}, out / f"params_rank{rank}.pt")
    return {"frozen": frozen, "frozen_groups": trainer.frozen_groups,
            "frozen_unchanged": all(torch.equal(before[n], p) for n, p in plain.named_parameters() if n in frozen),
            "trainable_changed": sum(not torch.equal(before[n], p) for n, p in plain.named_parameters()
                                     if n in trainable),
            "trainable": len(trainable), "train_batch_size": int(batch["data"].shape[0]),
            "wrapped_in_ddp": isinstance(trainer.network, DDP)}


def validate(trainer, batches: list[dict]) -> dict:
    """One validation epoch of nnU-Net's hooks over ``batches`` (our learning curve rides on them)."""
    trainer.on_validation_epoch_start()
    with torch.no_grad():
        outputs = [trainer.validation_step(batch) for batch in batches]
    trainer.on_validation_epoch_end(outputs)
    return {"curve_counts": trainer._learning_curve().counts,
            "mean_fg_dice": float(trainer.logger.get_value("mean_fg_dice", step=-1))}


def main(mode: str, rank: int, world_size: int, out: Path) -> None:
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_joint.checkpoints import safe_torch_load

    if mode == "ddp":
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    trainer = get_trainer_from_args(DATASET, "2d", 0, TRAINER, PLANS, device=torch.device("cpu"))
    result = {"is_ddp": trainer.is_ddp, "local_rank": trainer.local_rank,
              "device_chosen_by_nnunet": str(trainer.device)}
    initialize_on_cpu(trainer)
    result.update(batch_size=trainer.batch_size, oversample=trainer.oversample_foreground_percent,
                  dataset_class=trainer.dataset_class.__name__,
                  ce_weight=trainer.loss.seg_loss.loss.ce.weight.tolist(), output_folder=trainer.output_folder)
    np.random.seed(100 + rank)
    torch.manual_seed(100 + rank)
    result["sampling"] = sampling(trainer)
    if mode == "ddp":
        loader_train, loader_val = trainer.get_dataloaders()
        result["training"] = train_across_freezing_step(trainer, loader_train, out, rank)
        batches = [next(loader_val) for _ in range(VAL_BATCHES)]
        save_batches(batches, out / f"val_batches_rank{rank}.npz")
        if rank == 0:
            torch.save(trainer.plain_network().state_dict(), out / "weights_rank0.pt")
        dist.barrier()  # the single-process reference starts from rank 0's weights
    else:
        trainer.plain_network().load_state_dict(safe_torch_load(out / "weights_rank0.pt"))
        trainer.current_epoch = 1
        batches = [b for r in range(2) for b in load_batches(out / f"val_batches_rank{r}.npz")]
    result["validation"] = validate(trainer, batches)
    if mode == "ddp":
        result["classification"] = trainer.write_classification_predictions()
        dist.destroy_process_group()
    else:
        result["classification"] = trainer.predict_case_types(trainer.do_split()[1])
    (out / f"result_{mode}{rank}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
