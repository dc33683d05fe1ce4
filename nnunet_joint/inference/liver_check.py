"""Is stage 1's liver a liver? Size and HU criteria before stage 2 runs on its crop.

A liver model shown a scan without liver (all air, a head, the pelvis) still labels something;
stage 2 on that crop would type "lesions" in air. Stage 1's liver (its pieces, as the crop
takes them) is accepted as liver only when

* its largest cross-section in one slice is at least :data:`MIN_LIVER_AREA_MM2` (5 cm²; the
  liver's cross-section at the level of a lesion is typically 50-250 cm², a few cm² at its tip),
  and
* the median HU of its voxels lies in :data:`LIVER_HU_RANGE` (-70..300 HU: liver parenchyma is
  40-70 HU unenhanced, 90-130 HU portal-venous, down to about -40 HU in severe steatosis; fat is
  about -100 HU, air -1000 HU, bone 400 HU and more).

Otherwise the cascade reports no liver (``lesions.json`` says why, stderr too) and writes no lesion.
"""

from __future__ import annotations

import numpy as np

MIN_LIVER_AREA_MM2 = 500.0
LIVER_HU_RANGE = (-70.0, 300.0)


def implausible_liver(liver: np.ndarray, hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> str | None:
    """Why ``liver`` (bool, ``(z, y, x)``) is not a plausible liver, or ``None``.

    Args:
        liver: stage 1's liver (the pieces the cascade keeps, :func:`nnunet_joint.crops.roi_components`).
        hu: the CT in HU on the same grid.
        spacing_zyx: voxel size in mm, array order.
    """
    if not liver.any():
        return "stage 1 segmented no liver voxel"
    pixel_mm2 = float(spacing_zyx[1]) * float(spacing_zyx[2])
    area = float(liver.reshape(liver.shape[0], -1).sum(axis=1).max()) * pixel_mm2
    median_hu = float(np.median(hu[liver]))
    problems = []
    if not LIVER_HU_RANGE[0] <= median_hu <= LIVER_HU_RANGE[1]:
        problems.append(f"median {median_hu:.0f} HU (a liver has {LIVER_HU_RANGE[0]:.0f}..{LIVER_HU_RANGE[1]:.0f} HU)")
    if area < MIN_LIVER_AREA_MM2:
        problems.append(f"largest cross-section {area:.0f} mm² (a liver has at least {MIN_LIVER_AREA_MM2:.0f} mm²)")
    if not problems:
        return None
    return f"no plausible liver: stage 1's liver ({int(liver.sum())} voxels) has {' and '.join(problems)}"
