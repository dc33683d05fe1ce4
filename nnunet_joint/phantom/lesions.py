"""Focal liver lesions with the portal-venous appearance a radiologist uses to tell them apart.

* **cyst** - round, homogeneous water density (0-20 HU), sharp margin.
* **hemangioma** - lobulated; discontinuous peripheral nodules at blood-pool HU around a
  hypodense centre (fill-in grows with later contrast timing); small ones flash-fill and are
  uniformly hyperdense.
* **metastasis** - hypodense (40-80 HU), ill-defined irregular margin, either a continuous
  enhancing rim or a necrotic centre; often several.

Atypical variants make the types overlap as they do in practice: a *dense* (haemorrhagic or
proteinaceous) cyst, a *non-enhancing* (sclerosed) hemangioma and a *cystic* metastasis. The
difficulty parameter raises the atypical fraction and weakens enhancement features.

Each lesion is painted on a crop around its centre: a normalised radius ``rho`` (< 1 inside)
defines the shape, the type's HU profile is a function of ``rho``, and a logistic edge of the
type's width blends it into the liver. The lesion label is ``rho < 1`` inside the liver.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.special import expit

from nnunet_joint import LESION_TYPES
from nnunet_joint.phantom.anatomy import AORTA, Grid, Patient


@dataclass
class Lesion:
    """One lesion: what it is, where, and the numbers that shape its appearance."""

    type: str
    variant: str
    atypical: bool
    radius_mm: float
    core_hu: float
    feature_hu: float  # rim / nodule / necrosis HU, by variant
    edge_mm: float  # 10-90 % width of the margin
    texture_hu: float
    seed: int
    axes: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (z, y', x') factors of the radius
    angle_deg: float = 0.0
    lobes: list[tuple[float, float, float, float]] = field(default_factory=list)  # (dz, dy, dx, r) / radius
    nodules: list[tuple[float, float, float, float]] = field(default_factory=list)
    harmonics: list[tuple[float, float, float]] = field(default_factory=list)
    centre_mm: tuple[float, float, float] | None = None

    def truth(self, grid: Grid) -> dict:
        """The record written to ``phantom_truth.json``."""
        assert self.centre_mm is not None
        return {
            "type": self.type,
            "variant": self.variant,
            "atypical": self.atypical,
            "centre_zyx": list(grid.index_of(*self.centre_mm)),
            "radius_mm": round(self.radius_mm, 2),
            "diameter_mm": round(2 * self.radius_mm, 2),
            "core_hu": round(self.core_hu, 1),
        }


def atypical_fraction(difficulty: float) -> float:
    """Share of lesions drawn as an atypical variant (15 % at the default difficulty 1)."""
    return float(np.clip(0.15 * difficulty, 0.0, 0.45))


def sample_lesion(rng: np.random.Generator, lesion_type: str, patient: Patient, difficulty: float,
                  min_radius_mm: float, radius_mm: float | None = None) -> Lesion:
    """Draw one lesion of ``lesion_type`` for ``patient`` (not yet placed).

    ``radius_mm`` replaces the type's own size draw (LiTS-like volumes draw sizes from LiTS's wider
    distribution); the draw still happens, so the other lesion features stay the same stream.
    """
    if lesion_type not in LESION_TYPES:
        raise ValueError(f"unknown lesion type {lesion_type!r}")
    atypical = bool(rng.random() < atypical_fraction(difficulty))
    size_scale = 1.0 / (0.8 + 0.2 * difficulty)
    median_r = {"cyst": 9.0, "hemangioma": 11.0, "metastasis": 9.0}[lesion_type]
    radius = float(np.clip(median_r * size_scale * np.exp(rng.normal(0, 0.45)), 3.0, 32.0))
    radius = max(radius if radius_mm is None else radius_mm, min_radius_mm)
    # enhancement features fade toward the core value as difficulty grows (0.85-1 at difficulty 1)
    enh = float(np.clip(1.0 - 0.15 * difficulty * rng.random(), 0.4, 1.0))
    liver, blood = patient.liver_hu, patient.blood_pool_hu
    seed = int(rng.integers(2**31))
    in_plane = rng.uniform(0, 180)
    u = rng.uniform

    if lesion_type == "cyst":
        variant = "dense" if atypical else "simple"
        core = u(32, 55) if atypical else u(2, 16)
        return Lesion("cyst", variant, atypical, radius, core, core, u(0.2, 0.5), 1.5, seed,
                      axes=(u(0.9, 1.1), u(0.92, 1.0), u(1.0, 1.1)), angle_deg=in_plane)

    if lesion_type == "hemangioma":
        lobes = []
        for _ in range(int(rng.integers(2, 5))):
            d = _direction(rng, z_spread=0.3)
            lobes.append((*(d * u(0.4, 0.6)), u(0.45, 0.7)))
        if atypical:
            variant, core, feature = "non-enhancing", u(40, 65), liver + u(-12, 5)
        elif radius < 7.5:
            variant, core, feature = "flash-filling", blood - u(5, 25) * (2 - enh), blood
        else:
            variant, core = "nodular", u(35, 60)
            # nodules follow the blood pool (between portal-venous and aortic HU)
            pool = max(blood, float(patient.hu[AORTA]) - u(0, 15))
            feature = core + enh * (pool - core)
        fill = (patient.timing + 1) / 2  # later phase: bigger, more confluent nodules
        nodules = []
        for _ in range(int(rng.integers(5, 10))):
            d = _direction(rng, z_spread=0.15)
            # at least ~1 pixel across, so the nodules survive coarse grids
            size = max(u(0.22, 0.32) * (1 + 0.3 * fill), 0.35 * min_radius_mm / radius)
            nodules.append((*(d * 0.8), size))
        return Lesion("hemangioma", variant, atypical, radius, core, feature, u(0.5, 0.9), 4.0, seed,
                      axes=(u(0.85, 1.1), u(0.85, 1.0), u(1.0, 1.2)), angle_deg=in_plane, lobes=lobes,
                      nodules=nodules)

    harmonics = [(k, u(0.04, 0.1), u(0, 2 * np.pi)) for k in (3, 4, 5, 7)]
    if atypical:
        variant, core, feature, edge = "cystic", u(12, 28), 0.0, u(0.6, 1.0)
        feature = core + enh * u(20, 35)
    elif rng.random() < 0.55:
        variant, core, edge = "rim", u(42, 70), u(1.5, 3.0)
        feature = max(core + 35, liver + enh * u(0, 25) - 25 * (1 - enh))  # a ring about as bright as liver or brighter
    else:
        variant, core, edge = "necrotic", u(52, 80), u(1.5, 3.0)
        feature = u(12, 30)
    return Lesion("metastasis", variant, atypical, radius, core, feature, edge, 7.0 if not atypical else 2.5, seed,
                  axes=(u(0.85, 1.1), u(0.8, 1.0), u(1.0, 1.25)), angle_deg=in_plane, harmonics=harmonics)


def _direction(rng: np.random.Generator, z_spread: float) -> np.ndarray:
    """Random unit vector (z, y, x), mostly in-plane so features show on axial slices."""
    phi = rng.uniform(0, 2 * np.pi)
    v = np.array([rng.normal(0, z_spread), np.sin(phi), np.cos(phi)])
    return v / np.linalg.norm(v)


def lesion_count(rng: np.random.Generator, lesion_type: str) -> int:
    """Lesions shown on one slice/volume: metastases often several, the others mostly one."""
    if lesion_type == "metastasis":
        return int(min(1 + rng.poisson(1.3), 5))
    return 1 + int(rng.random() < (0.3 if lesion_type == "cyst" else 0.15))


# ----------------------------------------------------------------------------- placement


def place_lesions(rng: np.random.Generator, lesions: list[Lesion], liver: np.ndarray, grid: Grid,
                  min_radius_mm: float, pad_z: bool) -> list[Lesion]:
    """Give each lesion a centre deep enough in the liver, not touching earlier lesions.

    A lesion that does not fit shrinks (down to ``min_radius_mm``) and is dropped if it still
    does not fit. ``pad_z`` treats the volume's first and last slices as outside the liver so
    a 3-D lesion is not cut by the end of the scan; single slices leave it False.
    """
    z, y, x = grid.axes()
    if not liver.any():
        return []
    # distances inside the liver's bounding box only (the rest of the volume cannot hold a centre)
    box = ndimage.find_objects(liver.astype(np.uint8))[0]
    box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
    crop = liver[box]
    if pad_z:
        depth = ndimage.distance_transform_edt(np.pad(crop, ((1, 1), (0, 0), (0, 0))), sampling=grid.spacing)[1:-1]
    else:
        depth = ndimage.distance_transform_edt(crop, sampling=grid.spacing)
    z, y, x = z[box[0]], y[box[1]], x[box[2]]
    placed: list[Lesion] = []
    centres = np.zeros((0, 3))
    radii = np.zeros(0)
    for lesion in lesions:
        r = lesion.radius_mm
        while r >= min_radius_mm:
            cand = np.flatnonzero(depth >= r * 1.05 + 1.0)
            if cand.size:
                iz, iy, ix = np.unravel_index(cand, depth.shape)
                pts = np.stack([z[iz], y[iy], x[ix]], axis=1)
                if len(placed):
                    gap = np.linalg.norm(pts[:, None, :] - centres[None], axis=2) - radii[None] - r
                    ok = np.all(gap > 3.0, axis=1)
                    pts = pts[ok]
                if len(pts):
                    lesion.radius_mm = r
                    lesion.centre_mm = tuple(float(v) for v in pts[rng.integers(len(pts))])
                    placed.append(lesion)
                    centres = np.vstack([centres, lesion.centre_mm])
                    radii = np.append(radii, r)
                    break
            r *= 0.85
    return placed


# ----------------------------------------------------------------------------- painting


def lesion_rho(lesion: Lesion, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Normalised radius (< 1 inside) of the lesion's shape at offsets (mm) from its centre."""
    r = lesion.radius_mm
    th = np.deg2rad(lesion.angle_deg)
    u = np.cos(th) * dx + np.sin(th) * dy
    v = -np.sin(th) * dx + np.cos(th) * dy
    az, ay, ax = lesion.axes
    rho = np.sqrt((dz / az) ** 2 + (v / ay) ** 2 + (u / ax) ** 2) / r
    if lesion.harmonics:
        phi = np.arctan2(v, u)
        rho = rho / (1.0 + sum(a * np.cos(k * phi + p) for k, a, p in lesion.harmonics))
    for lz, ly, lx, lr in lesion.lobes:
        rho = np.minimum(rho, np.sqrt((dz - lz * r) ** 2 + (dy - ly * r) ** 2 + (dx - lx * r) ** 2) / (lr * r))
    return rho


def _profile(lesion: Lesion, rho: np.ndarray, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Lesion HU (before blending) as a function of position inside it."""
    core, feat = lesion.core_hu, lesion.feature_hu
    hu = np.full(rho.shape, core, np.float32)
    if lesion.type == "hemangioma" and lesion.variant != "flash-filling":
        r = lesion.radius_mm
        near = np.full(rho.shape, np.inf, np.float32)
        for nz, ny, nx, nr in lesion.nodules:
            d = np.sqrt((dz - nz * r) ** 2 + (dy - ny * r) ** 2 + (dx - nx * r) ** 2) / (nr * r)
            near = np.minimum(near, d)
        weight = expit((1.0 - near) / 0.08)
        hu = hu + (feat - core) * weight
    elif lesion.variant in ("rim", "cystic"):
        width = 0.18 if lesion.variant == "rim" else 0.1
        hu = hu + (feat - core) * expit((rho - (1 - width)) / 0.05)
    elif lesion.variant == "necrotic":
        hu = hu + (feat - core) * expit((0.45 - rho) / 0.06)
    return hu


def paint_lesion(hu: np.ndarray, label: np.ndarray, liver: np.ndarray, lesion: Lesion, grid: Grid) -> None:
    """Blend the lesion into ``hu`` and set its voxels in ``label`` (both modified in place).

    Only liver voxels change: a lesion ends at the capsule as real intrahepatic lesions do.
    """
    assert lesion.centre_mm is not None
    z, y, x = grid.axes()
    cz, cy, cx = lesion.centre_mm
    reach = lesion.radius_mm * 1.8 + 2 * lesion.edge_mm
    sl = tuple(slice(int(np.searchsorted(a, c - reach)), int(np.searchsorted(a, c + reach, side="right")))
               for a, c in ((z, cz), (y, cy), (x, cx)))
    dz = (z[sl[0]] - cz)[:, None, None]
    dy = (y[sl[1]] - cy)[None, :, None]
    dx = (x[sl[2]] - cx)[None, None, :]
    rho = lesion_rho(lesion, dz, dy, dx)
    inside_liver = liver[sl]
    values = _profile(lesion, rho, dz, dy, dx)
    rng = np.random.default_rng(lesion.seed)
    sigma_px = [max(0.0, 1.2 / s) if n > 1 else 0.0 for s, n in zip(grid.spacing, rho.shape)]
    texture = ndimage.gaussian_filter(rng.standard_normal(rho.shape, dtype=np.float32), sigma_px)
    texture *= lesion.texture_hu / max(float(texture.std()), 1e-6)
    scale = max(lesion.edge_mm / 4.4, 0.05)
    weight = expit(-(rho - 1.0) * lesion.radius_mm / scale) * inside_liver
    region = hu[sl]
    region += weight * (values + texture - region)
    label[sl] |= (rho < 1.0) & inside_liver
