"""Make ``docs/phantom_examples.png``: what the CT phantom's lesions and anatomy look like.

Rows 1-3: Sheba-like slices of each lesion type (three typical, one atypical when the corpus has
one), cropped around the largest lesion, in a liver window (W400/L50) with the lesion mask's contour. Row 4:
one LiTS-like axial slice with liver (green) and tumour (red) contours, whole and cropped, and a
whole Sheba-like slice.

Usage::

    python docs/make_phantom_figure.py                 # render default-size cases in memory
    python docs/make_phantom_figure.py --corpus DIR    # read a corpus written by nnunet_joint_phantom

Without ``--corpus`` the cases are rendered in-process from the default plan with the same
functions ``generate_corpus`` uses (the phantom tests check these give the written bytes), so
the figure needs seconds, not a whole corpus.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402

from nnunet_joint import LESION_TYPES  # noqa: E402
from nnunet_joint.io import atomic_path  # noqa: E402
from nnunet_joint.phantom import plan_corpus, render_lits_volume, render_sheba_case  # noqa: E402

WINDOW = (50 - 200, 50 + 200)  # liver window W400 / L50
OUT = Path(__file__).with_name("phantom_examples.png")


@dataclass
class Example:
    """One slice to show: HU image, masks and the truth record of its lesions."""

    image: np.ndarray
    lesion: np.ndarray
    liver: np.ndarray
    lesions: list[dict]
    title: str


def _from_corpus(root: Path) -> tuple[list[Example], Example]:
    truth = json.loads((root / "phantom_truth.json").read_text())
    cases = []
    for c in truth["sheba"]:
        base = root / "Sheba"
        read = lambda rel: sitk.GetArrayFromImage(sitk.ReadImage(str(base / rel)))[0]  # noqa: E731
        cases.append(Example(read(f"slices/{c['case_id']}.nii.gz"), read(f"masks/{c['case_id']}_lesion.nii.gz") > 0,
                             read(f"masks/{c['case_id']}_liver.nii.gz") > 0, c["lesions"], c["lesion_type"]))
    v = truth["lits"][0]
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(root / v["volume"])))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(root / v["segmentation"])))
    return cases, _lits_example(vol, seg, v["lesions"])


def _lits_example(vol: np.ndarray, seg: np.ndarray, lesions: list[dict]) -> Example:
    k = int(np.argmax((seg == 2).sum(axis=(1, 2)) + 1e-3 * (seg == 1).sum(axis=(1, 2))))
    shown = [lesion for lesion in lesions if lesion["centre_zyx"][0] == k]
    return Example(vol[k], seg[k] == 2, seg[k] >= 1, shown, f"LiTS-like volume-0, slice {k}")


def _rendered(max_cases: int = 90) -> tuple[list[Example], Example]:
    plan = plan_corpus(0, "default")
    cases, need = [], {t: 2 for t in LESION_TYPES}  # stop once each type has shown atypical examples
    for case_plan in plan.sheba[:max_cases]:
        c = render_sheba_case(plan, case_plan)
        cases.append(Example(c.image[0], c.lesion[0], c.liver[0], [lesion.truth(c.grid) for lesion in c.lesions],
                             case_plan.lesion_type))
        if any(lesion.atypical for lesion in c.lesions):
            need[case_plan.lesion_type] -= 1
        if all(n <= 0 for n in need.values()):
            break
    v = render_lits_volume(plan, plan.lits[0])
    seg = v.liver.astype(np.uint8)
    seg[v.lesion] = 2
    return cases, _lits_example(v.image, seg, [lesion.truth(v.grid) for lesion in v.lesions])


def _crop(mask: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    """A square window around ``mask`` with ``margin`` pixels on each side."""
    ys, xs = np.nonzero(mask)
    lo_y, hi_y, lo_x, hi_x = ys.min() - margin, ys.max() + margin, xs.min() - margin, xs.max() + margin
    side = max(hi_y - lo_y, hi_x - lo_x)
    cy, cx = (lo_y + hi_y) // 2, (lo_x + hi_x) // 2
    lo_y, lo_x = max(0, cy - side // 2), max(0, cx - side // 2)
    return slice(lo_y, min(mask.shape[0], lo_y + side)), slice(lo_x, min(mask.shape[1], lo_x + side))


def _show(ax, ex: Example, crop: bool | str, title: str, liver_contour: bool = False) -> None:
    if crop == "lesion":  # around the largest lesion, wide enough to compare with liver
        labels, n = ndimage.label(ex.lesion)
        biggest = labels == 1 + int(np.argmax(ndimage.sum(ex.lesion, labels, range(1, n + 1))))
        sl = _crop(biggest, margin=28)
    else:
        sl = _crop(ex.liver) if crop else (slice(None), slice(None))
    ax.imshow(ex.image[sl], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest")
    if liver_contour:
        ax.contour(ex.liver[sl], levels=[0.5], colors="lime", linewidths=0.8)
    ax.contour(ex.lesion[sl], levels=[0.5], colors="red", linewidths=0.6, alpha=0.6)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _hu_title(ex: Example) -> str:
    liver = float(np.median(ex.image[ex.liver & ~ex.lesion]))
    lesion = float(np.median(ex.image[ex.lesion]))
    variants = sorted({lesion_["variant"] for lesion_ in ex.lesions})
    return f"{ex.title} ({', '.join(variants)})\nlesion {lesion:.0f} HU, liver {liver:.0f} HU"


def make_figure(cases: list[Example], lits: Example, out: Path) -> None:
    fig, axes = plt.subplots(4, 4, figsize=(13, 13.6))
    for row, t in enumerate(LESION_TYPES):
        of_type = [c for c in cases if c.title == t]
        typical = [c for c in of_type if not any(lesion["atypical"] for lesion in c.lesions)][:3]
        atypical = [c for c in of_type if any(lesion["atypical"] for lesion in c.lesions)][:1]
        for col in range(4):
            ax = axes[row, col]
            chosen = typical[col] if col < 3 and col < len(typical) else (atypical[0] if col == 3 and atypical else None)
            if chosen is None:
                ax.axis("off")
                continue
            prefix = "ATYPICAL " if col == 3 else ""
            _show(ax, chosen, crop="lesion", title=prefix + _hu_title(chosen))
    _show(axes[3, 0], lits, crop=False, title=lits.title + "\nliver (green), tumour (red)", liver_contour=True)
    _show(axes[3, 1], lits, crop=True, title=_hu_title(Example(lits.image, lits.lesion, lits.liver, lits.lesions, "LiTS-like, all types")),
          liver_contour=True)
    whole = cases[0]
    _show(axes[3, 2], whole, crop=False, title=f"Sheba-like slice, whole field of view\n{whole.title}")
    _show(axes[3, 3], whole, crop=False, title="same slice, liver mask (green)", liver_contour=True)
    fig.suptitle("nnunet_joint CT phantom (portal-venous, liver window W400/L50)", fontsize=11)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a corpus folder written by nnunet_joint_phantom")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    cases, lits = _from_corpus(args.corpus) if args.corpus else _rendered()
    make_figure(cases, lits, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
