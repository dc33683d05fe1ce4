"""Converters: LiTS / MSD Task03_Liver / Sheba-format raw data -> nnU-Net v2 raw datasets."""
