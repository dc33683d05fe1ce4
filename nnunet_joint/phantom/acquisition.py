"""How the scanner turns the ideal HU map into a stored image: spacing, blur, noise, int16.

Per patient: pixel spacing (a real 512-matrix 0.7-0.9 mm pixel, scaled to the phantom's grid),
slice thickness, the in-plane point-spread function (partial volume) and the noise level.
Thinner slices and smaller pixels are noisier, as on a real scanner; difficulty scales the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: The int16 range a CT scanner stores (air is about -1000, the floor is -1024).
HU_FLOOR, HU_CEIL = -1024, 3071


@dataclass(frozen=True)
class Acquisition:
    """Scanner settings of one patient's scan."""

    pixel_mm: float
    slice_mm: float
    blur_mm: float  # sigma of the in-plane Gaussian point-spread function
    noise_sd: float  # HU, standard deviation of the noise in a uniform region

    def as_dict(self) -> dict:
        return {k: round(float(v), 3) for k, v in self.__dict__.items()}


def sample_acquisition(rng: np.random.Generator, matrix: int, difficulty: float,
                       slice_mm: tuple[float, float] = (2.5, 5.0)) -> Acquisition:
    """Draw scanner settings for a ``matrix`` x ``matrix`` grid.

    The field of view of a 512 matrix at 0.7-0.9 mm is kept, so smaller grids get larger pixels.
    """
    pixel = rng.uniform(0.7, 0.9) * 512 / matrix
    thickness = float(rng.uniform(*slice_mm))
    blur = rng.uniform(0.8, 1.3) * (0.75 + 0.25 * difficulty)
    noise = rng.uniform(9, 15) * np.sqrt(5.0 / thickness) * np.sqrt(1.6 / pixel) * (0.5 + 0.5 * difficulty)
    return Acquisition(float(pixel), thickness, float(blur), float(noise))


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise, smoothed in-plane (CT noise and tissue texture are not white)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    sigma = (0.0,) * (len(shape) - 2) + (sigma_px, sigma_px)
    field = ndimage.gaussian_filter(white, sigma)
    # std of white noise after a separable Gaussian: product of the 1-D kernels' L2 norms
    delta = np.zeros(64, np.float32)
    delta[32] = 1.0
    k = ndimage.gaussian_filter1d(delta, sigma_px)
    return field / (float(np.sqrt(np.sum(k * k))) ** 2)


def apply_acquisition(hu: np.ndarray, acq: Acquisition, rng: np.random.Generator,
                      noise_gain: np.ndarray | None = None) -> np.ndarray:
    """Blur (partial volume), add noise, round and clip to int16 HU.

    ``hu`` is (z, y, x) on a grid with ``acq``'s spacing; a single slice is blurred in-plane only.
    ``noise_gain`` (HU per voxel) replaces ``acq.noise_sd`` where tissue texture adds to the noise.
    """
    sigma_xy = acq.blur_mm / acq.pixel_mm
    sigma = (0.35 if hu.shape[0] > 1 else 0.0, sigma_xy, sigma_xy)
    blurred = ndimage.gaussian_filter(hu, sigma)
    gain = acq.noise_sd if noise_gain is None else noise_gain
    blurred += gain * correlated_noise(rng, hu.shape, 0.6)
    return np.clip(np.rint(blurred), HU_FLOOR, HU_CEIL).astype(np.int16)
