"""Backbone + projection head for ``task=retrieval``.

Contrastive training pulls the L2-normalised projection ``z`` of images that share labels
together (Khosla et al., *Supervised Contrastive Learning*, NeurIPS 2020: a 2-layer MLP on the
pooled encoder features, 128-d output). Which vector the retrieval ranks by is a choice:
``embedding="backbone"`` (the pooled backbone features, before the projection; the SupCon paper
discards the head after training and uses these) or ``"projection"`` (``z`` itself, the vector
the loss shaped). Both are compared by cosine similarity.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

#: ``embedding`` option -> the model output retrieval ranks by.
EMBEDDINGS = {"backbone": "features", "projection": "z"}


class ProjectionHead(nn.Module):
    """``Linear(D, hidden) -> ReLU -> Linear(hidden, out_dim)``, then L2 normalisation."""

    def __init__(self, in_features: int, out_dim: int = 128, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = int(hidden_dim) if hidden_dim else int(in_features)
        if out_dim < 1 or hidden < 1:
            raise ValueError(f"projection sizes must be positive, got hidden_dim={hidden}, out_dim={out_dim}")
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, int(out_dim)))

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.mlp(features), dim=-1)


class RetrievalModel(nn.Module):
    """``image -> {"features": B x D, "z": B x d, "embedding": B x D or B x d}``.

    ``image`` may also be ``B x V x C x H x W`` (``V`` augmented views per image); every output
    then has the ``B x V`` leading dimensions. ``embedding`` is the L2-normalised vector that
    retrieval ranks by (see the module docstring). The attribute names ``backbone`` and
    ``head`` are those the training module's optimiser groups and linear probe use.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, embedding: str = "backbone") -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"task.embedding must be one of {sorted(EMBEDDINGS)}, got {embedding!r}")
        self.backbone = backbone
        self.head = head
        self.embedding = embedding

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        leading = image.shape[:-3]
        feature_map = self.backbone(image.reshape(-1, *image.shape[-3:]))
        if feature_map.ndim != 4:
            raise ValueError(f"backbone returned a {feature_map.ndim}-D tensor; a feature map B x D x h x w is needed")
        features = feature_map.mean(dim=(-2, -1))
        out = {"features": features, "z": self.head(features)}
        out["embedding"] = F.normalize(out[EMBEDDINGS[self.embedding]], dim=-1)
        return {k: v.reshape(*leading, v.shape[-1]) for k, v in out.items()}
