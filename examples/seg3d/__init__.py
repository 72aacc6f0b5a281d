"""Synthetic 3D segmentation data for the MONAI examples (prepare_data.py)."""
