"""Several augmented views of each training image, for contrastive training (``task.train_views``).

Each view goes through the dataset's own item path (:func:`splml.data.sampler.sample_item` and
its recorded augmentation), so view ``v`` of sample ``i`` in an epoch is drawn from its own seed,
derived from the sampler's per-item seed: view 0 is exactly the single-view item, and the draws
depend on (seed, epoch, index, view) only, so a resumed run repeats them.
"""

from __future__ import annotations

from typing import Any

import torch

from splml.data.sampler import item_seed


class MultiViewDataset(torch.utils.data.Dataset):
    """Wraps a training dataset: ``image`` becomes ``V x C x H x W``, each ``aug`` entry gets a leading V.

    The other keys (``target``, ``observed``, ``index``, ``padded``) are those of the image.
    Needs a dataset with a training ``transform``: without augmentation every view would be the
    same picture, which a contrastive loss cannot learn from.
    """

    def __init__(self, dataset: Any, views: int) -> None:
        if views < 2:
            raise ValueError(f"MultiViewDataset needs at least 2 views, got {views}")
        if getattr(dataset, "transform", None) is None:
            raise ValueError(
                f"{views} training views need training augmentation, but the training split has none; "
                "set dataset.datamodule.augment (e.g. crop_scale: [0.5, 1.0]) or task.train_views=1"
            )
        self.dataset = dataset
        self.views = int(views)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int, bool]) -> dict[str, Any]:
        index, seed, padded = key if isinstance(key, tuple) else (key, None, False)
        items = []
        for view in range(self.views):
            view_seed = seed if view == 0 or seed is None else item_seed(seed, view, index)
            items.append(self.dataset[(index, view_seed, padded)] if seed is not None else self.dataset[index])
        first = dict(items[0])
        first["image"] = torch.stack([item["image"] for item in items])
        if "aug" in first:
            first["aug"] = {k: torch.stack([item["aug"][k] for item in items]) for k in first["aug"]}
        return first
