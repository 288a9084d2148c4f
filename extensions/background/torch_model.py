"""What every weights-backed detector and segmenter shares: a torch ``model`` that moves between devices."""

from __future__ import annotations

import torch


class TorchModelHolder:
    """Mixin for classes keeping their network in ``self.model`` (a ``torch.nn.Module``)."""

    model: torch.nn.Module

    def to(self, device: torch.device | str):
        """Move the network to ``device``; returns self so calls chain."""
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the network's weights are now."""
        return next(self.model.parameters()).device
