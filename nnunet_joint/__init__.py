"""nnunet_joint: joint liver-lesion segmentation and lesion-type classification as an nnU-Net v2 extension."""

__version__ = "0.1.0"

#: Lesion types, in the order of their class indices everywhere in the project
#: (classification heads, joint label map ``2 + index``, confusion matrices).
LESION_TYPES: tuple[str, ...] = ("cyst", "hemangioma", "metastasis")
