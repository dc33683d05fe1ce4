"""``nnunet_joint_phantom``: write the synthetic CT corpus (LiTS-like volumes, Sheba-like slices)."""

from __future__ import annotations

import argparse
from typing import Sequence

from nnunet_joint.errors import cli_entry
from nnunet_joint.phantom.corpus import DEFAULT_DIFFICULTY, DIFFICULTY_HELP, SIZES, generate_corpus


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_joint_phantom",
        description="Generate deterministic synthetic portal-venous liver CT in the LiTS release layout "
        "(DIR/LiTS) and the Sheba raw format (DIR/Sheba), plus DIR/phantom_truth.json.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="default: 131 volumes + 332 slices / 140 patients (256^2); paper: 160 volumes + the same 332 slices / 140 patients at 128^2, for the study; small: 48 volumes + 90 slices / 38 patients (128^2), for the demo; tiny: 3 volumes + 18 slices, for tests")
    parser.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY, help=DIFFICULTY_HELP)
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = generate_corpus(args.out, seed=args.seed, size=args.size, difficulty=args.difficulty)
    counts = ", ".join(f"{n} {t}" for t, n in summary["sheba_type_counts"].items())
    census = summary["census"]
    print(f"LiTS:  {summary['lits_volumes']} volumes in {summary['lits_dir']}: {census['lits_liver_slices']} liver "
          f"slices, {census['lits_lesion_slices']} with lesion ({census['ratio']:.1f}x the "
          f"{census['sheba_training_slices_per_fold']:g} Sheba slices a fold trains on)")
    print(f"Sheba: {summary['sheba_slices']} slices / {summary['sheba_patients']} patients ({counts}) in {summary['sheba_dir']}")
    print(f"truth: {summary['truth']}")
    print(f"generated in {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
