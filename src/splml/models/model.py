"""Backbone + classifier head. The head is a 1x1 convolution applied before pooling.

Applying the classifier to every position of the feature map and then averaging gives exactly
the logits of a linear layer on the pooled features (both are linear), and it also yields the
per-class score maps spatial methods need. One head therefore serves both uses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialLinearHead(nn.Module):
    """Linear classifier applied as a 1x1 convolution; returns logits and G x G logit maps.

    ``boost_positive`` > 1 turns on BoostLU (Kim et al., *Bridging the Gap between Model
    Explanations in Partially Annotated Multi-label Classification*, CVPR 2023): positive
    class-activation values are multiplied by it before pooling, in training and evaluation,
    which raises the scores of classes present in only part of the image. ``maps`` stay the
    plain class-activation maps.
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, boost_positive: float = 1.0) -> None:
        super().__init__()
        if boost_positive < 1:
            raise ValueError(f"boost_positive must be >= 1 (1 = plain linear head), got {boost_positive}")
        self.classifier = nn.Conv2d(in_features, num_classes, kernel_size=1, bias=bias)
        self.boost_positive = float(boost_positive)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        maps = self.classifier(features)
        pooled = maps if self.boost_positive == 1 else torch.where(maps > 0, maps * self.boost_positive, maps)
        return {"logits": pooled.mean(dim=(-2, -1)), "maps": maps}


class SPMLModel(nn.Module):
    """``image -> {"logits": B x L, "maps": B x L x G x G, "features": B x D}``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        features = self.backbone(image)
        if features.ndim != 4:
            raise ValueError(
                f"backbone returned a {features.ndim}-D tensor; a convolutional feature map (B x D x h x w) "
                "is needed for the spatial head"
            )
        out = self.head(features)
        out["features"] = features.mean(dim=(-2, -1))
        return out
