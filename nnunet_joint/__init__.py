"""nnunet_joint: joint liver-lesion segmentation and lesion-type classification as an nnU-Net v2 extension."""

from pathlib import Path

__version__ = "0.1.0"

#: The trainer classes' folder, for ``nnUNet_extTrainer``. The design card's top-level ``trainers/``,
#: ``evaluation/`` and ``dataset_conversion/`` folders are installed inside this package (each is a
#: symbolic link here), so ``pip install`` puts no generic top-level names such as ``evaluation``
#: into site-packages.
TRAINERS_DIR = Path(__file__).parent / "trainers"

#: Lesion types, in the order of their class indices everywhere in the project
#: (classification heads, joint label map ``2 + index``, confusion matrices).
LESION_TYPES: tuple[str, ...] = ("cyst", "hemangioma", "metastasis")
