"""The checked-in trainer variants (trainers/nnUNetTrainerVariants.py) are exactly the naming table's."""

from __future__ import annotations

import ast
from pathlib import Path

from nnunet_joint.names import FRAMEWORKS, PAPER_FRAMEWORKS, parse_trainer_name, trainer_name
from nnunet_joint.training.variants import render_variants_module

VARIANTS_FILE = Path(__file__).resolve().parents[1] / "trainers" / "nnUNetTrainerVariants.py"


def test_checked_in_file_is_what_the_generator_writes():
    assert VARIANTS_FILE.read_text(encoding="utf-8") == render_variants_module(), (
        "regenerate: python -m nnunet_joint.training.variants > trainers/nnUNetTrainerVariants.py")


def test_one_class_statement_per_pretrained_variant_of_the_table():
    """2 pretrained inits x 4 schedules for each of the papers' 4 frameworks, each a subclass of its
    framework's trainer, found as a ``class`` statement (what grep and editors see)."""
    classes = {node.name: node for node in ast.parse(VARIANTS_FILE.read_text(encoding="utf-8")).body
               if isinstance(node, ast.ClassDef)}
    expected = {trainer_name(f, init, schedule): f for f in PAPER_FRAMEWORKS for init in ("ImageNet", "LiTS")
                for schedule in ("NoFreeze", "FreezeEnc", "HierFreeze", "HierUnfreeze")}
    assert len(expected) == 32 and set(classes) == set(expected)
    assert "nnUNetTrainerJoint_LiTS_HierFreeze" in classes
    for name, framework in expected.items():
        assert [base.id for base in classes[name].bases] == [FRAMEWORKS[framework].trainer_base]


def test_imported_variants_carry_their_init_and_schedule():
    from nnunet_joint.trainers import nnUNetTrainerVariants as variants

    hier = variants.nnUNetTrainerJoint_LiTS_HierFreeze
    assert (hier.framework, hier.init, hier.schedule) == ("joint", "LiTS", "HierFreeze")
    for name in [n for n in dir(variants) if n.startswith("nnUNetTrainer") and "_" in n]:
        cls = getattr(variants, name)
        assert (cls.framework, cls.init, cls.schedule) == parse_trainer_name(name)
