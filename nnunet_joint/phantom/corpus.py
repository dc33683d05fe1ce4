"""Plan and write the phantom corpus: a LiTS-like volume set and a Sheba-like slice set.

Layout written under ``out_dir``::

    LiTS/volume-N.nii.gz, LiTS/segmentation-N.nii.gz   (int16 HU; uint8 0 bg, 1 liver, 2 tumour)
    Sheba/cases.csv                                      case_id,patient_id,lesion_type,image,mask,liver_mask
    Sheba/slices/<case_id>.nii.gz                        one slice, int16 HU, SimpleITK size (W, H, 1)
    Sheba/masks/<case_id>_lesion.nii.gz, <case_id>_liver.nii.gz   uint8 0/1, same geometry
    phantom_truth.json                                   every lesion: type, variant, centre, radius, atypical

**Sheba type mix.** The paper reports 332 slices from 140 patients with a type mix of
75 : 71 : 93 (cyst : hemangioma : metastasis). These sum to 239, not 332, so they are read as a
*ratio*: the default set has 104 cyst / 99 hemangioma / 129 metastasis slices (largest-remainder
rounding of 332 in that ratio) and 44 / 42 / 54 patients (140 split in the ratio of the slice
counts). Each patient has one lesion type and 1-4 slices.

**Determinism.** Every volume, patient and slice draws from its own generator seeded by
``(seed, stream, index)``, so the same seed gives the same bytes (SimpleITK's gzip stores no
time stamp) and items do not depend on the order they are made in.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from nnunet_joint import LESION_TYPES
from nnunet_joint.errors import InputError
from nnunet_joint.io import atomic_path, write_image, write_json
from nnunet_joint.process import tied_pool
from nnunet_joint.phantom.acquisition import Acquisition, apply_acquisition, sample_acquisition
from nnunet_joint.phantom.anatomy import LIVER_CODES, Grid, Patient, render_anatomy, sample_patient
from nnunet_joint.phantom.lesions import Lesion, lesion_count, paint_lesion, place_lesions, sample_lesion

GENERATOR_VERSION = "1.1.0"
#: Default difficulty: 15 % atypical lesions, 9-21 HU noise at 256 x 256; see DIFFICULTY_HELP.
#: Calibration check (seed 0, default size, 3-fold CV grouped by patient, features measured inside
#: the *true* lesion mask): lesion-median HU alone classifies 72 % of slices, a random forest on
#: ten hand-made features (HU percentiles, rim/core contrast, size, shape, edge sharpness) 93 %;
#: at difficulty 0 the forest reaches 100 %, at 2 it drops to 90 %. Methods that must also find
#: the lesion, learning from ~220 slices, therefore stay below this ceiling and above chance.
DEFAULT_DIFFICULTY = 1.0
DIFFICULTY_RANGE = (0.0, 3.0)
DIFFICULTY_HELP = (
    "0 = textbook lesions, little noise; 1 = default (realistic: 15 %% atypical lesions, "
    "9-21 HU noise, some weak enhancement); up to 3 = noisy, small lesions, many atypical"
)

#: Random streams (second element of every seed tuple).
_PLAN, _LITS, _SHEBA_PATIENT, _SHEBA_SLICE = 1, 2, 3, 4


@dataclass(frozen=True)
class SizeSpec:
    """How much to generate."""

    lits_volumes: int
    lits_matrix: int
    lits_slices: tuple[int, int]  # min, max number of slices
    sheba_slices: int
    sheba_patients: int
    sheba_ratio: tuple[int, int, int]  # cyst : hemangioma : metastasis
    sheba_matrix: int
    lits_slice_mm: tuple[float, float] = (2.5, 5.0)  # thicker for the tiny grid so lesions fit in 8 slices


#: The source is what LiTS is to the Sheba set (the papers' data-rich source, data-poor target):
#: ``small``, ``paper`` and ``default`` hold at least ten times more lesion-bearing LiTS slices than a
#: Sheba fold trains on (measured with :func:`source_target_census`: docs/study-setting.md).
#: ``default`` has LiTS's 131 volumes; ``paper`` and ``default`` the papers' Sheba set's size.
SIZES: dict[str, SizeSpec] = {
    # the tests': three small volumes, still more lesion slices than the target's training slices
    "tiny": SizeSpec(3, 64, (8, 8), 18, 9, (1, 1, 1), 96, lits_slice_mm=(8.0, 10.0)),
    # the demo's and the study's: on 2 CPU cores one training iteration of our seresnet18 trainer costs
    # 7 s at the default size (nnU-Net plans batch 15 x 112x128) and about 13x less here (half the matrix)
    "small": SizeSpec(48, 128, (24, 32), 90, 38, (75, 71, 93), 128, lits_slice_mm=(5.0, 6.0)),
    "default": SizeSpec(131, 256, (24, 48), 332, 140, (75, 71, 93), 256),
    # the study's: the papers' target (332 slices of 140 patients, 75 / 71 / 93 per type) at the small
    # size's matrix, which 2 CPU cores afford; 160 LiTS-like volumes keep the source at least ten times
    # the 221 slices a fold trains on (``small``'s 48 volumes held 770 lesion slices, 16 each)
    "paper": SizeSpec(160, 128, (24, 32), 332, 140, (75, 71, 93), 128, lits_slice_mm=(5.0, 6.0)),
}
#: Folds of the Sheba datasets (``nnunet_joint_convert_sheba``'s default): a fold trains on 2/3 of them.
TARGET_FOLDS = 3


@dataclass(frozen=True)
class LitsVolumePlan:
    index: int
    lesion_types: tuple[str, ...]
    radii_mm: tuple[float, ...]  # drawn sizes, one per lesion; the grid's smallest lesion and the liver bound them


#: LiTS-like tumour burden, after the LiTS training set (Bilic et al., "The Liver Tumor Segmentation
#: Benchmark (LiTS)", Medical Image Analysis 2023): 131 volumes with primary and secondary tumours of
#: varied sizes, from none to dozens per volume, a median of a few, many under 1 cm across. A volume
#: (from the fourth on) is tumour-free with this probability ...
LITS_TUMOUR_FREE = 0.1
#: ... else its lesion count is log-normal with this median and log-sd, at most LiTS's maximum,
LITS_MEDIAN_LESIONS, LITS_LESIONS_LOG_SD, LITS_MAX_LESIONS = 4.0, 1.0, 75
#: and each lesion's radius is log-uniform in this range (diameters 4-120 mm; 27 % below 10 mm).
LITS_RADIUS_MM = (2.0, 60.0)
#: LiTS tumours are mostly metastases and HCC: the phantom's metastasis type dominates its volumes.
LITS_TYPE_WEIGHTS = (0.2, 0.2, 0.6)  # cyst, hemangioma, metastasis


def _plan_lits_volume(rng: np.random.Generator, index: int) -> LitsVolumePlan:
    """Lesion types and sizes of one LiTS-like volume (see the ``LITS_*`` constants)."""
    if index == 0:  # one volume always shows every type (and several metastases)
        types: tuple[str, ...] = ("cyst", "hemangioma", "metastasis", "metastasis")
    elif index >= 3 and rng.random() < LITS_TUMOUR_FREE:
        types = ()
    else:
        n = int(np.clip(np.rint(LITS_MEDIAN_LESIONS * np.exp(rng.normal(0, LITS_LESIONS_LOG_SD))), 1, LITS_MAX_LESIONS))
        main = str(rng.choice(LESION_TYPES, p=LITS_TYPE_WEIGHTS))
        types = tuple(main if rng.random() > 0.25 else str(rng.choice(LESION_TYPES)) for _ in range(n))
    low, high = np.log(LITS_RADIUS_MM)
    radii = tuple(float(r) for r in np.exp(rng.uniform(low, high, len(types))))
    return LitsVolumePlan(index, types, radii)


@dataclass(frozen=True)
class ShebaCasePlan:
    case_id: str
    patient_id: str
    patient_index: int
    slice_index: int  # within the patient
    lesion_type: str


@dataclass(frozen=True)
class CorpusPlan:
    """What will be generated, decided before any image is made."""

    seed: int
    size: str
    difficulty: float
    lits: tuple[LitsVolumePlan, ...]
    sheba: tuple[ShebaCasePlan, ...]

    def sheba_type_counts(self) -> dict[str, int]:
        return {t: sum(c.lesion_type == t for c in self.sheba) for t in LESION_TYPES}

    def sheba_patient_type_counts(self) -> dict[str, int]:
        types = {c.patient_id: c.lesion_type for c in self.sheba}
        return {t: sum(v == t for v in types.values()) for t in LESION_TYPES}


def largest_remainder(total: int, weights: tuple[float, ...]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (Hamilton's method)."""
    w = np.asarray(weights, float)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts.tolist()


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _check_args(seed: int, size: str, difficulty: float) -> None:
    if size not in SIZES:
        raise InputError("--size", f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    lo, hi = DIFFICULTY_RANGE
    if not (np.isfinite(difficulty) and lo <= difficulty <= hi):
        raise InputError("--difficulty", f"{difficulty} is outside [{lo}, {hi}]")
    if int(seed) != seed or seed < 0:
        raise InputError("--seed", f"{seed} is not a non-negative integer")


def plan_corpus(seed: int = 0, size: str = "default", difficulty: float = DEFAULT_DIFFICULTY) -> CorpusPlan:
    """Decide volumes, patients, slices and lesion types without rendering anything."""
    _check_args(seed, size, difficulty)
    spec = SIZES[size]
    rng = _rng(seed, _PLAN)

    lits = [_plan_lits_volume(rng, i) for i in range(spec.lits_volumes)]

    slices_per_type = largest_remainder(spec.sheba_slices, spec.sheba_ratio)
    patients_per_type = largest_remainder(spec.sheba_patients, tuple(slices_per_type))
    patient_types: list[str] = []
    patient_slices: list[int] = []
    for t, n_slices, n_patients in zip(LESION_TYPES, slices_per_type, patients_per_type):
        if not n_patients <= n_slices <= 4 * n_patients:
            raise InputError("--size", f"{n_slices} {t} slices cannot be shared by {n_patients} patients with 1-4 slices")
        counts = np.ones(n_patients, int)
        for _ in range(n_slices - n_patients):
            open_ = np.flatnonzero(counts < 4)
            counts[open_[rng.integers(len(open_))]] += 1
        patient_types += [t] * n_patients
        patient_slices += counts.tolist()
    order = rng.permutation(len(patient_types))  # patient ids do not reveal the type
    sheba = []
    for p_index, k in enumerate(order):
        for s in range(patient_slices[k]):
            sheba.append(ShebaCasePlan(f"sheba_{len(sheba) + 1:04d}", f"P{p_index + 1:04d}", p_index, s, patient_types[k]))
    return CorpusPlan(int(seed), size, float(difficulty), tuple(lits), tuple(sheba))


# ----------------------------------------------------------------------------- rendering


@dataclass
class RenderedCase:
    """One rendered image with its masks, the tissue map and the truth record."""

    image: np.ndarray  # int16 HU, (z, y, x)
    liver: np.ndarray  # bool, liver including lesions
    lesion: np.ndarray  # bool
    organ: np.ndarray  # uint8 tissue codes (anatomy module)
    grid: Grid
    lesions: list[Lesion]
    patient: Patient
    acquisition: Acquisition

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        dz, dy, dx = self.grid.spacing
        nz, ny, nx = self.grid.shape
        img.SetSpacing((dx, dy, dz))
        img.SetOrigin((-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, self.grid.z_start))
        return img

    def truth(self) -> dict:
        return {
            "shape_zyx": list(self.grid.shape),
            "spacing_zyx": [round(s, 4) for s in self.grid.spacing],
            "liver_hu": round(self.patient.liver_hu, 1),
            "blood_pool_hu": round(self.patient.blood_pool_hu, 1),
            "contrast_timing": round(self.patient.timing, 3),
            "acquisition": self.acquisition.as_dict(),
            "lesions": [lesion.truth(self.grid) for lesion in self.lesions],
        }


def _finish(patient: Patient, acq: Acquisition, grid: Grid, organ: np.ndarray, lesions: list[Lesion],
            rng: np.random.Generator) -> RenderedCase:
    """Tissue HU, lesions, then the scan. Tissue texture (parenchyma, trabeculae, stool) rides on the
    scan's correlated noise field as a per-tissue gain: one random field instead of two."""
    liver = np.isin(organ, LIVER_CODES)
    hu = patient.hu[organ]
    lesion_mask = np.zeros(organ.shape, bool)
    for lesion in lesions:
        paint_lesion(hu, lesion_mask, liver, lesion, grid)
    gain = np.sqrt(acq.noise_sd**2 + patient.texture**2).astype(np.float32)[organ]
    image = apply_acquisition(hu, acq, rng, gain)
    return RenderedCase(image, liver, lesion_mask, organ, grid, lesions, patient, acq)


def render_lits_volume(plan: CorpusPlan, volume: LitsVolumePlan) -> RenderedCase:
    """Render one LiTS-like volume (its own patient and scan)."""
    spec = SIZES[plan.size]
    rng = _rng(plan.seed, _LITS, volume.index)
    patient = sample_patient(rng)
    acq = sample_acquisition(rng, spec.lits_matrix, plan.difficulty, spec.lits_slice_mm)
    nz = int(rng.integers(spec.lits_slices[0], spec.lits_slices[1] + 1))
    extent = nz * acq.slice_mm
    z_start = -extent / 2 + rng.uniform(-10, 10) + 5.0
    grid = Grid((nz, spec.lits_matrix, spec.lits_matrix), (acq.slice_mm, acq.pixel_mm, acq.pixel_mm), z_start,
                x_shift=rng.uniform(-8, 8), y_shift=rng.uniform(-15, 0))
    organ = render_anatomy(patient, grid)
    min_r = max(3.0, 2.5 * acq.pixel_mm)
    lesions = [sample_lesion(rng, t, patient, plan.difficulty, min_r, r)
               for t, r in zip(volume.lesion_types, volume.radii_mm)]
    lesions.sort(key=lambda lesion: -lesion.radius_mm)  # the large ones first: small ones fit between them
    lesions = place_lesions(rng, lesions, np.isin(organ, LIVER_CODES), grid, min_r, pad_z=True)
    return _finish(patient, acq, grid, organ, lesions, rng)


#: Random stream of the clinical-resolution benchmark volume (not part of any corpus).
_CLINICAL = 5
#: A LiTS-like scan at clinical resolution: 512 x 512 pixels of 0.75 mm, 150 slices of 1 mm
#: (LiTS: 0.56-1.0 mm pixels, median slice spacing about 1 mm), dome to tip of the liver.
CLINICAL_SHAPE = (150, 512, 512)
CLINICAL_SPACING = (1.0, 0.75, 0.75)
CLINICAL_LESIONS = ("cyst", "hemangioma", "metastasis", "metastasis", "metastasis")


def render_clinical_volume(seed: int = 0, slices: int = CLINICAL_SHAPE[0], matrix: int = CLINICAL_SHAPE[1],
                           spacing_zyx: tuple[float, float, float] = CLINICAL_SPACING,
                           lesion_types: tuple[str, ...] = CLINICAL_LESIONS,
                           difficulty: float = DEFAULT_DIFFICULTY) -> RenderedCase:
    """One LiTS-like volume at clinical resolution (the prediction benchmark's input).

    The same generator as the corpus volumes (anatomy, lesions, scanner), on a grid a user's scan
    has rather than the corpus's small training grids; its own random stream, so the corpus's bytes
    do not change. The slab is centred on the liver (which spans about -78..82 mm).
    """
    _check_args(seed, "default", difficulty)
    rng = _rng(seed, _CLINICAL, slices, matrix)
    patient = sample_patient(rng)
    dz, dy, dx = (float(s) for s in spacing_zyx)
    acq = sample_acquisition(rng, matrix, difficulty, (dz, dz))
    acq = Acquisition(dy, dz, acq.blur_mm, acq.noise_sd)
    grid = Grid((int(slices), int(matrix), int(matrix)), (dz, dy, dx), 2.0 - (slices - 1) * dz / 2,
                x_shift=rng.uniform(-8, 8), y_shift=rng.uniform(-15, 0))
    organ = render_anatomy(patient, grid)
    min_r = max(3.0, 2.5 * dy)
    lesions = [sample_lesion(rng, t, patient, difficulty, min_r) for t in lesion_types]
    lesions = place_lesions(rng, lesions, np.isin(organ, LIVER_CODES), grid, min_r, pad_z=True)
    return _finish(patient, acq, grid, organ, lesions, rng)


def write_clinical_volume(out_dir: str | os.PathLike, seed: int = 0, slices: int = CLINICAL_SHAPE[0],
                          matrix: int = CLINICAL_SHAPE[1],
                          spacing_zyx: tuple[float, float, float] = CLINICAL_SPACING) -> dict:
    """Write ``volume-clinical.nii.gz`` / ``segmentation-clinical.nii.gz`` (LiTS layout) and its truth.

    Returns:
        The truth record (paths relative to ``out_dir``, shape, spacing, lesions), also written as
        ``clinical_truth.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    case = render_clinical_volume(seed, slices, matrix, spacing_zyx)
    seg = case.liver.astype(np.uint8)
    seg[case.lesion] = 2
    record = {"volume": "volume-clinical.nii.gz", "segmentation": "segmentation-clinical.nii.gz", "seed": seed,
              **case.truth()}
    for array, name in ((case.image, record["volume"]), (seg, record["segmentation"])):
        write_image(case.to_sitk(array), out / name)
    write_json(record, out / "clinical_truth.json")
    return record


def sheba_patient(plan: CorpusPlan, patient_index: int) -> tuple[Patient, Acquisition, dict[str, float]]:
    """The person and scan shared by all slices of one Sheba-like patient (incl. the body's position)."""
    rng = _rng(plan.seed, _SHEBA_PATIENT, patient_index)
    patient = sample_patient(rng)
    acq = sample_acquisition(rng, SIZES[plan.size].sheba_matrix, plan.difficulty)
    return patient, acq, dict(x_shift=rng.uniform(-8, 8), y_shift=rng.uniform(-15, 0))


def render_sheba_case(plan: CorpusPlan, case: ShebaCasePlan,
                      shared: tuple[Patient, Acquisition, dict[str, float]] | None = None) -> RenderedCase:
    """Render one Sheba-like slice: a liver-level axial slice with one or more lesions of the case's type."""
    patient, acq, shifts = shared if shared is not None else sheba_patient(plan, case.patient_index)
    spec = SIZES[plan.size]
    rng = _rng(plan.seed, _SHEBA_SLICE, case.patient_index, case.slice_index)
    min_r = max(3.0, 2.5 * acq.pixel_mm)
    for _attempt in range(40):
        z = float(rng.uniform(-35, 40))
        grid = Grid((1, spec.sheba_matrix, spec.sheba_matrix), (acq.slice_mm, acq.pixel_mm, acq.pixel_mm), z, **shifts)
        organ = render_anatomy(patient, grid)
        n = lesion_count(rng, case.lesion_type)
        lesions = [sample_lesion(rng, case.lesion_type, patient, plan.difficulty, min_r) for _ in range(n)]
        # centres come from this slice's voxels, so each lesion shows its largest section
        lesions = place_lesions(rng, lesions, np.isin(organ, LIVER_CODES), grid, min_r, pad_z=False)
        if lesions:
            return _finish(patient, acq, grid, organ, lesions, rng)
    raise RuntimeError(f"{case.case_id}: no lesion fits the liver after 40 slice positions")


# ----------------------------------------------------------------------------- writing


def _write(img: sitk.Image, path: Path) -> None:
    sitk.WriteImage(img, str(path), True)


def _write_lits_volume(plan: CorpusPlan, folder: Path, volume: LitsVolumePlan) -> dict:
    """Render and write one volume into the staging folder; return its truth record.

    Runs in a worker process: writing there too keeps gzip off the main process's critical path.
    """
    case = render_lits_volume(plan, volume)
    seg = case.liver.astype(np.uint8)
    seg[case.lesion] = 2
    _write(case.to_sitk(case.image), folder / f"volume-{volume.index}.nii.gz")
    _write(case.to_sitk(seg), folder / f"segmentation-{volume.index}.nii.gz")
    return {"volume": f"LiTS/volume-{volume.index}.nii.gz", "segmentation": f"LiTS/segmentation-{volume.index}.nii.gz",
            "liver_slices": int(case.liver.any(axis=(1, 2)).sum()),
            "lesion_slices": int(case.lesion.any(axis=(1, 2)).sum()), **case.truth()}


def source_target_census(truth: dict, folds: int = TARGET_FOLDS) -> dict:
    """Lesion-bearing source slices against the target's training slices per fold, from ``phantom_truth.json``.

    A LiTS slice holding liver is one 2-D case of Dataset502 (``nnunet_joint_convert_lits``), and its
    crop keeps every lesion, so the volumes' slices holding lesion label are Dataset502's cases
    holding lesion. A Sheba fold trains on ``(folds - 1) / folds`` of the slices.
    """
    lesion = sum(record["lesion_slices"] for record in truth["lits"])
    training = len(truth["sheba"]) * (folds - 1) / folds
    return {"lits_volumes": len(truth["lits"]), "lits_liver_slices": sum(r["liver_slices"] for r in truth["lits"]),
            "lits_lesion_slices": lesion, "sheba_slices": len(truth["sheba"]),
            "sheba_training_slices_per_fold": round(training, 1), "ratio": round(lesion / training, 2)}


def _write_sheba_patient(plan: CorpusPlan, folder: Path, cases: tuple[ShebaCasePlan, ...]) -> list[dict]:
    """Render and write one patient's slices and masks; return their truth records (with csv paths)."""
    records = []
    for case_plan, case in zip(cases, render_sheba_patient(plan, cases)):
        paths = (f"slices/{case_plan.case_id}.nii.gz", f"masks/{case_plan.case_id}_lesion.nii.gz",
                 f"masks/{case_plan.case_id}_liver.nii.gz")
        for array, rel in zip((case.image, case.lesion.astype(np.uint8), case.liver.astype(np.uint8)), paths):
            _write(case.to_sitk(array), folder / rel)
        records.append({"case_id_": case_plan.case_id, "paths_": paths, "case_id": case_plan.case_id,
                        "patient_id": case_plan.patient_id, "lesion_type": case_plan.lesion_type,
                        "image": f"Sheba/{paths[0]}", **case.truth()})
    return records


def render_sheba_patient(plan: CorpusPlan, cases: tuple[ShebaCasePlan, ...]) -> list[RenderedCase]:
    """Render all slices of one patient (they share the patient's anatomy and scan)."""
    shared = sheba_patient(plan, cases[0].patient_index)
    return [render_sheba_case(plan, case, shared) for case in cases]


def _map(func, items: list, workers: int) -> Iterator:
    """``map`` in order, over a process pool when ``workers > 1`` (items are independent and seeded); the
    workers die with this process, ``kill -9`` included (:func:`~nnunet_joint.process.tied_pool`)."""
    if workers <= 1 or len(items) < 2:
        yield from map(func, items)
        return
    pool = tied_pool(workers)
    try:
        yield from pool.map(func, items, chunksize=max(1, len(items) // (4 * workers)))
    finally:
        pool.shutdown(cancel_futures=True)


def generate_corpus(out_dir: str | os.PathLike, seed: int = 0, size: str = "default",
                    difficulty: float = DEFAULT_DIFFICULTY, workers: int | None = None) -> dict:
    """Generate the phantom corpus under ``out_dir`` (see the module docstring for the layout).

    ``LiTS/`` and ``Sheba/`` are each built in a temporary folder and renamed when complete, and
    ``phantom_truth.json`` is written last, so a killed run leaves no half corpus that looks whole.
    ``workers`` processes render in parallel (default: up to 2); the bytes do not depend on it.

    Returns:
        A summary: paths, counts per lesion type, and the generation time in seconds.
    """
    t0 = time.perf_counter()
    plan = plan_corpus(seed, size, difficulty)
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    truth: dict = {
        "generator": "nnunet_joint.phantom",
        "generator_version": GENERATOR_VERSION,
        "seed": plan.seed,
        "size": plan.size,
        "difficulty": plan.difficulty,
        "labels": {"lits": {"0": "background", "1": "liver", "2": "tumour"}, "sheba_lesion": {"0": "background", "1": "lesion"}},
        "lits": [],
        "sheba": [],
    }

    with atomic_path(out / "LiTS") as tmp:
        tmp.mkdir()
        truth["lits"] = list(_map(partial(_write_lits_volume, plan, tmp), list(plan.lits), workers))

    with atomic_path(out / "Sheba") as tmp:
        (tmp / "slices").mkdir(parents=True)
        (tmp / "masks").mkdir()
        patients = [tuple(c for c in plan.sheba if c.patient_index == i)
                    for i in sorted({c.patient_index for c in plan.sheba})]
        records = [r for rs in _map(partial(_write_sheba_patient, plan, tmp), patients, workers) for r in rs]
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["case_id", "patient_id", "lesion_type", "image", "mask", "liver_mask"])
        for record in records:
            writer.writerow([record.pop("case_id_"), record["patient_id"], record["lesion_type"], *record.pop("paths_")])
        truth["sheba"] = records
        (tmp / "cases.csv").write_text(rows.getvalue())

    write_json(truth, out / "phantom_truth.json")
    seconds = time.perf_counter() - t0
    return {
        "census": source_target_census(truth),
        "out_dir": str(out),
        "lits_dir": str(out / "LiTS"),
        "sheba_dir": str(out / "Sheba"),
        "truth": str(out / "phantom_truth.json"),
        "lits_volumes": len(plan.lits),
        "sheba_slices": len(plan.sheba),
        "sheba_patients": len({c.patient_id for c in plan.sheba}),
        "sheba_type_counts": plan.sheba_type_counts(),
        "seconds": round(seconds, 2),
    }
