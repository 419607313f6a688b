"""The trained head of a descriptor (:class:`EmbeddingHead`) and a backbone carrying one
(:class:`WithHead`): apart from :mod:`wildreid.models` so listing the registry needs no torch."""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Module):
    """Linear projection to ``dim`` with batch norm: the trained head of a descriptor.

    ``activation``: ``"none"`` (the default) leaves the embedding free in every direction;
    ``"relu"`` (what heads were before, and what checkpoints that do not name one load as)
    confines it to the positive orthant, where no two embeddings are more than 90 degrees apart."""

    ACTIVATIONS = ("none", "relu")
    #: What heads had before the activation was recorded (checkpoints and training states).
    UNRECORDED = "relu"

    def __init__(self, features: int, dim: int = 512, activation: str = "none"):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"head activation {activation!r}: choose one of "
                             f"{', '.join(self.ACTIVATIONS)}")
        self.activation = activation
        self.projection = nn.Linear(features, dim)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.projection(x))
        return torch.relu(x) if self.activation == "relu" else x


class WithHead(nn.Sequential):
    """A backbone followed by an :class:`EmbeddingHead`."""

    def __init__(self, backbone: nn.Module, head: EmbeddingHead):
        super().__init__()
        self.backbone, self.head = backbone, head
