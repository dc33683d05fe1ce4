"""What every converter shares: dataset naming, atomic staging of raw datasets, dataset.json, splits.

A converted dataset is written into a hidden temporary folder beside its destination in
``nnUNet_raw`` and renamed only when every case has been written (nothing half-written is ever visible), so a
failed or killed conversion never leaves a ``DatasetXXX_Name`` folder that nnU-Net would pick up.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_joint.errors import InputError, warn
from nnunet_joint.io import atomic_path, write_image_file, write_json
from nnunet_joint.names import dataset_folder, slice_spacing_zyx

FILE_ENDING = ".nii.gz"
_NAME_RE = re.compile(r"^[A-Za-z0-9]+$")
#: nnU-Net builds file names from case identifiers; keep them to characters every tool accepts.
CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: nnU-Net and we add up to ~30 characters to a case id (``_0000.nii.gz``, ``_seg.b2nd``, temporary
#: names); file systems allow 255 bytes per name.
CASE_ID_MAX_LENGTH = 100


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name`` as nnU-Net expects it."""
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(None, f"dataset id {dataset_id} is outside 1..999 (nnU-Net uses three digits)")
    if not _NAME_RE.match(name):
        raise InputError(None, f"dataset name {name!r} must be letters and digits only")
    return dataset_folder(dataset_id, name)


def resolve_root(arg: str | os.PathLike | None, env_var: str, required: bool) -> Path | None:
    """The folder given on the command line, else the nnU-Net environment variable; refuse a file there."""
    value = arg if arg is not None else os.environ.get(env_var)
    if not value:
        if required:
            raise InputError(None, f"no output folder: pass --raw-root or set {env_var}")
        return None
    path = Path(value)
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                what = "--raw-root" if env_var == "nnUNet_raw" else "--preprocessed-root"
                source = what if arg is not None else f"${env_var}"
                raise InputError(folder, f"is not a folder ({source} {path} must be a folder or a new path)")
            break
    return path


def check_target_free(root: Path, folder_name: str, overwrite: bool) -> Path:
    """Refuse to clobber an existing dataset, or to create a second folder with the same id.

    nnU-Net finds datasets by their three-digit id; two folders ``Dataset503_*`` make every
    ``-d 503`` ambiguous, so another name with our id is always an error.
    """
    dest = root / folder_name
    prefix = folder_name.split("_", 1)[0] + "_"
    if root.is_dir():
        for other in sorted(root.iterdir()):
            if other.name.startswith(prefix) and other.name != folder_name:
                raise InputError(other, f"another dataset already uses id {prefix[7:10]}; choose a different id")
    if dest.exists() and not overwrite:
        raise InputError(dest, "already exists (pass --overwrite to replace it)")
    return dest


@contextlib.contextmanager
def staged_datasets(destinations: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield one empty temporary folder per destination; all are renamed into place on success.

    On any exception every temporary folder is removed and the destinations stay as they were.
    """
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(d)) for d in destinations]
        for tmp in tmps:
            (tmp / "imagesTr").mkdir(parents=True)
            (tmp / "labelsTr").mkdir()
        yield tmps


def write_dataset_json(
    folder: Path,
    labels: Mapping[str, int],
    num_training: int,
    name: str,
    description: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write nnU-Net v2's ``dataset.json`` (CT channel, NIfTI) plus keys nnU-Net ignores."""
    content: dict[str, Any] = {
        "name": name,
        "description": description,
        "channel_names": {"0": "CT"},
        "labels": dict(labels),
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "SimpleITKIO",
    }
    content.update(extra or {})
    write_json(content, folder / "dataset.json")


def storage_image(image: sitk.Image) -> sitk.Image:
    """CT as int16 when the values are whole HU that fit (half the disk of float32), else float32."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype == np.int16:
        return image
    if np.all(np.isfinite(array)) and array.min() >= -32768 and array.max() <= 32767 and np.all(array == np.round(array)):
        return sitk.Cast(image, sitk.sitkInt16)
    return sitk.Cast(image, sitk.sitkFloat32)


def as_nnunet_2d(image: sitk.Image) -> sitk.Image:
    """Give a 1 x H x W image nnU-Net's 2-D out-of-plane spacing (a copy; the input is untouched).

    The spacing is :func:`nnunet_joint.names.slice_spacing_zyx`, the one prediction gives the same slice.
    """
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = sitk.Image(image)
        sx, sy, _ = image.GetSpacing()
        image.SetSpacing(tuple(reversed(slice_spacing_zyx((sy, sx)))))
    return image


#: A lesion mask (LiTS: the tumour label) with more than this share of its pixels outside its liver's
#: outline is refused: "mostly inside" means more than half inside. A lesion centred inside the liver,
#: at an edge that is straight on the lesion's scale, has at most half its area beyond the edge,
#: however small it is; swapped masks or a lesion covering the slice lie far beyond (docs/limits.md).
MAX_LESION_OUTSIDE_SHARE = 0.5


def liver_outline(liver: np.ndarray) -> np.ndarray:
    """The convex outline of the liver on each axial slice of ``liver`` (``z, y, x``).

    The outline fills the notches and holes lesions make: a lesion replacing liver at its edge, or a
    liver mask drawn around its lesions rather than over them (LiTS's liver label 1), is inside it.
    scikit-image's ``convex_hull_image`` on the slice's liver box (pixels count by their area).
    """
    from skimage.morphology import convex_hull_image

    outline = np.zeros(liver.shape, dtype=bool)
    for z in range(liver.shape[0]):
        ys, xs = np.nonzero(liver[z])
        if ys.size:
            box = (z, slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            outline[box] = convex_hull_image(liver[box])
    return outline


def lesion_placement_problem(lesion: np.ndarray, liver: np.ndarray, lesion_name: str, liver_name: str,
                             unit: str) -> str | None:
    """Why ``lesion`` cannot be the lesion of ``liver`` (boolean ``z, y, x`` arrays on one grid), or ``None``.

    Measured on the slices holding lesion against the liver's outline (:func:`liver_outline`):

    * more than :data:`MAX_LESION_OUTSIDE_SHARE` of the lesion outside it: swapped lesion and liver
      masks, a lesion covering the slice, the mask of another organ;
    * more lesion than outline: a lesion larger than its liver, i.e. swapped masks whose lesion covers
      most of its liver (then under half of the "lesion" may lie outside the "liver").

    A lesion crossing the liver's edge by a few pixels passes. The message prints the share outside.
    """
    slices = np.flatnonzero(lesion.reshape(lesion.shape[0], -1).any(axis=1))
    lesion, outline = lesion[slices], liver_outline(liver[slices])
    total = int(np.count_nonzero(lesion))
    outside = int(np.count_nonzero(lesion & ~outline))
    outline_size = int(np.count_nonzero(outline))
    share = f"{100 * outside / total:.1f}% of it ({outside} of {total} {unit}) outside the outline of the {liver_name}"
    if outside > MAX_LESION_OUTSIDE_SHARE * total:
        return (f"{lesion_name} is not mostly inside its liver: {share}, more than "
                f"{MAX_LESION_OUTSIDE_SHARE:.0%} (lesion and liver swapped, or the mask of something else?)")
    if total > outline_size:
        return (f"{lesion_name} is larger than its liver: {total} {unit} against {outline_size} inside the outline "
                f"of the {liver_name} on the same slices, {share} (lesion and liver swapped?)")
    return None


def label_image(labels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label map on ``reference``'s grid (same size, spacing, origin, direction)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.CopyInformation(reference)
    return image


def write_case(folder: Path, case_id: str, image: sitk.Image, labels: sitk.Image) -> None:
    """Write ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz`` into a staged dataset."""
    write_image_file(image, folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}", True)
    write_image_file(labels, folder / "labelsTr" / f"{case_id}{FILE_ENDING}", True)


#: Splits tried (seed, then seeds derived from it) before refusing folds that cannot be stratified.
SPLIT_ATTEMPTS = 100


def make_splits(
    case_ids: Sequence[str],
    groups: Sequence[str],
    strata: Sequence[str],
    folds: int,
    seed: int,
    where: str | os.PathLike | None = None,
) -> list[dict[str, list[str]]]:
    """Cross-validation folds that never split a group (patient), stratified by ``strata`` (type).

    Uses scikit-learn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)``; the result has
    nnU-Net's ``splits_final.json`` shape: one ``{"train": [...], "val": [...]}`` per fold.
    ``where`` (the case list) is named in errors.

    A stratum (lesion type) with fewer patients than folds is refused: some fold would validate
    none of it, and train on none of it when all its cases share a patient. When the split leaves a
    type out of a fold that could hold it (scikit-learn's heuristic, with patients of several
    types), up to :data:`SPLIT_ATTEMPTS` seeds derived from ``seed`` are tried; if none validates
    every type in every fold, the ``seed`` split is kept and one ``warning:`` line on stderr says
    which folds lack which type.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups))
    if folds < 2:
        raise InputError(where, f"--folds must be at least 2, got {folds}")
    if n_groups < folds:
        raise InputError(where, f"{n_groups} patient(s) cannot fill {folds} folds split by patient")
    # Split by patient, a type needs at least one patient per fold, or some fold validates none of
    # it (its recall undefined, the table silently missing a class): refuse rather than split.
    patients_of: dict[str, set[str]] = {}
    for group, stratum in zip(groups, strata):
        patients_of.setdefault(stratum, set()).add(group)
    cases_of = Counter(strata)
    for stratum in sorted(patients_of, key=lambda s: (len(patients_of[s]), s)):
        if len(patients_of[stratum]) < folds:
            raise InputError(
                where, f"lesion type {stratum!r} has {cases_of[stratum]} case(s) from {len(patients_of[stratum])} "
                       f"patient(s), fewer than {folds} folds: folds split by patient cannot be stratified (a fold "
                       f"would validate no {stratum}); add {stratum} patients or use fewer --folds")
    ids = np.asarray(case_ids)
    stratum_of = dict(zip(case_ids, strata))
    first: tuple[list[dict[str, list[str]]], list[str]] | None = None
    for attempt in range(SPLIT_ATTEMPTS):
        # scikit-learn's grouping heuristic can leave a type out of a fold that could hold it; then
        # seeds derived from ``seed`` are tried in a fixed order (the same input gives the same folds).
        state = seed if attempt == 0 else int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=state)
        splits = []
        for train_idx, val_idx in splitter.split(np.zeros(len(ids)), np.asarray(strata), np.asarray(groups)):
            splits.append({"train": sorted(ids[train_idx].tolist()), "val": sorted(ids[val_idx].tolist())})
        lacking = [f"fold {i} validates no {' or '.join(missing)}"
                   for i, split in enumerate(splits)
                   if (missing := sorted(set(strata) - {stratum_of[c] for c in split["val"]}))]
        if not lacking:
            return splits
        first = first or (splits, lacking)
    assert first is not None
    splits, lacking = first
    warn(where, "no split by patient found in which every fold validates every lesion type (patients with several "
                f"types constrain it): {'; '.join(lacking)}")
    return splits


def write_splits(splits: list[dict[str, list[str]]], folders: Sequence[Path]) -> None:
    """Write ``splits_final.json`` into each folder (created if needed), atomically."""
    for folder in folders:
        write_json(splits, Path(folder) / "splits_final.json")
