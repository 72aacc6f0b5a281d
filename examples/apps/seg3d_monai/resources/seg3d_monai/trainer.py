"""A trainer hook: the built-in segmentation trainer, validating with sliding windows.

Real scans (a 512 x 512 x 200 CT) do not fit a 3D network at once. MONAI's
``sliding_window_inference`` runs the network over overlapping windows of
``roi_size`` and blends them, so validation sees whole volumes whatever
their size; training keeps the built-in loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from flapp import SegmentationTrainer


class SlidingWindowTrainer(SegmentationTrainer):
    """``flapp.SegmentationTrainer`` with sliding-window validation.

    Args:
        roi_size: Edge lengths of one window (voxels).
        overlap: Share of a window that overlaps its neighbour.
        sw_batch_size: Windows run through the network at once.
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (32, 32, 32),
        overlap: float = 0.25,
        sw_batch_size: int = 4,
        amp: bool = True,
    ) -> None:
        super().__init__(amp=amp)
        self.roi_size = tuple(roi_size)
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size

    def infer(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The logits of whole volumes, window by window."""
        logits = sliding_window_inference(
            inputs, self.roi_size, self.sw_batch_size, model, overlap=self.overlap
        )
        assert isinstance(logits, torch.Tensor)
        return logits
