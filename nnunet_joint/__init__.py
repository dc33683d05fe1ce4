"""nnunet_joint: joint liver-lesion segmentation and lesion-type classification as an nnU-Net v2 extension."""

import importlib.util
from pathlib import Path

__version__ = "0.1.0"

#: The trainer classes' folder, for ``nnUNet_extTrainer`` (nnU-Net scans it by path). The repository's
#: top-level ``trainers/`` folder is installed as the package ``nnunet_joint.trainers`` (package-dir in
#: pyproject.toml); its location comes from the import system so that it is the real folder under an
#: editable install (the repository's ``trainers/``) and under a wheel (``site-packages/nnunet_joint/trainers``).
_trainers = importlib.util.find_spec("nnunet_joint.trainers")
if _trainers is None:  # an editable install made before trainers/ was mapped by package-dir (it was a link)
    raise ImportError("nnunet_joint.trainers is not installed: reinstall the package (pip install -e .)")
TRAINERS_DIR = Path(_trainers.origin).parent

#: Lesion types, in the order of their class indices everywhere in the project
#: (classification heads, joint label map ``2 + index``, confusion matrices).
LESION_TYPES: tuple[str, ...] = ("cyst", "hemangioma", "metastasis")
