"""SCL: spatial consistency of the class score maps with the per-sample heatmap store."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from splml.methods.base import LossContext, SPMLLoss, require_extra
from splml.methods.papers import VERELST_2023
from splml.methods.registry import register_composition, register_method
from splml.methods.scl.store import HeatmapStore


def spatial_consistency_loss(maps_probs: Tensor, target_maps: Tensor) -> Tensor:
    """Mean over B x L x G x G of ``|F - T|``.

    ``F = sigmoid(spatial logits)`` are the class score maps (B x L x G x G); ``T`` is the stored
    heatmap of each sample, warped by the sample's own crop/flip and resized to G x G by the
    store callback (a constant target). A uint8 target (the store's 0..255 encoding) is scaled to
    ``[0, 1]``. The paper writes an L1 norm; the mean over entries keeps ``gamma`` independent of
    L and G. Verelst et al., *Spatial Consistency Loss for Training Multi-Label Classifiers from
    Single-Label Annotations*, WACV 2023 ("SCL").
    """
    target = target_maps.detach()
    target = target.to(maps_probs.dtype) / 255.0 if target.dtype == torch.uint8 else target.to(maps_probs.dtype)
    if target.shape != maps_probs.shape:
        raise ValueError(f"heatmap targets {tuple(target.shape)} do not match score maps {tuple(maps_probs.shape)}")
    return (maps_probs - target).abs().mean()


@register_method(
    "scl",
    title="SCL",
    summary="spatial consistency of the class score maps with per-sample heatmaps",
    paper=VERELST_2023,
    formula="mean over B x L x G x G of |F - T(H)|, F = sigmoid(maps), T(H) = the stored heatmap warped to the view",
    stores=(HeatmapStore,),
    term=True,
)
class SpatialConsistencyLoss(SPMLLoss):
    """The SCL term alone (trained inside :class:`splml.methods.combined.CombinedLoss`).

    Reads ``outputs["maps"]`` (spatial logits B x L x G x G). Extras: ``heatmap_targets``
    (B x L x G x G, float in [0, 1] or uint8 0..255), already warped and resized to G x G.
    """

    name = "scl"
    requires_extras = ("heatmap_targets",)

    def __init__(
        self,
        heatmap_momentum: float = 0.8,
        topk: int | None = None,
        memmap_dir: str | None = None,
        plot_every_n_epochs: int = 1,
        plot_num_samples: int = 4,
        topk_from_epoch: int = 0,
    ) -> None:
        """The options configure the heatmap store only; they live here so that the method's memory
        is declared next to its formula (momentum of the EMA, top-k classes per image and the epoch
        from which they are chosen, on-disk store).
        """
        super().__init__()
        self.heatmap_momentum = float(heatmap_momentum)
        self.topk = topk
        self.topk_from_epoch = int(topk_from_epoch)
        self.memmap_dir = memmap_dir
        self.plot_every_n_epochs = int(plot_every_n_epochs)
        self.plot_num_samples = int(plot_num_samples)

    def callbacks(self, num_samples: int, num_classes: int) -> list[Any]:
        """The heatmap store that writes ``heatmap_targets`` (see :mod:`splml.methods.scl.store`)."""
        return [
            HeatmapStore(
                num_samples,
                num_classes,
                momentum=self.heatmap_momentum,
                topk=self.topk,
                topk_from_epoch=self.topk_from_epoch,
                memmap_dir=self.memmap_dir,
                plot_every_n_epochs=self.plot_every_n_epochs,
                plot_num_samples=self.plot_num_samples,
            )
        ]

    def forward(self, outputs: dict[str, Tensor], batch: dict[str, Any], ctx: LossContext) -> Tensor:
        if "maps" not in outputs:
            raise KeyError("loss 'scl' needs outputs['maps']: use a model with the spatial head")
        return spatial_consistency_loss(outputs["maps"].sigmoid(), require_extra(batch, "heatmap_targets", self.name))


# base + gamma * SCL (conf/loss/<base>_scl.yaml); EP + SCL is the ablation table's.
register_composition("en", "scl", comparison=True)
register_composition("an", "scl")
register_composition("epr", "scl")
register_composition("ep", "scl")
