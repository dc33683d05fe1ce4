"""Abdominal anatomy at the liver level, painted as a map of tissue codes.

A :class:`Patient` holds everything that stays fixed for one person (body habitus, organ
positions, enhancement, the liver's vessel tree); :func:`render_anatomy` paints that patient on
any :class:`Grid` (a LiTS-like volume or a single Sheba-like slice), so several slices of one
patient share their anatomy as real slices do. Shapes are ellipses/ellipsoids with smooth angular
perturbations and a few level-set tricks, all vectorised with NumPy on crops around each organ:
Python loops run over organs, ribs and slices, never over voxels.

Coordinates are millimetres in the LPS frame of the written files: ``x`` grows to the patient's
left, ``y`` to posterior, ``z`` to superior, with ``z = 0`` at the centre of the liver and
``(x, y) = (0, 0)`` at the centre of the body.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------- tissue codes

AIR, FAT, SKIN, MUSCLE, CANCELLOUS, CORTICAL, POSTERIOR_BONE, DISC, CSF = range(9)
AORTA, IVC, PORTAL, SPLEEN, STOMACH_WALL, GAS, FLUID, KIDNEY_CORTEX, KIDNEY_MEDULLA = range(9, 18)
GALLBLADDER, LIVER, LIVER_VESSEL, BOWEL_WALL, TABLE, PANCREAS, LUNG, STOOL = range(18, 26)
N_CODES = 26

#: Codes that make up the liver label (LiTS labels intrahepatic vessels as liver).
LIVER_CODES = (LIVER, LIVER_VESSEL)


@dataclass(frozen=True)
class Grid:
    """Voxel grid of one written image: shape and spacing in (z, y, x) order, millimetres.

    ``z_start`` is the height of slice 0 relative to the liver centre; ``x_shift``/``y_shift``
    place the body centre relative to the image centre.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    z_start: float
    x_shift: float = 0.0
    y_shift: float = 0.0

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1-D coordinates (z, y, x) in body-centred millimetres."""
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        z = self.z_start + dz * np.arange(nz)
        y = dy * (np.arange(ny) - (ny - 1) / 2) - self.y_shift
        x = dx * (np.arange(nx) - (nx - 1) / 2) - self.x_shift
        return z.astype(np.float32), y.astype(np.float32), x.astype(np.float32)

    def index_of(self, z_mm: float, y_mm: float, x_mm: float) -> tuple[int, int, int]:
        """Nearest voxel index (z, y, x) of a body-centred point."""
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        iz = int(round((z_mm - self.z_start) / dz))
        iy = int(round((y_mm + self.y_shift) / dy + (ny - 1) / 2))
        ix = int(round((x_mm + self.x_shift) / dx + (nx - 1) / 2))
        return iz, iy, ix


@dataclass
class VesselTree:
    """Centre-line samples of the hepatic and portal veins: points (N, 3) as (z, y, x) mm and radii."""

    points: np.ndarray
    radii: np.ndarray
    intrahepatic: np.ndarray  # False for the extrahepatic portal trunk


@dataclass
class Patient:
    """Everything about one synthetic person that does not change between slices."""

    body_a: float  # half width (mm)
    body_b: float  # half depth (mm), anterior half
    body_b_post: float  # posterior half depth (mm), flatter back
    body_exp: float  # superellipse exponent
    body_harmonics: np.ndarray  # (k, amplitude, phase) rows
    fat_mm: float
    muscle_mm: float
    spine_r: float
    liver_scale: float
    liver_harmonics: np.ndarray
    liver_tilt_deg: float
    spleen_scale: float
    stomach_gas: float  # fraction of the stomach's depth filled with gas
    gallbladder: bool
    disc_phase: float
    rib_phase: float
    bowel: np.ndarray  # rows (x, y, z, r, kind) with kind 0 gas, 1 fluid, 2 stool
    hu: np.ndarray  # base HU per tissue code
    texture: np.ndarray  # texture amplitude (HU) per tissue code
    timing: float  # contrast timing in [-1, 1]: early (-1) to late (+1) portal-venous
    vessels: VesselTree = field(repr=False)
    #: 2-D fields already computed for an in-plane grid (slices of one scan share them)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def cavity_a(self) -> float:
        return self.body_a - self.fat_mm - self.muscle_mm

    @property
    def cavity_b(self) -> float:
        return self.body_b - self.fat_mm - self.muscle_mm

    @property
    def spine_y(self) -> float:
        """Centre of the vertebral body: a fixed distance in front of the skin of the back."""
        return self.body_b_post - self.spine_r - 48.0

    @property
    def aorta(self) -> tuple[float, float, float]:
        """(x, y, radius) of the aorta, left-anterior of the spine."""
        return 0.3 * self.spine_r + 4.0, self.spine_y - self.spine_r - 13.0, 11.0

    @property
    def ivc(self) -> tuple[float, float, float, float]:
        """(x, y, half width, half depth) of the inferior vena cava, right of the aorta."""
        return -self.spine_r - 10.0, self.spine_y - self.spine_r - 14.0, 13.0, 10.0

    @property
    def liver_hu(self) -> float:
        return float(self.hu[LIVER])

    @property
    def blood_pool_hu(self) -> float:
        """HU of enhanced blood in the liver's vessels (what hemangioma nodules match)."""
        return float(self.hu[LIVER_VESSEL])


# ----------------------------------------------------------------------------- sampling


def contrast_values(rng: np.random.Generator, timing: float) -> tuple[np.ndarray, np.ndarray]:
    """Portal-venous HU (and texture amplitude) per tissue code for one patient.

    Later timing (``timing`` -> +1) means a less bright aorta and a brighter liver, as the bolus
    moves from arteries into parenchyma.
    """
    u = rng.uniform
    liver = float(np.clip(110 + 9 * timing + rng.normal(0, 6), 90, 130))
    vessel = float(np.clip(liver + 48 + 4 * timing + rng.normal(0, 6), 140, 190))
    aorta = float(np.clip(172 - 12 * timing + rng.normal(0, 6), 150, 190))
    hu = np.zeros(N_CODES, np.float32)
    amp = np.zeros(N_CODES, np.float32)
    table = {
        AIR: (-1000, 0), FAT: (u(-108, -92), 9), SKIN: (u(20, 40), 6), MUSCLE: (u(45, 58), 6),
        CANCELLOUS: (u(200, 320), 35), CORTICAL: (u(650, 950), 60), POSTERIOR_BONE: (u(380, 520), 60),
        DISC: (u(75, 95), 5), CSF: (u(5, 15), 3), AORTA: (aorta, 3), IVC: (vessel - u(0, 15), 4),
        PORTAL: (vessel, 3), SPLEEN: (liver + u(2, 15), 5), STOMACH_WALL: (u(75, 100), 6),
        GAS: (-1000, 0), FLUID: (u(5, 25), 3), KIDNEY_CORTEX: (u(170, 205), 6),
        KIDNEY_MEDULLA: (u(135, 165), 6), GALLBLADDER: (u(2, 18), 2), LIVER: (liver, 5),
        LIVER_VESSEL: (vessel, 3), BOWEL_WALL: (u(60, 90), 6), TABLE: (u(-250, -150), 20),
        PANCREAS: (u(90, 115), 9), LUNG: (u(-880, -830), 30), STOOL: (u(-250, -100), 120),
    }
    for code, (value, texture) in table.items():
        hu[code], amp[code] = value, texture
    return hu, amp


def _harmonics(rng: np.random.Generator, ks: tuple[int, ...], amp: float) -> np.ndarray:
    return np.array([(k, rng.uniform(0.3, 1.0) * amp / k**0.5, rng.uniform(0, 2 * np.pi)) for k in ks], np.float32)


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw one synthetic person: habitus, organ placement, enhancement, vessel tree."""
    body_a = rng.uniform(148, 178)
    body_b = body_a * rng.uniform(0.68, 0.8)
    timing = float(rng.uniform(-1, 1))
    hu, amp = contrast_values(rng, timing)
    n_bowel = int(rng.integers(9, 15))
    bowel_z = rng.uniform(-100, 45, n_bowel)
    bowel = np.stack(
        [
            # upper loops (colon flexures, jejunum) on the left; lower ones also under the liver
            np.where(bowel_z > -30, rng.uniform(0.15, 0.85, n_bowel), rng.uniform(-0.75, 0.8, n_bowel)),
            rng.uniform(-0.85, 0.25, n_bowel),  # y as fraction of cavity half depth
            bowel_z,  # z (mm)
            rng.uniform(9, 20, n_bowel),  # radius (mm)
            rng.choice(3, n_bowel, p=[0.35, 0.4, 0.25]).astype(float),
        ],
        axis=1,
    ).astype(np.float32)
    p = Patient(
        body_a=body_a,
        body_b=body_b,
        body_b_post=body_b * rng.uniform(0.9, 1.0),
        body_exp=rng.uniform(2.2, 2.8),
        body_harmonics=_harmonics(rng, (2, 3, 4, 5), 0.025),
        fat_mm=rng.uniform(9, 32),
        muscle_mm=rng.uniform(7, 13),
        spine_r=rng.uniform(15, 19),
        liver_scale=rng.uniform(0.9, 1.1),
        liver_harmonics=_harmonics(rng, (2, 3, 4, 6), 0.05),
        liver_tilt_deg=rng.uniform(0, 20),
        spleen_scale=rng.uniform(0.8, 1.2),
        stomach_gas=rng.uniform(0.1, 0.6),
        gallbladder=bool(rng.random() < 0.9),
        disc_phase=rng.uniform(0, 34),
        rib_phase=rng.uniform(0, 22),
        bowel=bowel,
        hu=hu,
        texture=amp,
        timing=timing,
        vessels=VesselTree(np.zeros((0, 3)), np.zeros(0), np.zeros(0, bool)),
    )
    p.vessels = _grow_vessel_tree(rng, p)
    return p


def _grow_vessel_tree(rng: np.random.Generator, p: Patient) -> VesselTree:
    """Portal and hepatic veins as recursively branching segments (radius and length shrink per generation).

    Branches that would leave the liver are redirected or pruned. The recursion works on plain
    floats with a private :class:`random.Random` (seeded from ``rng``): it runs for every patient,
    and small NumPy vectors would make it the slowest part of the generator.
    """
    r = random.Random(int(rng.integers(2**62)))
    segments: list[tuple[Vec, Vec, float, float, bool]] = []

    def branch(start: Vec, direction: Vec, length: float, radius: float, gen: int) -> None:
        end = _add(start, direction, length)
        if gen > 0 and not _inside_liver(p, end):  # a branch leaving the liver is pruned
            return
        child_r = radius * r.uniform(0.7, 0.82)
        segments.append((start, end, radius, child_r, True))
        if gen >= 6 or child_r < 0.9:
            return
        perp = _unit(_add((r.gauss(0, 1), r.gauss(0, 1), r.gauss(0, 1)), direction, 0.0))
        dot = sum(a * b for a, b in zip(perp, direction))
        perp = _unit(_add(perp, direction, -dot))
        for sign in (1.0, -1.0):
            for _try in range(6):
                angle = math.radians(r.uniform(22, 48))
                d = _unit(tuple(a * math.cos(angle) + sign * b * math.sin(angle) for a, b in zip(direction, perp)))
                child_len = length * r.uniform(0.65, 0.85)
                if _inside_liver(p, _add(end, d, child_len)):
                    branch(end, d, child_len, child_r, gen + 1)
                    break

    def jitter(v: Vec) -> Vec:
        return _unit(tuple(a + r.gauss(0, 0.08) for a in v))

    ac, bc = p.cavity_a, p.cavity_b
    # (z, y, x) ordering throughout.
    hilum = (-8.0, 0.05 * bc, -0.2 * ac)
    trunk_start = (-45.0, p.spine_y - p.spine_r - 28.0, 0.05 * ac)
    segments.append((trunk_start, hilum, 7.0, 7.0, False))  # extrahepatic portal vein
    right = _add(hilum, jitter((0.1, 0.0, -1.0)), 18.0)
    segments.append((hilum, right, 7.0, 6.5, True))
    branch(right, jitter((0.4, -0.5, -0.8)), 34 * p.liver_scale, 5.5, 0)  # right anterior portal branch
    branch(right, jitter((-0.3, 0.5, -0.8)), 34 * p.liver_scale, 5.5, 0)  # right posterior portal branch
    branch(hilum, jitter((0.15, -0.7, 0.7)), 40 * p.liver_scale, 5.5, 0)  # left portal vein
    ivc_x, ivc_y = p.ivc[:2]
    top = (52.0, ivc_y - 4, ivc_x)
    for d in ((-0.45, -0.2, -0.9), (-0.45, -0.9, -0.4), (-0.3, -0.9, 0.45)):  # right, middle, left hepatic veins
        branch(top, jitter(d), 40 * p.liver_scale, 6.0, 0)
    return _sample_segments(segments)


Vec = tuple[float, float, float]


def _add(a: Vec, b: Vec, scale: float) -> Vec:
    return (a[0] + scale * b[0], a[1] + scale * b[1], a[2] + scale * b[2])


def _unit(a) -> Vec:
    n = math.sqrt(a[0] ** 2 + a[1] ** 2 + a[2] ** 2) + 1e-12
    return (a[0] / n, a[1] / n, a[2] / n)


def _sample_segments(segments: list[tuple[Vec, Vec, float, float, bool]], step_mm: float = 0.6) -> VesselTree:
    """Centre-line samples every ``step_mm`` along each segment, radius interpolated."""
    start = np.array([s[0] for s in segments], np.float64)
    end = np.array([s[1] for s in segments], np.float64)
    r0 = np.array([s[2] for s in segments])
    r1 = np.array([s[3] for s in segments])
    n = np.maximum(2, (np.linalg.norm(end - start, axis=1) / step_mm).astype(int))
    owner = np.repeat(np.arange(len(segments)), n)
    first = np.cumsum(n) - n
    t = (np.arange(owner.size) - first[owner]) / (n[owner] - 1)
    points = start[owner] + t[:, None] * (end - start)[owner]
    radii = r0[owner] + t * (r1 - r0)[owner]
    inside = np.array([s[4] for s in segments])[owner]
    return VesselTree(points.astype(np.float32), radii.astype(np.float32), inside)


# ----------------------------------------------------------------------------- shapes


def _range_slice(axis: np.ndarray, lo: float, hi: float) -> slice:
    """Index range of the sorted ``axis`` that lies within [lo, hi] (maybe empty)."""
    return slice(int(np.searchsorted(axis, lo)), int(np.searchsorted(axis, hi, side="right")))


def ellipsoid(
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float, float],
    semi: tuple[float, float, float],
    angle_deg: float = 0.0,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Normalised radius of an ellipsoid (rotated in-plane) on the crop that holds it; None if off-grid.

    Args:
        axes: the grid's (z, y, x) coordinates in mm.
        centre: (z, y, x) mm.
        semi: semi-axes (c along z, a along its own x, b along its own y) in mm.
        angle_deg: in-plane rotation of the (a, b) axes.
    """
    z, y, x = axes
    cz, cy, cx = centre
    c, a, b = semi
    reach = max(a, b)
    sl = (_range_slice(z, cz - c, cz + c), _range_slice(y, cy - reach, cy + reach), _range_slice(x, cx - reach, cx + reach))
    if any(s.stop <= s.start for s in sl):
        return None
    dz = (z[sl[0]] - cz)[:, None, None]
    dy = (y[sl[1]] - cy)[None, :, None]
    dx = (x[sl[2]] - cx)[None, None, :]
    th = np.deg2rad(angle_deg)
    u = (np.cos(th) * dx + np.sin(th) * dy) / a
    v = (-np.sin(th) * dx + np.cos(th) * dy) / b
    return sl, np.sqrt(u * u + v * v + (dz / c) ** 2)


def _perturbed_ellipse(y: np.ndarray, x: np.ndarray, cx: float, cy: float, a: float, b: float,
                       angle_deg: float, harmonics: np.ndarray) -> np.ndarray:
    """2-D normalised radius of an ellipse whose outline is modulated by angular harmonics."""
    dx, dy = x[None, :] - cx, y[:, None] - cy
    th = np.deg2rad(angle_deg)
    u = (np.cos(th) * dx + np.sin(th) * dy) / a
    v = (-np.sin(th) * dx + np.cos(th) * dy) / b
    rho = np.sqrt(u * u + v * v)
    if len(harmonics) == 0:
        return rho
    phi = np.arctan2(v, u)
    return rho / (1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in harmonics))


def _superellipse(p: Patient, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Normalised radius of the body outline (flatter back, slightly boxy)."""
    b = np.where(y[:, None] > 0, p.body_b_post, p.body_b)
    u, v = np.abs(x[None, :] / p.body_a), np.abs(y[:, None] / b)
    rho = (u**p.body_exp + v**p.body_exp) ** (1 / p.body_exp)
    phi = np.arctan2(y[:, None], x[None, :])
    return rho / (1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in p.body_harmonics))


def liver_profile(z: np.ndarray, top: float, bottom: float) -> np.ndarray:
    """Fraction of the full cross-section an organ spanning ``bottom..top`` (mm) has at height z."""
    mid, half = (top + bottom) / 2, (top - bottom) / 2
    return np.sqrt(np.clip(1 - ((z - mid) / half) ** 2, 0, 1))


def liver_profiles(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-section fractions of the right lobe (dome to tip) and the left lobe at heights z."""
    return liver_profile(z, 82, -78), liver_profile(z, 70, -12)


def liver_fields(p: Patient, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D normalised radii of the right and left lobes; the liver at height z is ``rho < profile(z)``."""
    ac, bc, s = p.cavity_a, p.cavity_b, p.liver_scale
    rho_r = _perturbed_ellipse(y, x, -0.42 * ac, -0.08 * bc, 0.62 * ac * s, 0.86 * bc * s, p.liver_tilt_deg, p.liver_harmonics)
    rho_l = _perturbed_ellipse(y, x, 0.02 * ac, -0.52 * bc, 0.5 * ac * s, 0.3 * bc * s, -18, p.liver_harmonics[:2])
    return rho_r, rho_l


def _inside_liver(p: Patient, point: np.ndarray, margin: float = 0.97) -> bool:
    """Whether a (z, y, x) point lies inside the liver envelope (ignoring organs that carve it).

    Scalar arithmetic mirroring :func:`liver_fields`: it runs thousands of times per vessel tree.
    """
    z, y, x = (float(v) for v in point)
    ac, bc, s = p.cavity_a, p.cavity_b, p.liver_scale
    lobes = (
        (-0.42 * ac, -0.08 * bc, 0.62 * ac * s, 0.86 * bc * s, p.liver_tilt_deg, p.liver_harmonics, 82.0, -78.0),
        (0.02 * ac, -0.52 * bc, 0.5 * ac * s, 0.3 * bc * s, -18.0, p.liver_harmonics[:2], 70.0, -12.0),
    )
    for cx, cy, a, b, angle, harmonics, top, bottom in lobes:
        mid, half = (top + bottom) / 2, (top - bottom) / 2
        frac = 1 - ((z - mid) / half) ** 2
        if frac <= 0:
            continue
        th = math.radians(angle)
        dx, dy = x - cx, y - cy
        u = (math.cos(th) * dx + math.sin(th) * dy) / a
        v = (-math.sin(th) * dx + math.cos(th) * dy) / b
        phi = math.atan2(v, u)
        outline = 1.0 + sum(float(amp) * math.cos(float(k) * phi + float(ph)) for k, amp, ph in harmonics)
        if math.hypot(u, v) / outline < margin * math.sqrt(frac):
            return True
    return False


# ----------------------------------------------------------------------------- rendering


def render_anatomy(p: Patient, grid: Grid) -> np.ndarray:
    """Paint the patient on the grid; returns tissue codes, uint8, shape (z, y, x).

    Organs are painted in an order that lets later ones carve earlier ones where real organs
    indent each other (right kidney into liver, stomach and spleen beside the left lobe).
    """
    z, y, x = axes = grid.axes()
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing

    # --- body wall, in 2-D (nearly constant across a liver-level volume)
    key = (float(y[0]), float(y[-1]), ny, float(x[0]), float(x[-1]), nx)
    if key not in p.cache:
        body_ = _superellipse(p, y, x) < 1.0
        depth_ = ndimage.distance_transform_edt(body_, sampling=(dy, dx)).astype(np.float32)
        p.cache = {key: (body_, depth_, *liver_fields(p, y, x))}  # keep one grid: memory stays small
    body, depth, rho_r, rho_l = p.cache[key]
    fat_local = p.fat_mm * (0.75 + 0.5 * np.abs(x[None, :]) / p.body_a) * (1 + 0.25 * (y[:, None] > 0))
    wall = fat_local + p.muscle_mm
    plane = np.full((ny, nx), AIR, np.uint8)
    plane[body] = FAT
    plane[body & (depth < 1.8)] = SKIN
    plane[body & (depth >= fat_local) & (depth < wall)] = MUSCLE
    cavity2d = body & (depth >= wall)
    # table under the back
    table_y = p.body_b_post + 18 + 0.0015 * x[None, :] ** 2
    plane[(y[:, None] > table_y) & (y[:, None] < table_y + 7) & (np.abs(x[None, :]) < 0.95 * p.body_a)] = TABLE
    # paraspinal muscles
    sy, sr = p.spine_y, p.spine_r
    for side in (-1, 1):
        rho = _perturbed_ellipse(y, x, side * (sr + 13), sy + sr + 24, 19, 23, side * 15, np.zeros((0, 3)))
        plane[(rho < 1) & body] = MUSCLE

    organ = np.broadcast_to(plane, (nz, ny, nx)).copy()
    cavity = np.broadcast_to(cavity2d, (nz, ny, nx))
    organ[cavity] = FAT

    def paint(sl_rho, code: int, where=lambda r: r < 1.0, only_cavity: bool = True, onto: tuple[int, ...] | None = None):
        if sl_rho is None:
            return
        sl, rho = sl_rho
        mask = where(rho)
        if only_cavity:
            mask = mask & cavity[sl]
        if onto is not None:
            mask = mask & np.isin(organ[sl], onto)
        organ[sl][mask] = code

    ac, bc = p.cavity_a, p.cavity_b

    # --- bowel loops (lower slices) and lung bases (upper slices)
    for bx, by, bz, br, kind in p.bowel:
        e = ellipsoid(axes, (bz, by * bc, bx * ac), (2.2 * br, br, br * 0.9), 0.0)
        paint(e, BOWEL_WALL)
        paint(e, (GAS, FLUID, STOOL)[int(kind)], where=lambda r: r < 0.78)
    lung_depth = np.clip((z - 45.0) * 1.1, 0, 45)[:, None, None]
    lung = cavity & (depth[None] < wall[None] + lung_depth) & (y[None, :, None] > -0.25 * bc) & (np.abs(x)[None, None, :] > sr + 25)
    organ[lung] = LUNG

    # --- pancreas, liver, kidneys, spleen, stomach, gallbladder
    paint(ellipsoid(axes, (-22.0, sy - sr - 30, 0.3 * ac), (16, 0.42 * ac, 10), 22), PANCREAS)
    s_right, s_left = (prof[:, None, None] for prof in liver_profiles(z))
    aox, aoy, aor = p.aorta
    ivx, ivy, iva, ivb = p.ivc
    # retroperitoneum (crura, aorta, the left of the IVC) is not liver
    left_edge, front_edge = ivx + 0.3 * iva, aoy - aor - 6
    retro = _perturbed_ellipse(y, x, aox + 8, sy, aox + 8 - left_edge, sy - front_edge, 0, np.zeros((0, 3))) < 1
    liver = ((rho_r[None] < s_right) | (rho_l[None] < s_left * 0.98)) & (cavity2d & ~retro)[None]
    organ[liver] = LIVER
    ss = p.spleen_scale
    paint(ellipsoid(axes, (32.0, 0.38 * bc, 0.74 * ac), (48 * ss, 0.16 * ac * ss, 0.5 * bc * ss), 40), SPLEEN)
    for side, zc in ((-1, -62.0), (1, -48.0)):
        kx, ky = side * (sr + 46), sy + 4
        paint(ellipsoid(axes, (zc, ky + 8, kx + side * 4), (56, 29, 38), -side * 32), FAT, onto=(LIVER, SPLEEN))
        e = ellipsoid(axes, (zc, ky, kx), (52, 24, 33), -side * 32)
        paint(e, KIDNEY_CORTEX)
        paint(e, KIDNEY_MEDULLA, where=lambda r: r < 0.72)
        paint(ellipsoid(axes, (zc, ky - 6, kx - side * 12), (34, 9, 13), -side * 32), FAT)
    st = ellipsoid(axes, (38.0, -0.3 * bc, 0.42 * ac), (42, 0.3 * ac, 0.36 * bc), -25)
    if st is not None:
        sl, rho = st
        paint(st, STOMACH_WALL)
        gas_line = -0.3 * bc - 0.36 * bc * (1 - 2 * p.stomach_gas)
        inner = (rho < 0.88) & cavity[sl]
        organ[sl][inner] = FLUID
        organ[sl][inner & (y[sl[1]][None, :, None] < gas_line)] = GAS
    if p.gallbladder:
        paint(ellipsoid(axes, (-35.0, -0.38 * bc, -0.22 * ac), (26, 14, 21), 30), GALLBLADDER)

    # --- aorta, IVC, spine (retroperitoneal, fixed to the spine)
    rr = np.hypot(x[None, :] - aox, y[:, None] - aoy)
    organ[:, (rr < aor + 2.5) & (organ[0] != MUSCLE)] = FAT
    organ[:, rr < aor] = AORTA
    organ[:, _perturbed_ellipse(y, x, ivx, ivy, iva, ivb, 0, np.zeros((0, 3))) < 1] = IVC
    vb = np.hypot(x[None, :], y[:, None] - sy)
    canal = np.hypot(x[None, :], y[:, None] - (sy + sr + 8))
    arch = (canal < 14) & (y[:, None] > sy + sr - 1)
    spinous = _perturbed_ellipse(y, x, 0, sy + sr + 30, 4.5, 14, 0, np.zeros((0, 3))) < 1
    transverse = np.zeros((ny, nx), bool)
    for side in (-1, 1):
        transverse |= _perturbed_ellipse(y, x, side * (sr + 8), sy + 0.6 * sr, 13, 4.5, side * 20, np.zeros((0, 3))) < 1
    disc = ((z - p.disc_phase) % 34.0) < 7.0
    for k in range(nz):
        sl_ = organ[k]
        sl_[(arch | spinous | (transverse & ~disc[k])) & body] = POSTERIOR_BONE
        if disc[k]:
            sl_[vb < sr] = DISC
        else:
            sl_[vb < sr] = CORTICAL
            sl_[vb < sr - 2.0] = CANCELLOUS
        sl_[canal < 8] = CSF

    _paint_vessels(organ, p, grid, axes)
    _paint_ribs(organ, p, axes, depth, wall)
    return organ


def _paint_vessels(organ: np.ndarray, p: Patient, grid: Grid, axes) -> None:
    """Render the vessel tree as tubes: distance to the nearest centre-line sample vs its radius."""
    z, y, x = axes
    dz, dy, dx = grid.spacing
    tree = p.vessels
    iz = np.rint((tree.points[:, 0] - z[0]) / dz).astype(int)
    iy = np.rint((tree.points[:, 1] - y[0]) / dy).astype(int)
    ix = np.rint((tree.points[:, 2] - x[0]) / dx).astype(int)
    keep = (iz >= 0) & (iz < len(z)) & (iy >= 0) & (iy < len(y)) & (ix >= 0) & (ix < len(x))
    if not keep.any():
        return
    iz, iy, ix, radii, intra = iz[keep], iy[keep], ix[keep], tree.radii[keep], tree.intrahepatic[keep]
    pad = int(np.ceil(8.0 / min(dy, dx)))
    lo = [max(0, a.min() - (0 if i == 0 else pad)) for i, a in enumerate((iz, iy, ix))]
    hi = [min(n, a.max() + 1 + (0 if i == 0 else pad)) for i, (a, n) in enumerate(zip((iz, iy, ix), organ.shape))]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(b - a for a, b in zip(lo, hi))
    seeds = np.zeros(shape, bool)
    radius = np.zeros(shape, np.float32)
    extra = np.zeros(shape, bool)
    pos = (iz - lo[0], iy - lo[1], ix - lo[2])
    seeds[pos] = True
    np.maximum.at(radius, pos, radii)
    extra[pos] = ~intra
    # half the slice spacing along z: a vessel shows in a slab it passes near (partial volume)
    dist, idx = ndimage.distance_transform_edt(~seeds, sampling=(dz * 0.5, dy, dx), return_indices=True)
    near_r = radius[tuple(idx)]
    tube = dist <= near_r
    region = organ[crop]
    region[tube & (region == LIVER)] = LIVER_VESSEL
    portal = tube & extra[tuple(idx)] & np.isin(region, (FAT, PANCREAS))
    region[portal] = PORTAL


def _paint_ribs(organ: np.ndarray, p: Patient, axes, depth: np.ndarray, wall: np.ndarray) -> None:
    """Rib cross-sections in the lateral and posterior wall; they drift with height as ribs slope."""
    z, y, x = axes
    right = np.arange(112.0, 250.0, 22.0)
    left = np.arange(-70.0, 72.0, 22.0)
    base = np.concatenate([right, left])
    for k, zk in enumerate(z):
        angles = base + p.rib_phase + 0.35 * zk
        for ang in angles:
            a = (ang + 180) % 360 - 180
            if abs(a - 90) < 28 or (abs(a + 90) < 40 and zk < 20):
                continue  # no rib over the spine; anterior costal arch only high up
            th = np.deg2rad(a)
            # walk in from the body outline along the ray to the middle of the wall
            cosv, sinv = np.cos(th), np.sin(th)
            b = p.body_b_post if sinv > 0 else p.body_b
            r_out = 1.0 / ((abs(cosv) / p.body_a) ** p.body_exp + (abs(sinv) / b) ** p.body_exp) ** (1 / p.body_exp)
            r_c = r_out - p.fat_mm * (0.75 + 0.5 * abs(cosv)) - 0.6 * p.muscle_mm - 3
            cx, cy = r_c * cosv, r_c * sinv
            e = ellipsoid((z[k:k + 1], y, x), (float(zk), cy, cx), (1.0, 4.0, 7.0), a + 90)
            if e is None:
                continue
            sl, rho = e
            plane = organ[k:k + 1][sl]
            code = POSTERIOR_BONE if abs(a + 90) < 40 else CORTICAL
            plane[rho < 1] = code
            plane[rho < 0.55] = CANCELLOUS
