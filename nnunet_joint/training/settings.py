"""The one documented place where our trainers read their run-time settings.

nnU-Net builds trainers from ``(plans, configuration, fold, dataset_json, device)`` only, so
choices that are not part of the trainer's name come from environment variables (nnU-Net's own
style: ``nnUNet_n_proc_DA``, ``nnUNet_compile``). Every value used is written to
``joint_config.json`` in the fold folder, so a results folder says how it was made.

| variable | meaning | default |
|---|---|---|
| ``nnUNet_joint_epochs`` | number of epochs; a budgeted run saves ``checkpoint_latest.pth`` and draws ``progress.png`` every tenth of them and at the end (:func:`draw_progress_every`) | nnU-Net's (1000; saves every 50, draws every epoch) |
| ``nnUNet_joint_iterations`` | training iterations per epoch (validation: a fifth, 1..50) | nnU-Net's (250 / 50) |
| ``nnUNet_joint_max_batch_size`` | upper bound on the plans' batch size (a CPU budget: nnU-Net plans the batch for a GPU's memory, and on a CPU an iteration's cost grows with it; the plans' smaller batch is kept) | the plans' |
| ``nnUNet_joint_fused_sgd`` | ``1``: on CPU, nnU-Net's SGD runs PyTorch's fused kernel (the same update, to float rounding; about 3x faster optimiser step); ``0``: its per-tensor loop. Plain rows (``nnUNetTrainer_JointBudget``) follow it too | ``1`` |
| ``nnUNet_joint_val_mirroring`` | ``0``: the final validation predicts without test-time mirroring (the checkpoint keeps its mirroring axes for prediction); on 2 CPU cores mirroring made stage 1's validation of 10 phantom volumes last 14 min | ``1``, nnU-Net's |
| ``nnUNet_joint_final_validation`` | ``0``: the training ends once ``checkpoint_final.pth`` is saved, and its final validation is left to a later ``nnUNetv2_train ... --val`` (the study runs it as a step of its own, beside the trainings that only need the checkpoint) | ``1``, nnU-Net's: validate right after training |
| ``nnUNet_joint_threads`` | torch threads of the training process (nnU-Net sets the CPU count on ``-device cpu``) | nnU-Net's |
| ``nnUNet_joint_lr_recipe`` | learning-rate recipe of every row, whatever its initialisation: ``poly`` or ``warmup-poly`` (:mod:`nnunet_joint.training.recipes`) | ``poly`` |
| ``nnUNet_joint_warmup_fraction`` | fraction of the epochs the learning rate warms up over (:mod:`nnunet_joint.training.recipes`) | the recipe's |
| ``nnUNet_joint_peak_lr`` | peak learning rate of the run's recipe (:mod:`nnunet_joint.training.recipes`) | the recipe's (1e-2) |
| ``nnUNet_joint_head_lr_scale`` | the classification head's learning rate (its own parameter group: classifier and Y-Net) as a fraction of the recipe's (:mod:`nnunet_joint.training.recipes`) | ``0.1`` |
| ``nnUNet_joint_lambda`` | Y-Net weight: ``L = λ·L_seg + (1−λ)·L_cls`` | ``0.5`` |
| ``nnUNet_joint_class_weights`` | the CE's class-weight rule of the segmentation, Y-Net and joint trainers: ``lesion-balanced`` (lesion 5x the rest at most), ``lesion-balanced-x1``, ``inverse-frequency`` (the papers' literal reading) or ``none`` (:data:`nnunet_joint.training.losses.CLASS_WEIGHT_RULES`) | ``lesion-balanced`` |
| ``nnUNet_joint_imagenet_weights`` | local ImageNet SE-ResNet checkpoint (.pth/.safetensors, timm layout) | required by ``*_ImageNet*`` |
| ``nnUNet_joint_seed`` | seeds Python's, NumPy's and torch's generators of the training process (fresh weights, sampling in the main process); nnU-Net's augmentation workers stay unseeded, so two seeded runs still differ (``nnunet_joint_reproduce --repeats``) | unseeded, as nnU-Net |
| ``nnUNet_joint_lits_checkpoint`` | ``checkpoint_final.pth`` of the LiTS model on Dataset502_LiTSLesion: ``nnUNetTrainerSEResNetSeg`` (our rows) or ``nnUNetTrainer_JointBudget`` (plain nnU-Net from LiTS) | looked up in ``nnUNet_results`` (same plans) |

The network is not a setting: it is the plans' (``-p nnUNetSEResNet50Plans``, see
:mod:`nnunet_joint.planning`), so the results folder's name and ``plans.json`` say which encoder
was trained, and prediction never depends on the environment of the predicting shell.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from nnunet_joint.errors import InputError
from nnunet_joint.names import DATASET_FOLDERS, LITS_LESION_DATASET, LITS_TRAINER, results_folder_name

ENV_EPOCHS = "nnUNet_joint_epochs"
ENV_FUSED_SGD = "nnUNet_joint_fused_sgd"
ENV_ITERATIONS = "nnUNet_joint_iterations"
ENV_MAX_BATCH = "nnUNet_joint_max_batch_size"
ENV_LAMBDA = "nnUNet_joint_lambda"
ENV_CLASS_WEIGHTS = "nnUNet_joint_class_weights"
ENV_IMAGENET = "nnUNet_joint_imagenet_weights"
ENV_LITS = "nnUNet_joint_lits_checkpoint"
ENV_PEAK_LR = "nnUNet_joint_peak_lr"
ENV_HEAD_LR_SCALE = "nnUNet_joint_head_lr_scale"
ENV_RECIPE = "nnUNet_joint_lr_recipe"
ENV_SEED = "nnUNet_joint_seed"
ENV_VAL_MIRRORING = "nnUNet_joint_val_mirroring"
ENV_FINAL_VALIDATION = "nnUNet_joint_final_validation"
ENV_THREADS = "nnUNet_joint_threads"
ENV_WARMUP = "nnUNet_joint_warmup_fraction"

DEFAULT_LAMBDA = 0.5
#: Where the LiTS lesion-pretraining model is looked up when ``nnUNet_joint_lits_checkpoint`` is unset.
LITS_DATASET = DATASET_FOLDERS[LITS_LESION_DATASET]


def _positive_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InputError(name, f"must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise InputError(name, f"must be a positive integer, got {raw!r}")
    return value


@dataclass(frozen=True)
class Budget:
    """Training length and the most samples per step; ``None`` fields keep nnU-Net's defaults."""

    epochs: int | None
    iterations_per_epoch: int | None
    max_batch_size: int | None = None

    @classmethod
    def from_env(cls) -> "Budget":
        return cls(_positive_int(ENV_EPOCHS), _positive_int(ENV_ITERATIONS), _positive_int(ENV_MAX_BATCH))

    @staticmethod
    def val_iterations(iterations_per_epoch: int) -> int:
        """nnU-Net runs 50 validation per 250 training iterations; keep that ratio, 1..50."""
        return max(1, min(50, iterations_per_epoch // 5))

    @staticmethod
    def checkpoint_every(epochs: int) -> int:
        """Epochs between ``checkpoint_latest.pth`` saves of a run of ``epochs``: a tenth of it (at least 1).

        nnU-Net saves every 50 of its 1000 epochs; a budget of 50 epochs would then save none before
        the final one, and a study killed mid-row (a session's end, a scheduler's preemption) would
        train that row again from epoch 0. A save costs about a second (115 MB for SE-ResNet-18).
        """
        return max(1, epochs // 10)

    def apply(self, trainer) -> None:
        """Set an nnUNetTrainer's epochs and iterations per epoch (validation iterations follow), how
        often it saves ``checkpoint_latest.pth`` (:meth:`checkpoint_every`, never less often than
        nnU-Net) and the cap on its batch."""
        if self.epochs is not None:
            trainer.num_epochs = self.epochs
            trainer.save_every = min(trainer.save_every, self.checkpoint_every(self.epochs))
        if self.iterations_per_epoch is not None:
            trainer.num_iterations_per_epoch = self.iterations_per_epoch
            trainer.num_val_iterations_per_epoch = self.val_iterations(self.iterations_per_epoch)
        configuration = trainer.configuration_manager.configuration
        if self.max_batch_size is not None and configuration["batch_size"] > self.max_batch_size:
            # before initialize(), which reads it (and splits it over DDP ranks); the results folder's
            # plans.json, written from the same dictionary, then records the batch that trained
            configuration["batch_size"] = self.max_batch_size


def draw_progress_every(trainer, every: int) -> None:
    """Have nnU-Net draw ``progress.png`` at the end of every ``every``-th epoch and of the last one only.

    nnU-Net redraws the plot (matplotlib, all epochs so far) at the end of every epoch: 0.65 s on one
    of 2 CPU cores (measured for 50 epochs, docs/measured_figures.md), about 8 % of a study row's
    8.5 s epochs, paid by plain nnU-Net's rows and ours alike. Budgeted runs therefore draw it as
    often as they save ``checkpoint_latest.pth`` (:meth:`Budget.checkpoint_every`), so the plot of a
    killed run is as current as the checkpoint it resumes from, and always at the last epoch. The
    logged values are untouched; only how often they are drawn changes. Works on the trainer's own
    logger instance (nnU-Net's ``on_epoch_end`` calls ``self.logger.plot_progress_png``), so nnU-Net's
    trainer code is not copied.
    """
    draw = trainer.logger.plot_progress_png

    def plot_progress_png(output_folder: str) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % every == 0 or epoch >= trainer.num_epochs - 1:
            draw(output_folder)

    trainer.logger.plot_progress_png = plot_progress_png


def apply_to_trainer(trainer) -> Budget:
    """What every trainer of ours (and the plain rows') takes from the environment when it is built:
    the budget (with how often a budgeted run draws nnU-Net's progress plot, :func:`draw_progress_every`),
    the torch threads and the seed (before the network exists); returns the budget."""
    budget = Budget.from_env()
    budget.apply(trainer)
    if budget.epochs is not None:
        draw_progress_every(trainer, trainer.save_every)
    apply_threads()
    apply_seed()
    return budget


def validation_mirror_axes(axes: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The mirroring axes the final validation predicts with: ``axes`` (nnU-Net's), or ``None`` (no
    test-time mirroring) when ``nnUNet_joint_val_mirroring=0``."""
    raw = os.environ.get(ENV_VAL_MIRRORING, "1")
    if raw not in ("0", "1"):
        raise InputError(None, f"{ENV_VAL_MIRRORING} must be 0 or 1, got {raw!r}")
    return axes if raw == "1" else None


def final_validation_now() -> bool:
    """Whether the final validation runs right after training (nnU-Net's way), or is deferred to a later
    ``nnUNetv2_train ... --val`` (``nnUNet_joint_final_validation=0``)."""
    raw = os.environ.get(ENV_FINAL_VALIDATION, "1")
    if raw not in ("0", "1"):
        raise InputError(None, f"{ENV_FINAL_VALIDATION} must be 0 or 1, got {raw!r}")
    return raw == "1"


def prepare_final_validation(trainer) -> bool:
    """What every trainer of ours (and the plain rows') does before nnU-Net's final validation: sets its
    test-time mirroring (:func:`validation_mirror_axes`) and says whether to validate now
    (:func:`final_validation_now`); a deferred validation is named in the training log."""
    trainer.inference_allowed_mirroring_axes = validation_mirror_axes(trainer.inference_allowed_mirroring_axes)
    if final_validation_now():
        return True
    trainer.print_to_log_file(f"final validation deferred ({ENV_FINAL_VALIDATION}=0): checkpoint_final.pth is saved; "
                              "'nnUNetv2_train ... --val' validates it")
    return False


def apply_seed() -> int | None:
    """Seed Python, NumPy and torch with ``nnUNet_joint_seed`` when set (before the network is built)."""
    raw = os.environ.get(ENV_SEED)
    if raw is None or raw == "":
        return None
    try:
        seed = int(raw)
        if seed < 0:
            raise ValueError
    except ValueError:
        raise InputError(None, f"{ENV_SEED} must be a non-negative integer, got {raw!r}") from None
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def apply_threads() -> int | None:
    """``torch.set_num_threads(nnUNet_joint_threads)`` when set: several trainings sharing one machine
    (``nnunet_joint_reproduce --jobs``) would otherwise each take every core."""
    threads = _positive_int(ENV_THREADS)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


def fused_sgd(optimizer: "torch.optim.Optimizer", device: "torch.device") -> "torch.optim.Optimizer":
    """nnU-Net's SGD rebuilt with PyTorch's fused kernel on CPU, unless ``nnUNet_joint_fused_sgd=0``.

    The per-tensor loop of ``torch.optim.SGD`` (Nesterov momentum, weight decay) passes over each of
    the network's tensors several times; for the demo's 14 M-parameter SE-ResNet-18 U-Net on one CPU
    thread it took 67-70 ms per step, the fused kernel (the same update in one pass) 17-28 ms
    (docs/measured_figures.md). Only the CPU is changed: nnU-Net's GPU path (grad scaler, foreach)
    stays as it is. The effective choice is the optimiser's ``param_groups[i]["fused"]``.
    """
    raw = os.environ.get(ENV_FUSED_SGD) or "1"
    if raw not in ("0", "1"):
        raise InputError(ENV_FUSED_SGD, f"must be 0 or 1, got {raw!r}")
    import torch

    if raw == "0" or device.type != "cpu" or type(optimizer) is not torch.optim.SGD:
        return optimizer
    groups = [{**group, "fused": True, "foreach": None} for group in optimizer.param_groups]
    fused = torch.optim.SGD(groups, **{**optimizer.defaults, "fused": True, "foreach": None})
    # The fused kernel takes the momentum buffers of a step's tensors all at once and fails when some
    # exist and some do not: a schedule that unfreezes encoder groups gives tensors their first gradient
    # after the others' buffers were made. With dampening 0 (nnU-Net's) a zero buffer is what the loop's
    # first step makes of one (momentum x 0 + gradient), so every tensor starts with one; a loaded
    # optimiser state replaces them.
    if any(g["momentum"] and g["dampening"] == 0 for g in fused.param_groups):
        for group in fused.param_groups:
            for p in group["params"]:
                fused.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return fused


def _number_in(name: str, low: float, high: float, low_open: bool) -> float | None:
    import math

    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > low if low_open else value >= low) and value < high):
        interval = f"{'(' if low_open else '['}{low}, {high})"
        raise InputError(name, f"must be a number in {interval}, got {raw!r}")
    return value


def recipe_choice() -> str:
    """The run's learning-rate recipe (``nnUNet_joint_lr_recipe``): one for every row, scratch or pretrained."""
    from nnunet_joint.training.recipes import DEFAULT_RECIPE, RECIPES

    name = os.environ.get(ENV_RECIPE) or DEFAULT_RECIPE
    if name not in RECIPES:
        raise InputError(ENV_RECIPE, f"must be one of {', '.join(RECIPES)}, got {name!r}")
    return name


def head_lr_scale() -> float:
    """``nnUNet_joint_head_lr_scale`` (a positive number), else the default
    :data:`~nnunet_joint.training.recipes.HEAD_LR_SCALE`."""
    from nnunet_joint.training.recipes import HEAD_LR_SCALE

    scale = _number_in(ENV_HEAD_LR_SCALE, 0.0, float("inf"), low_open=True)
    return HEAD_LR_SCALE if scale is None else scale


def recipe_with_overrides(recipe):
    """The learning-rate recipe with ``nnUNet_joint_peak_lr`` / ``nnUNet_joint_warmup_fraction`` applied, if set."""
    import dataclasses

    peak = _number_in(ENV_PEAK_LR, 0.0, float("inf"), low_open=True)
    warmup = _number_in(ENV_WARMUP, 0.0, 1.0, low_open=False)
    return dataclasses.replace(recipe, **({"peak_lr": peak} if peak is not None else {}),
                               **({"warmup_fraction": warmup} if warmup is not None else {}))


def class_weight_choice() -> str:
    """The CE's class-weight rule (``nnUNet_joint_class_weights``), the same for every row of a run."""
    from nnunet_joint.training.losses import CLASS_WEIGHT_RULES, DEFAULT_CLASS_WEIGHTS

    name = os.environ.get(ENV_CLASS_WEIGHTS) or DEFAULT_CLASS_WEIGHTS
    if name not in CLASS_WEIGHT_RULES:
        raise InputError(ENV_CLASS_WEIGHTS, f"must be one of {', '.join(CLASS_WEIGHT_RULES)}, got {name!r}")
    return name


def lambda_from_env() -> float:
    raw = os.environ.get(ENV_LAMBDA)
    if raw in (None, ""):
        return DEFAULT_LAMBDA
    try:
        value = float(raw)
    except ValueError:
        raise InputError(ENV_LAMBDA, f"must be a number in [0, 1], got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(ENV_LAMBDA, f"must be a number in [0, 1], got {raw!r}")
    return value


def imagenet_weights_path() -> Path:
    raw = os.environ.get(ENV_IMAGENET)
    if not raw:
        raise InputError(ENV_IMAGENET, "is not set: ImageNet initialisation needs a local SE-ResNet checkpoint "
                                       "(.pth or .safetensors in timm's layout); nothing is downloaded")
    path = Path(raw)
    if not path.is_file():
        raise InputError(path, f"ImageNet checkpoint not found (from {ENV_IMAGENET})")
    return path


def lits_checkpoint_path(plans_identifier: str, trainer: str = LITS_TRAINER) -> Path:
    """The LiTS lesion model: ``nnUNet_joint_lits_checkpoint``, else fold_all or fold_0 in nnUNet_results.

    The lookup takes the LiTS model of ``trainer`` (ours: the segmentation baseline's; plain nnU-Net's
    for the plain row from LiTS) trained with the same plans (``<trainer>__<plans>__2d``): only the
    same architecture, spacing and normalisation transfer.
    """
    raw = os.environ.get(ENV_LITS)
    if raw:
        path = Path(raw)
        if not path.is_file():
            raise InputError(path, f"LiTS checkpoint not found (from {ENV_LITS})")
        return path
    results = os.environ.get("nnUNet_results")
    folder = results_folder_name(trainer, plans_identifier)
    if results:
        for fold in ("fold_all", "fold_0"):
            candidate = Path(results) / LITS_DATASET / folder / fold / "checkpoint_final.pth"
            if candidate.is_file():
                return candidate
    raise InputError(ENV_LITS, f"is not set and no $nnUNet_results/{LITS_DATASET}/{folder}/fold_all (or fold_0)/"
                               "checkpoint_final.pth was found: train the LiTS lesion model with these plans first")


def settings_record(budget: Budget) -> dict:
    return {"budget": asdict(budget), "environment": {k: os.environ.get(k) for k in (
        ENV_EPOCHS, ENV_ITERATIONS, ENV_MAX_BATCH, ENV_LAMBDA, ENV_CLASS_WEIGHTS, ENV_IMAGENET, ENV_LITS, ENV_RECIPE, ENV_PEAK_LR,
        ENV_WARMUP, ENV_HEAD_LR_SCALE, ENV_THREADS, ENV_SEED, ENV_FUSED_SGD, ENV_VAL_MIRRORING,
        ENV_FINAL_VALIDATION)}}
