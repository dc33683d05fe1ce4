"""Inference on new CT: the liver -> lesion cascade behind ``nnunet_joint_predict``.

- :mod:`~nnunet_joint.inference.inputs`: reading and checking NIfTI / DICOM inputs;
- :mod:`~nnunet_joint.inference.models`: finding and safely loading trained nnU-Net model folders;
- :mod:`~nnunet_joint.inference.cascade`: stage 1, crop, stage 2, paste back, outputs;
- :mod:`~nnunet_joint.inference.lesions`: per-lesion analysis (``lesions.json``);
- :mod:`~nnunet_joint.inference.overlays`: overlay PNGs;
- :mod:`~nnunet_joint.inference.cli`: the console script and :func:`predict`.
"""
