"""The study's data steps: the phantom and the LiTS datasets 501/502 (converted, then each planned and
preprocessed in a step of its own), and the Sheba datasets 503/504 cut from the Sheba slices (``targets``).

Each records its settings in a marker (:func:`~nnunet_joint.study.folder.marked`), so that a rerun
skips it and a run folder never mixes two studies' data.
"""

from __future__ import annotations

from pathlib import Path

from nnunet_joint.names import DATASET_IDS, DEFAULT_PLANS
from nnunet_joint.study.folder import RunFolder, mark, marked, nnunet_bin, run_nnunet


def sources_settings(phantom: dict | None, encoder: str) -> dict:
    """What the LiTS datasets were made with (the ``sources`` marker; a run folder holds one study)."""
    return {"encoder": encoder, "phantom": phantom}


#: Markers of the source data's steps; ``sources``, written by earlier builds after all three, stands for each.
CONVERTED, LITS_DATA, LIVER_DATA, SOURCES_OF_EARLIER_BUILDS = "converted", "lits-data", "liver-data", "sources"


def sources_done(run: RunFolder, part: str, settings: dict) -> bool:
    """Whether ``part`` (:data:`CONVERTED`, :data:`LITS_DATA` or :data:`LIVER_DATA`) of the source data is done
    with ``settings``; a run folder of an earlier build, which prepared them in one step, has all three."""
    return marked(run, SOURCES_OF_EARLIER_BUILDS, settings) or marked(run, part, settings)


def convert_sources(run: RunFolder, lits_dir: Path, phantom: dict | None, max_lits_cases: int | None,
                    settings: dict) -> None:
    """The phantom (``phantom``: its size and seed; ``None`` for given raw folders) and the LiTS datasets
    501 (whole volumes, stage 1) and 502 (the LiTS lesion model's slices) in ``nnUNet_raw``."""
    from nnunet_joint.dataset_conversion.convert_lits import convert_lits
    from nnunet_joint.phantom import generate_corpus

    if phantom is not None and not (run.phantom / "Sheba" / "cases.csv").is_file():
        generate_corpus(run.phantom, seed=phantom["seed"], size=phantom["size"])
    convert_lits(lits_dir, raw_root=run.raw, overwrite=True, max_cases=max_lits_cases,
                 preprocessed_root=run.preprocessed)
    mark(run, CONVERTED, settings)


def preprocess_lits(run: RunFolder, encoder: str, settings: dict) -> None:
    """502 planned with the SE-ResNet preset of ``encoder`` and preprocessed, in this process;
    :func:`prepare_targets` later carries its plans to the Sheba datasets. nnU-Net's default plans too
    (plain nnU-Net's, carried to 503/504, and its LiTS pretraining's), from the same fingerprint."""
    from nnunet_joint.planning import plan_and_preprocess, planner_of

    with run.nnunet_environment():
        plan_and_preprocess([DATASET_IDS["lits_lesion"]], planner_of(encoder), verify_dataset_integrity=True)
        plan_and_preprocess([DATASET_IDS["lits_lesion"]], "ExperimentPlanner", reuse_fingerprint=True)
    mark(run, LITS_DATA, settings)


def preprocess_liver(run: RunFolder, settings: dict, child: bool = False) -> None:
    """501 with nnU-Net's default plans (stage 1). ``child``: in a process of its own
    (``nnunet_joint_plan_and_preprocess``, logged to ``logs/liver-data.log``), so that it runs beside
    :func:`preprocess_lits` in this one: nnU-Net's in-process preprocessing sets process-wide state, and
    one core each halves the wait (on the demo's 2 cores 501 took 31 s and 502 45 s, one after the other)."""
    if child:
        run_nnunet([nnunet_bin("nnunet_joint_plan_and_preprocess"), "-d", str(DATASET_IDS["liver"]), "-pl",
                    "ExperimentPlanner", "--verify_dataset_integrity"], run, run.logs / f"{LIVER_DATA}.log")
    else:
        from nnunet_joint.planning import plan_and_preprocess

        with run.nnunet_environment():
            plan_and_preprocess([DATASET_IDS["liver"]], "ExperimentPlanner", verify_dataset_integrity=True)
    mark(run, LIVER_DATA, settings)


def prepare_sources(run: RunFolder, lits_dir: Path, phantom: dict | None, max_lits_cases: int | None = None,
                    encoder: str = "seresnet18") -> None:
    """The source data in this process, one part after the other: :func:`convert_sources`,
    :func:`preprocess_lits`, :func:`preprocess_liver` (a study runs them as three steps)."""
    settings = sources_settings(phantom, encoder)
    convert_sources(run, lits_dir, phantom, max_lits_cases, settings)
    preprocess_lits(run, encoder, settings)
    preprocess_liver(run, settings)


def targets_settings(liver_model: Path | None, encoder: str) -> dict:
    """What the Sheba datasets were made with (the ``targets`` marker)."""
    return {"crop_mode": "oracle" if liver_model is None else "cascade", "encoder": encoder}


def prepare_targets(run: RunFolder, sheba_dir: Path, encoder: str = "seresnet18", liver_model: Path | None = None,
                    threads: int | None = None) -> None:
    """The Sheba datasets 503/504: crops by the stage-1 ``liver_model`` (the cascade, on ``threads`` torch
    threads) or, without one, by the reference masks (oracle crops); both plans carried over from LiTS (502):
    nnU-Net's default plans (plain rows, from scratch and from LiTS alike) and the SE-ResNet preset's (our rows)."""
    from nnunet_joint.dataset_conversion.convert_sheba import convert_sheba
    from nnunet_joint.planning import plans_name_of, transfer_plans

    convert_sheba(sheba_dir, raw_root=run.raw, preprocessed_root=run.preprocessed, overwrite=True,
                  liver_model=liver_model, liver_folds=None if liver_model is None else [0], threads=threads)
    with run.nnunet_environment():
        for i, plans in enumerate((DEFAULT_PLANS, plans_name_of(encoder))):  # plain rows (scratch and LiTS) and ours
            transfer_plans(DATASET_IDS["lits_lesion"], [DATASET_IDS["seg"], DATASET_IDS["joint"]], plans,
                           verify_dataset_integrity=i == 0, reuse_fingerprint=i > 0)  # checked once
    mark(run, "targets", targets_settings(liver_model, encoder))


def prepare_data(run: RunFolder, phantom_size: str, seed: int, max_lits_cases: int | None = None,
                 encoder: str = "seresnet18") -> None:
    """The phantom and all four datasets without training anything, the Sheba ones on *oracle* crops.

    For tests and benchmarks that need data, not a study: :func:`~nnunet_joint.study.cli.reproduce` crops the
    Sheba slices with a trained stage-1 model instead, unless asked for oracle crops.
    """
    prepare_sources(run, run.phantom / "LiTS", {"size": phantom_size, "seed": seed}, max_lits_cases, encoder)
    prepare_targets(run, run.phantom / "Sheba", encoder)

