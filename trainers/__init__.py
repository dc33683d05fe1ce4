"""nnUNetTrainer subclasses of nnunet_joint.

Point ``nnUNet_extTrainer`` at this folder so that ``nnUNetv2_train``/``nnUNetv2_predict`` find
them. nnU-Net imports each module here as a top-level module, so modules in this folder import
only absolute names (``nnunet_joint...``), never each other relatively.
"""
