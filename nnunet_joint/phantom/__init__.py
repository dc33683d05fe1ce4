"""Deterministic synthetic portal-venous CT of the liver, in the LiTS and Sheba raw formats.

The project's default data (docs/data_formats.md, "The phantom"): every real code path runs on it with no
download. :func:`generate_corpus` writes the corpus; :func:`plan_corpus` decides its content
without rendering; ``nnunet_joint_phantom`` is the command line.
"""

from nnunet_joint.phantom.corpus import (
    DEFAULT_DIFFICULTY,
    GENERATOR_VERSION,
    SIZES,
    CorpusPlan,
    generate_corpus,
    plan_corpus,
    render_lits_volume,
    render_sheba_case,
)

__all__ = [
    "DEFAULT_DIFFICULTY",
    "GENERATOR_VERSION",
    "SIZES",
    "CorpusPlan",
    "generate_corpus",
    "plan_corpus",
    "render_lits_volume",
    "render_sheba_case",
]
