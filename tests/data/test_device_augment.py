"""A data path that feeds a GPU: loader defaults of the GPU trainers, crops and flips applied to the batch on the device."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException

from splml.builders import build_datamodule
from splml.data.transforms import DeferredSpatialAugment, RecordedSpatialAugment, apply_recorded_augment
from tests.helpers import compose_train

CONFIGS = [
    {"crop_scale": None, "hflip": True, "vflip": True},
    {"crop_scale": (0.3, 1.0), "hflip": True, "vflip": True},
    {"crop_scale": (0.05, 0.2), "crop_ratio": (0.2, 5.0), "hflip": True, "vflip": False},  # some whole-image fallbacks
]


@pytest.mark.parametrize("config", CONFIGS)
def test_device_path_records_the_same_draws_and_gives_the_same_pixels(config):
    on_loader, deferred = RecordedSpatialAugment(**config), DeferredSpatialAugment(24, **config)
    expected, records, images = [], [], []
    for index in range(16):
        image = torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(100 + index))
        expected.append(on_loader({"image": image.clone()}, torch.Generator().manual_seed(index)))
        item = deferred({"image": image.clone()}, torch.Generator().manual_seed(index))
        assert torch.equal(item["image"], image), "the loader must leave the pixels to the device"
        assert item["augment_on_device"] is True
        records.append(item["aug"])
        images.append(item["image"])
    for want, got in zip(expected, records, strict=True):
        assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in want["aug"].items()}
    batch_aug = torch.utils.data.default_collate(records)
    out = apply_recorded_augment(torch.stack(images), batch_aug)
    torch.testing.assert_close(out, torch.stack([e["image"] for e in expected]), rtol=1e-5, atol=1e-5)


def test_views_are_augmented_with_their_own_records():
    config = {"crop_scale": (0.3, 1.0), "hflip": True, "vflip": True}
    on_loader = RecordedSpatialAugment(**config)
    images = torch.randn(2, 3, 3, 16, 16)  # B x V x C x H x W
    seeds = torch.arange(6).view(2, 3)
    expected = torch.stack(
        [
            torch.stack(
                [
                    on_loader({"image": images[b, v].clone()}, torch.Generator().manual_seed(int(seeds[b, v])))["image"]
                    for v in range(3)
                ]
            )
            for b in range(2)
        ]
    )
    deferred = DeferredSpatialAugment(16, **config)
    records = [
        [deferred({"image": images[b, v]}, torch.Generator().manual_seed(int(seeds[b, v])))["aug"] for v in range(3)]
        for b in range(2)
    ]
    aug = {k: torch.stack([torch.stack([r[k] for r in row]) for row in records]) for k in records[0][0]}
    torch.testing.assert_close(apply_recorded_augment(images, aug), expected, rtol=1e-5, atol=1e-5)


def test_deferred_augment_refuses_an_item_of_another_size():
    with pytest.raises(ValueError, match=r"set up for \(24, 24\) images, got an item of \(16, 16\)"):
        DeferredSpatialAugment(24, crop_scale=(0.5, 1.0))({"image": torch.zeros(3, 16, 16)})


def _first_train_batch(tmp_path, *overrides: str) -> dict:
    cfg = compose_train(
        tmp_path, "dataset.datamodule.augment.crop_scale=[0.3,1.0]", "dataset.datamodule.image_size=24", *overrides
    )
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    return datamodule.on_after_batch_transfer(batch, 0)


def test_datamodule_batches_on_the_device_equal_those_of_the_loader(tmp_path):
    on_loader = _first_train_batch(tmp_path, "dataset.datamodule.augment_on_device=false")
    on_device = _first_train_batch(tmp_path, "dataset.datamodule.augment_on_device=true")
    assert "augment_on_device" not in on_device
    assert set(on_device) == set(on_loader)
    for key in ("crop", "flip", "vflip"):
        assert torch.equal(on_device["aug"][key], on_loader["aug"][key]), key
    assert not (on_loader["aug"]["crop"] == torch.tensor([0, 0, 24, 24])).all(), "no crop was drawn"
    torch.testing.assert_close(on_device["image"], on_loader["image"], rtol=1e-5, atol=1e-4)
    assert torch.equal(on_device["index"], on_loader["index"])


def test_gpu_trainers_tune_the_loader_and_the_command_line_still_wins(tmp_path):
    cpu = compose_train(tmp_path, "trainer=cpu").dataset.datamodule
    assert (cpu.num_workers, cpu.pin_memory, cpu.prefetch_factor, cpu.augment_on_device) == (0, False, None, False)
    for trainer in ("gpu", "ddp"):
        gpu = compose_train(tmp_path, f"trainer={trainer}").dataset.datamodule
        assert (gpu.num_workers, gpu.pin_memory, gpu.persistent_workers) == (8, True, True), trainer
        assert (gpu.prefetch_factor, gpu.augment_on_device) == (4, "auto"), trainer
    mine = compose_train(tmp_path, "trainer=gpu", "dataset.datamodule.num_workers=3").dataset.datamodule
    assert mine.num_workers == 3 and mine.prefetch_factor == 4
    kept = compose_train(tmp_path, "trainer=gpu", "loader=default").dataset.datamodule
    assert (kept.num_workers, kept.prefetch_factor) == (0, None)


def test_loader_options_reach_the_dataloader(tmp_path):
    cfg = compose_train(
        tmp_path, "dataset.datamodule.num_workers=1", "dataset.datamodule.prefetch_factor=3",
        "dataset.datamodule.persistent_workers=true",
    )  # fmt: skip
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers) == (1, 3, True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.datamodule.prefetch_factor=0", r"prefetch_factor must be an integer >= 1"),
        ("dataset.datamodule.augment_on_device=sometimes", r"augment_on_device must be true, false or auto"),
    ],
)
def test_bad_loader_options_are_named(tmp_path, override, message):
    with pytest.raises(InstantiationException, match=message):  # Hydra's wrapper of the datamodule's ValueError
        build_datamodule(compose_train(tmp_path, override))


def test_lightning_applies_the_augmentation_after_the_transfer(tmp_path):
    import lightning as L

    from splml.builders import build_module

    cfg = compose_train(
        tmp_path, "dataset.datamodule.augment_on_device=true", "dataset.datamodule.image_size=24",
        "dataset.datamodule.augment.crop_scale=[0.3,1.0]",
    )  # fmt: skip
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    expected = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)["image"]
    seen: list[dict] = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})

    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, callbacks=[Spy()],
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule)
    assert seen and "augment_on_device" not in seen[0]
    torch.testing.assert_close(seen[0]["image"], expected)


def test_datamodules_that_crop_from_full_resolution_sources_refuse_device_augmentation():
    from splml.data.datamodules.base import SplitDataModule

    augment = {"crop_scale": (0.5, 1.0)}
    with pytest.raises(ValueError, match=r"augment_on_device=true: SplitDataModule cuts its training crops"):
        SplitDataModule(augment=augment, augment_on_device=True)
    assert SplitDataModule(augment=augment, augment_on_device="auto").augment_on_device is False
