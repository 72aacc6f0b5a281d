"""Custom code of the seg3d_monai app: a MONAI data-list dataset and a sliding-window trainer."""
