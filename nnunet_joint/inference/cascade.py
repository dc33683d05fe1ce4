"""The two-stage cascade on one checked CT image, and the files it writes.

Stage 1 segments the liver on the whole image; its pieces (every connected component of at least
:data:`~nnunet_joint.crops.MIN_COMPONENT_FRACTION` of the largest), grown by the converter's
margin (:mod:`nnunet_joint.crops`, the rule that cropped the training data), crop the image;
stage 2 (joint or Y-Net model) runs on the crop; everything is pasted back into the input's grid
and combined by :func:`~nnunet_joint.crops.cascade_labels` (stage 2's lesions, stage 1's liver),
the rule the full-slice scores use too. A stage-1 liver that is no plausible liver (too
small, or not liver HU: :mod:`~nnunet_joint.inference.liver_check`) stops the cascade: no lesion is
written.

On a volume with thin slices, a 2-D stage 1 predicts only slices about
:data:`~nnunet_joint.names.COARSE_SPACING_MM` apart (always the first and the last) and
interpolates linearly between them (:func:`liver_from_sampled_slices`): the liver mask needs no
1 mm slices any more than it needs sub-millimetre pixels (:class:`~nnunet_joint.planning.nnUNetPlannerCoarse`,
TotalSegmentator's fast models at 3 mm), and stage 1 was most of a scan's prediction time.
A single slice, the converter's cascade crops and the study's scores (slices, all of them) are
unchanged by construction; stage 2 always sees every slice.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from nnunet_joint import LESION_TYPES, __version__
from nnunet_joint.crops import CropBox, cascade_labels, roi_bbox, roi_components
from nnunet_joint.inference.inputs import CTImage
from nnunet_joint.inference.lesions import analyse_lesions
from nnunet_joint.inference.liver_check import implausible_liver
from nnunet_joint.labels import FIRST_LESION_LABEL, JOINT_LABELS, LIVER, type_label
from nnunet_joint.inference.models import CascadeModel, Prediction
from nnunet_joint.inference.overlays import write_overlays
from nnunet_joint.io import write_image_file
from nnunet_joint.names import COARSE_SPACING_MM, slice_spacing_zyx


@dataclass
class CascadeResult:
    """Cascade output on the input grid (array order ``(z, y, x)``).

    Attributes:
        liver: 0/1 stage-1 liver (its pieces: :func:`~nnunet_joint.crops.roi_components`).
        labels: pixel-wise joint labels before the per-lesion vote.
        type_probabilities: ``(len(LESION_TYPES), *crop.shape)`` type probabilities on the stage-2
            crop (every lesion voxel lies in it), ``None`` when no liver was found. Kept on the crop,
            not the whole image: three float32 volumes of a 512 x 512 x 300 scan would be 0.9 GB.
        crop: the stage-2 crop, ``None`` when no liver was found.
        no_liver: why no liver was accepted (:mod:`~nnunet_joint.inference.liver_check`), else ``None``.
        liver_slices_predicted: how many slices stage 1 predicted (:func:`stage1_slices`; the others
            interpolated).
    """

    liver: np.ndarray
    labels: np.ndarray
    type_probabilities: np.ndarray | None
    crop: CropBox | None
    no_liver: str | None = None
    liver_slices_predicted: int | None = None


def _crop_box(ct: CTImage, box: tuple[slice, ...]) -> CropBox:
    size = ct.array.shape
    return CropBox(tuple(int(s.start) for s in box), tuple(int(s.stop) for s in box), tuple(size),
                   tuple(reversed(ct.spacing_zyx)), (0.0,) * 3, tuple(np.eye(3).ravel()))


def lesion_types_from_prediction(model: CascadeModel, segmentation: np.ndarray, probabilities: np.ndarray,
                                 slice_type_probabilities: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Joint labels (0/1/2+type) and per-voxel type probabilities from a stage-2 model's output.

    Joint model: the voxel's own label and its softmax over the three type channels, renormalised.
    Y-Net: lesion voxels take their slice's head prediction (the head types the slice).
    """
    labels = np.zeros(segmentation.shape, dtype=np.uint8)
    labels[segmentation == model.labels.get("liver", -1)] = LIVER
    if model.is_joint:
        channels = [model.channel(t) for t in LESION_TYPES]
        type_probs = probabilities[channels]
        for i, t in enumerate(LESION_TYPES):
            labels[segmentation == model.labels[t]] = type_label(i)
    elif model.is_ynet and slice_type_probabilities is not None:
        type_probs = slice_type_probabilities
        lesion = segmentation == model.labels["lesion"]
        labels[lesion] = FIRST_LESION_LABEL + np.argmax(type_probs, axis=0)[lesion]
    else:
        raise ValueError(f"{model.folder}: stage-2 model needs labels {list(LESION_TYPES)} (joint) or 'lesion' "
                         "plus a classification head (Y-Net)")
    total = type_probs.sum(axis=0, keepdims=True)
    type_probs = np.divide(type_probs, total, out=np.full_like(type_probs, 1 / len(LESION_TYPES)), where=total > 0)
    return labels, type_probs.astype(np.float32, copy=False)


def model_spacing(ct: CTImage) -> tuple[float, float, float]:
    """The spacing nnU-Net is given: a single slice gets the converters' 2-D out-of-plane spacing
    (:func:`nnunet_joint.names.slice_spacing_zyx`), so a slice stored as 1 x H x W with a small slice
    thickness is predicted as the training crops of the same slice were stored, never as a thin volume.
    """
    if ct.is_slice:
        return slice_spacing_zyx(ct.spacing_zyx[1:])
    return ct.spacing_zyx


Timer = Callable[[str], contextlib.AbstractContextManager]


def _no_timer(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def predict_in_slabs(model: CascadeModel, image_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                     consume: Callable[[tuple[slice, ...], Prediction], None], probabilities: bool = True,
                     timer: Timer | None = None, label: str = "", progress: bool = False) -> None:
    """``model.predict`` on slabs of ``model.settings.slab_slices`` slices; ``consume(where, prediction)``
    gets each slab's prediction and where it lies in ``image_zyx`` (array-order slices).

    A 2-D model predicts every slice on its own (nnU-Net keeps the spacing between slices and
    tiles each slice), so slabs give its output at a fraction of the memory. What can differ is
    float rounding where nnU-Net's resampling is 3-D (spacing less than 3x anisotropic) and its
    crop to the non-zero region, which is taken per slab (CT has no zero background, so it
    keeps every slice whole). A 3-D model predicts the whole image at once.
    """
    timer = timer or _no_timer
    axis = model.slab_axis
    size = 1 if axis is None else image_zyx.shape[axis]
    step = size if axis is None else max(1, int(model.settings.slab_slices))
    from tqdm import tqdm

    with tqdm(total=size, desc=label, unit="slice", disable=not progress, leave=False) as bar:
        for start in range(0, size, step):
            where = [slice(None)] * image_zyx.ndim
            if axis is not None:
                where[axis] = slice(start, min(size, start + step))
            where_t = tuple(where)
            prediction = model.predict(image_zyx[where_t], spacing_zyx, probabilities=probabilities,
                                       timer=lambda name: timer(f"{label}: {name}"))
            with timer(f"{label}: collect"):  # e.g. stage 2's per-voxel lesion types
                consume(where_t, prediction)
            bar.update(min(size, start + step) - start)


def sampled_slices(n_slices: int, slice_spacing_mm: float, max_gap_mm: float | None) -> np.ndarray:
    """Indices of the slices stage 1 predicts: every ``k``-th, ``k`` the largest step that keeps
    neighbours at most ``max_gap_mm`` apart (at least 1), plus the last slice so that nothing is
    extrapolated. ``max_gap_mm`` ``None`` or 0: every slice.
    """
    step = 1
    if max_gap_mm and max_gap_mm > 0 and slice_spacing_mm > 0:
        step = max(1, int(min(n_slices, np.floor(max_gap_mm / slice_spacing_mm + 1e-6))))  # inf: first and last
    indices = list(range(0, n_slices, step))
    if indices[-1] != n_slices - 1:
        indices.append(n_slices - 1)
    return np.asarray(indices, dtype=np.int64)


def liver_from_sampled_slices(margins: np.ndarray, indices: np.ndarray, n_slices: int) -> np.ndarray:
    """Stage 1's foreground on every slice from its margins on the sampled ones.

    ``margins[i]`` is ``max(p_liver, p_other foreground) - p_background`` on slice ``indices[i]``
    (nnU-Net's argmax is foreground exactly where it is positive); between two sampled slices the margin
    is interpolated linearly, which for a two-label liver model is linear interpolation of the
    probabilities followed by nnU-Net's argmax.
    """
    foreground = np.zeros((n_slices, *margins.shape[1:]), dtype=bool)
    foreground[indices[-1]] = margins[-1] > 0
    for i, (a, b) in enumerate(zip(indices[:-1], indices[1:])):
        for z in range(a, b):  # each interval without its end, which the next one (or the line above) covers
            w = (z - a) / (b - a)
            foreground[z] = (1 - w) * margins[i] + w * margins[i + 1] > 0
    return foreground


def stage1_slices(liver_model: CascadeModel, n_slices: int, slice_spacing_mm: float,
                  slice_gap_mm: float | None) -> np.ndarray:
    """The slices :func:`liver_foreground` predicts: :func:`sampled_slices` for a 2-D softmax model whose
    slices run along the first array axis, with background its first channel; every slice otherwise
    (a 3-D model, a transposed one, a region-based model's sigmoids, which have no background channel)."""
    can_sample = (liver_model.slab_axis == 0 and liver_model.label_values[0] == 0
                  and not liver_model.predictor.label_manager.has_regions)
    return sampled_slices(n_slices, slice_spacing_mm, slice_gap_mm if can_sample else None)


def liver_foreground(liver_model: CascadeModel, image_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                     indices: np.ndarray, timer: Timer | None = None, progress: bool = False) -> np.ndarray:
    """Stage 1: where the liver model's argmax is not background, on every slice of ``image_zyx``.

    The model predicts the slices ``indices`` (:func:`stage1_slices`); the others are interpolated
    (:func:`liver_from_sampled_slices`). With every slice in ``indices``, nnU-Net's label map as it is.
    """
    timer = timer or _no_timer
    shape = image_zyx.shape
    if len(indices) == shape[0]:
        foreground = np.zeros(shape, dtype=bool)

        def liver_slab(where: tuple[slice, ...], prediction: Prediction) -> None:
            foreground[where] = prediction.segmentation > 0  # liver (and tumour, for a LiTS-style 3-label model)

        predict_in_slabs(liver_model, image_zyx, spacing_zyx, liver_slab, probabilities=False, timer=timer,
                         label="stage 1 (liver)", progress=progress)
        return foreground
    margins = np.empty((len(indices), *shape[1:]), dtype=np.float32)

    def liver_margins(where: tuple[slice, ...], prediction: Prediction) -> None:
        probs = prediction.probabilities
        margins[where[0]] = probs[1:].max(axis=0) - probs[0]

    # the slices' own spacing: a 2-D model predicts each slice alone, so a sampled slice gets exactly
    # the numbers it gets when every slice is predicted (same resampling decisions)
    predict_in_slabs(liver_model, image_zyx[indices], spacing_zyx, liver_margins, timer=timer,
                     label="stage 1 (liver)", progress=progress)
    with timer("stage 1 (liver): between sampled slices"):
        return liver_from_sampled_slices(margins, indices, shape[0])


def run_cascade(ct: CTImage, liver_model: CascadeModel, lesion_model: CascadeModel,
                timer: Timer | None = None, progress: bool = False,
                liver_slice_gap_mm: float | None = COARSE_SPACING_MM) -> CascadeResult:
    """Stage 1 on the whole image, stage 2 on the liver crop, both back on the input grid.

    Both stages run slab by slab (:func:`predict_in_slabs`). Stage 1 keeps only its label map
    (nnU-Net's argmax of the resampled logits, no softmax volume); stage 2 runs on the liver's slab
    and box only and its type probabilities stay on that crop. ``timer(name)`` (e.g. a
    :class:`~nnunet_joint.inference.timing.StageTimer`) times each step; ``progress`` shows a
    progress bar per stage. ``liver_slice_gap_mm``: a 2-D stage 1 on a volume predicts slices at most
    this far apart and interpolates between them (:func:`sampled_slices`; ``None`` or 0: every slice).
    """
    timer = timer or _no_timer
    spacing = model_spacing(ct)
    shape = ct.array.shape
    indices = stage1_slices(liver_model, shape[0], spacing[0], liver_slice_gap_mm)
    foreground = liver_foreground(liver_model, ct.array, spacing, indices, timer, progress)
    predicted = len(indices)
    with timer("crop"):
        liver = roi_components(foreground) if foreground.any() else foreground
        no_liver = implausible_liver(liver, ct.array, ct.spacing_zyx)
        if no_liver is not None:  # stage 2 does not run: no lesion in air
            return CascadeResult(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), None, None, no_liver,
                                 predicted)
        # liver holds only the kept pieces already: min_fraction 0 takes them all without labelling again
        box = _crop_box(ct, roi_bbox(liver, ct.spacing_zyx, lesion_model.crop_margin_mm, min_fraction=0))
        crop = box.crop_array(ct.array)
    labels_crop = np.zeros(crop.shape, dtype=np.uint8)
    probs_crop = np.empty((len(LESION_TYPES), *crop.shape), dtype=np.float32)

    def lesion_slab(where: tuple[slice, ...], prediction: Prediction) -> None:
        labels_crop[where], probs_crop[(slice(None), *where)] = lesion_types_from_prediction(
            lesion_model, prediction.segmentation, prediction.probabilities, prediction.slice_type_probabilities)

    predict_in_slabs(lesion_model, crop, spacing, lesion_slab, timer=timer, label="stage 2 (lesions)",
                     progress=progress)
    with timer("paste back"):
        labels = cascade_labels(box.paste(labels_crop, fill=0), liver)
    return CascadeResult(liver.astype(np.uint8), labels, probs_crop, box, None, predicted)


def image_like(array_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A label image with exactly the reference's size, spacing, origin and direction."""
    array = array_zyx[0] if reference.GetDimension() == 2 else array_zyx
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.uint8)))
    image.CopyInformation(reference)
    return image


def write_case_outputs(ct: CTImage, result: CascadeResult, out_dir: Path, models: dict[str, Any],
                       overlays: bool = False, timer: Timer | None = None,
                       progress: bool = False) -> list[dict[str, Any]]:
    """Write ``liver.nii.gz``, ``lesions.nii.gz``, ``lesions.json`` and, with ``overlays``, ``overlays/``
    into ``out_dir`` (label maps first: the overlays only draw them).

    ``out_dir`` is inside the caller's temporary output folder, so plain writes are atomic as a whole.
    """
    timer = timer or _no_timer
    out_dir.mkdir(parents=True, exist_ok=True)
    with timer("lesion analysis"):
        typed, lesions = analyse_lesions(result.labels, ct.image, result.type_probabilities,
                                         None if result.crop is None else result.crop.slices)
    with timer("write NIfTI"):  # OSError in words (full disk)
        write_image_file(image_like(result.liver, ct.image), out_dir / "liver.nii.gz")
        write_image_file(image_like(typed, ct.image), out_dir / "lesions.nii.gz")
    pngs = []
    if overlays:
        with timer("overlays"):
            pngs = write_overlays(ct.array, typed, ct.spacing_zyx, out_dir / "overlays", lesions, ct.source.name,
                                  progress=progress) if lesions else []
    report = {
        "input": str(ct.source),
        "kind": "slice" if ct.is_slice else "volume",
        "size": list(ct.image.GetSize()),
        "spacing": list(ct.image.GetSpacing()),
        "origin": list(ct.image.GetOrigin()),
        "direction": list(ct.image.GetDirection()),
        "labels": dict(JOINT_LABELS),
        "liver_found": bool(result.liver.any()),
        "no_liver_reason": result.no_liver,
        "liver_voxels": int(result.liver.sum()),
        "liver_slices_predicted": result.liver_slices_predicted,  # stage 1's sampled slices; the rest interpolated
        "crop": None if result.crop is None else {"start_zyx": list(result.crop.start),
                                                  "stop_zyx": list(result.crop.stop)},
        "typing": "each connected lesion (full connectivity, 3-D for volumes) takes the majority type of its "
                  "voxels; probabilities are the mean over its voxels of the type probabilities",
        "models": models,
        "nnunet_joint_version": __version__,
        "lesions": lesions,
        "overlays": [str(p.relative_to(out_dir)) for p in pngs],
    }
    (out_dir / "lesions.json").write_text(json.dumps(report, indent=2) + "\n")
    return lesions
