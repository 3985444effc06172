"""HeatmapStore (SCL): initialisation, crop/flip warping, EMA updates, top-k, memmap, checkpoints, figure.

The hooks are called directly with stand-ins for the trainer and the LightningModule, so the
geometry can be checked against independent slicing + ``F.interpolate`` references quickly.
Geometry used throughout: image side S = 120 px, G = 4, W = 8, so one heatmap cell = 15 px.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splml.methods.scl.figures import plot_heatmaps
from splml.methods.scl.loss import SpatialConsistencyLoss
from splml.methods.scl.store import HeatmapStore

S, G, W = 120, 4, 8
PX = S // W  # pixels per heatmap cell


def fake_trainer(observed: Any, targets: Any = None, step: int = 0, root: Path | None = None) -> SimpleNamespace:
    train = SimpleNamespace(observed=np.asarray(observed, dtype=np.float32), targets=targets)
    return SimpleNamespace(
        datamodule=SimpleNamespace(datasets={"train": train}), global_step=step, current_epoch=0,
        is_global_zero=True, default_root_dir=str(root or Path("/nonexistent")), loggers=[],
    )  # fmt: skip


class FakeModule:
    """What the store uses of a LightningModule: ``device`` and ``log``."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **kwargs: Any) -> None:
        assert kwargs.get("sync_dist") is False
        self.logged[name] = value


def one_hot(classes: list[int], num_classes: int) -> np.ndarray:
    out = np.zeros((len(classes), num_classes), dtype=np.float32)
    out[np.arange(len(classes)), classes] = 1
    return out


def make_batch(
    indices: list[int],
    crop: tuple[int, int, int, int] | None = None,
    flip: bool = False,
    vflip: bool = False,
) -> dict[str, Any]:
    b = len(indices)
    batch: dict[str, Any] = {"index": torch.tensor(indices), "image": torch.zeros(b, 3, S, S)}
    if crop is not None:
        batch["aug"] = {
            "crop": torch.tensor([crop] * b),
            "flip": torch.tensor([flip] * b),
            "vflip": torch.tensor([vflip] * b),
        }
    return batch


def logit(p: Tensor | float) -> Tensor:
    p = torch.as_tensor(p, dtype=torch.float32)
    return torch.log(p / (1 - p))


def step_outputs(probs_maps: Tensor, logits: Tensor | None = None) -> dict[str, Any]:
    maps = logit(probs_maps)
    return {"outputs": {"maps": maps, "logits": maps.mean(dim=(-2, -1)) if logits is None else logits}}


def started(store: HeatmapStore, trainer: SimpleNamespace, batch: dict[str, Any]) -> Tensor:
    store.on_train_batch_start(trainer, FakeModule(), batch, 0)
    return batch["extras"]["heatmap_targets"]


def test_initialisation_and_identity_targets() -> None:
    observed = one_hot([2, 0, 3], 4)
    store = HeatmapStore(3, 4, grid_size=G)
    targets = started(store, fake_trainer(observed), make_batch([0, 1, 2]))
    heat = store.heatmaps
    assert heat is not None and heat.dtype == torch.uint8 and tuple(heat.shape) == (3, 4, W, W)
    expected = torch.from_numpy(observed).bool()[:, :, None, None].expand(3, 4, W, W)
    assert torch.equal(heat == 255, expected) and torch.equal(heat == 0, ~expected)
    assert targets.dtype == torch.float32 and tuple(targets.shape) == (3, 4, G, G)
    assert torch.equal(targets, expected[:, :, :G, :G].float())


def reference_target(heat: Tensor, crop: tuple[int, int, int, int], flip: bool, vflip: bool) -> Tensor:
    """Slice the cells of an integer-aligned box, flip, resize: how the image itself is made."""
    top, left, h, w = (v // PX for v in crop)
    region = heat[:, :, top : top + h, left : left + w].float()
    if flip:
        region = region.flip(-1)
    if vflip:
        region = region.flip(-2)
    return F.interpolate(region, size=(G, G), mode="bilinear", align_corners=False) / 255.0


@pytest.mark.parametrize(
    ("crop", "flip", "vflip"),
    [
        ((0, 0, 120, 120), False, False),  # full image: 8 -> 4 cells
        ((0, 0, 120, 60), False, False),  # left half
        ((60, 60, 60, 60), False, False),  # a quarter (bottom right), 1:1 cells
        ((0, 60, 120, 60), True, False),  # right half, mirrored
        ((30, 0, 90, 120), False, True),  # lower part, upside down: 6 -> 4 cells
        ((15, 30, 30, 30), True, True),  # 2 x 2 cells upsampled: clamping at the box border
    ],
)
def test_forward_warp_matches_slice_flip_resize(crop: tuple[int, int, int, int], flip: bool, vflip: bool) -> None:
    store = HeatmapStore(2, 3, grid_size=G)
    trainer = fake_trainer(one_hot([0, 1], 3))
    started(store, trainer, make_batch([0, 1]))
    pattern = torch.randint(0, 256, (2, 3, W, W), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    store.heatmaps[:] = pattern
    targets = started(store, trainer, make_batch([1, 0], crop, flip, vflip))
    expected = reference_target(pattern[[1, 0]], crop, flip, vflip)
    torch.testing.assert_close(targets, expected, atol=1e-5, rtol=0)


def test_forward_warp_fractional_box_on_a_linear_ramp() -> None:
    """Bilinear sampling of a ramp is exact, so a fractional box has a closed-form target."""
    store = HeatmapStore(1, 1, grid_size=G)
    trainer = fake_trainer(one_hot([0], 1))
    started(store, trainer, make_batch([0]))
    store.heatmaps[0, 0] = (20 * torch.arange(W)).to(torch.uint8)[None, :].expand(W, W)
    top, left, h, w = 0, 7, 120, 50
    targets = started(store, trainer, make_batch([0], (top, left, h, w)))
    x0, x1 = left * W / S, (left + w) * W / S
    centres = x0 + (np.arange(G) + 0.5) / G * (x1 - x0)
    centres = np.clip(centres, x0 + 0.5, x1 - 0.5)  # no sample reaches outside the visible crop
    expected = 20 * (centres - 0.5) / 255
    torch.testing.assert_close(targets[0, 0], torch.tensor(expected, dtype=torch.float32)[None].expand(G, G))


def test_update_moves_visible_cells_by_the_ema_and_keeps_the_rest() -> None:
    store = HeatmapStore(2, 2, momentum=0.8, grid_size=G)
    trainer = fake_trainer(one_hot([0, 1], 2))
    batch = make_batch([0, 1], crop=(60, 0, 60, 60), vflip=True)  # bottom-left quarter
    started(store, trainer, batch)
    store.heatmaps[:] = 100
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(torch.full((2, 2, G, G), 0.6)), batch, 0)
    inside = torch.zeros(W, W, dtype=torch.bool)
    inside[4:, :4] = True
    heat = store.heatmaps
    assert (heat[:, :, inside] == round(0.8 * 100 + 0.2 * 255 * 0.6)).all()
    assert (heat[:, :, ~inside] == 100).all()


def test_flipped_update_lands_on_the_mirrored_side() -> None:
    store = HeatmapStore(1, 1, momentum=0.0, grid_size=G)
    trainer = fake_trainer(one_hot([0], 1))
    batch = make_batch([0], crop=(0, 0, 120, 60), flip=True)  # left half of the image, mirrored
    started(store, trainer, batch)
    view = torch.full((1, 1, G, G), 0.2)
    view[..., :2] = 0.8  # the view's left side is the crop's right side
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(view), batch, 0)
    heat = store.heatmaps[0, 0]
    assert (heat[:, 2:4] == 204).all() and (heat[:, 0:2] == 51).all()
    assert (heat[:, 4:] == 255).all()  # the annotated class's untouched right half


def test_round_trip_identity_and_flipped_crop() -> None:
    probs = torch.rand(2, 3, G, G, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    trainer = fake_trainer(one_hot([0, 2], 3))

    # identity crop, mu = 0: the store holds the bilinear resize of F
    store = HeatmapStore(2, 3, momentum=0.0, grid_size=G)
    batch = make_batch([0, 1])
    started(store, trainer, batch)
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(probs), batch, 0)
    resized = (255 * F.interpolate(probs, size=(W, W), mode="bilinear", align_corners=False)).round()
    diff = (store.heatmaps.float() - resized).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99

    # many updates with mu = 0.5 converge to the same maps (within the uint8 rounding)
    store = HeatmapStore(2, 3, momentum=0.5, grid_size=G)
    started(store, trainer, batch)
    for _ in range(12):
        store.on_train_batch_end(trainer, FakeModule(), step_outputs(probs), batch, 0)
    assert (store.heatmaps.float() - resized).abs().max() <= 1

    # crop with both flips, cells 1:1: warping the update back gives F (up to 0.5 / 255)
    store = HeatmapStore(2, 3, momentum=0.0, grid_size=G)
    batch = make_batch([0, 1], crop=(60, 0, 60, 60), flip=True, vflip=True)
    started(store, trainer, batch)
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(probs), batch, 0)
    back = started(store, trainer, make_batch([0, 1], crop=(60, 0, 60, 60), flip=True, vflip=True))
    assert (back - probs).abs().max() <= 0.5 / 255 + 1e-6


def test_topk_chooses_annotated_then_highest_scores_and_zeros_untracked() -> None:
    observed = one_hot([1, 4], 5)
    trainer = fake_trainer(observed)
    store = HeatmapStore(2, 5, momentum=0.8, grid_size=G, topk=3)
    full = HeatmapStore(2, 5, momentum=0.8, grid_size=G)
    batch = make_batch([0, 1])
    before = started(store, trainer, batch)
    started(full, trainer, make_batch([0, 1]))
    assert store.classes.tolist() == [[1, -1, -1], [4, -1, -1]]
    assert torch.equal(before, torch.from_numpy(observed)[:, :, None, None].expand(2, 5, G, G))

    image_probs = torch.tensor([[0.5, 0.9, 0.1, 0.7, 0.3], [0.6, 0.2, 0.8, 0.1, 0.95]])
    maps = image_probs[:, :, None, None].expand(2, 5, G, G).clone()
    outputs = step_outputs(maps, logits=logit(image_probs))
    store.on_train_batch_end(trainer, FakeModule(), outputs, batch, 0)
    full.on_train_batch_end(trainer, FakeModule(), outputs, batch, 0)
    assert store.classes.tolist() == [[1, 3, 0], [4, 2, 0]]

    # later forwards do not change the tracked classes
    flipped = step_outputs(maps.flip(1), logits=logit(image_probs.flip(1)))
    store.on_train_batch_end(trainer, FakeModule(), flipped, batch, 0)
    full.on_train_batch_end(trainer, FakeModule(), flipped, batch, 0)
    assert store.classes.tolist() == [[1, 3, 0], [4, 2, 0]]

    topk_targets = started(store, trainer, make_batch([0, 1]))
    full_targets = started(full, trainer, make_batch([0, 1]))
    tracked = torch.zeros(2, 5, dtype=torch.bool)
    tracked.scatter_(1, store.classes, True)
    assert (topk_targets[~tracked] == 0).all()
    torch.testing.assert_close(topk_targets[tracked], full_targets[tracked])
    assert store.estimate_bytes(2, 5, G, topk=3) == 2 * 3 * (W * W + 8) == store.bytes_per_sample() * 2


def test_duplicate_indices_keep_the_first_occurrence() -> None:
    store = HeatmapStore(2, 1, momentum=0.0, grid_size=G)
    trainer = fake_trainer(one_hot([0, 0], 1))
    batch = make_batch([0, 1, 0])  # sample 0 repeated, as distributed padding does
    started(store, trainer, batch)
    probs = torch.tensor([0.2, 0.6, 0.8])[:, None, None, None].expand(3, 1, G, G)
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(probs), batch, 0)
    assert (store.heatmaps[0] == 51).all() and (store.heatmaps[1] == 153).all()


@pytest.mark.parametrize("topk", [None, 2])
def test_rows_the_sampler_added_as_padding_are_not_applied(topk: int | None) -> None:
    """Sample 1 arrives only as a padding repeat (its real visit is on another rank, or later):
    its maps, tracked classes and update count stay as they were; sample 0 is updated once."""
    store = HeatmapStore(2, 3, momentum=0.0, grid_size=G, topk=topk)
    trainer = fake_trainer(one_hot([0, 1], 3))
    batch = make_batch([1, 0])
    batch["padded"] = torch.tensor([True, False])
    started(store, trainer, batch)
    before = store.state_dict()["tensors"]
    probs = torch.full((2, 3, G, G), 0.6)
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(probs), batch, 0)
    assert torch.equal(store.heatmaps[1], before["maps"][1]), "a padded row changed the store"
    assert not torch.equal(store.heatmaps[0], before["maps"][0])
    if topk is not None:
        assert store.classes[1].tolist() == before["classes"][1].tolist() == [1, -1]
        assert store.classes[0].tolist() == [0, 1]
    assert store.coverage().tolist() == [1, 0]


def updated_store(**kwargs: Any) -> tuple[HeatmapStore, SimpleNamespace]:
    trainer = fake_trainer(one_hot([0, 2, 1], 3), step=5)
    store = HeatmapStore(3, 3, momentum=0.5, grid_size=G, **kwargs)
    batch = make_batch([2, 0], crop=(0, 30, 90, 90), flip=True)
    started(store, trainer, batch)
    probs = torch.rand(2, 3, G, G, generator=torch.Generator().manual_seed(2))
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(probs), batch, 0)
    return store, trainer


def test_ram_checkpoint_round_trip() -> None:
    store, trainer = updated_store(topk=2)
    state = store.state_dict()
    assert "maps" in state["tensors"] and "classes" in state["tensors"]
    restored = HeatmapStore(3, 3, momentum=0.5, topk=2)
    restored.load_state_dict(state)
    assert torch.equal(restored.heatmaps, store.heatmaps) and torch.equal(restored.classes, store.classes)
    assert restored.grid_size == G and restored.meta == store.meta
    crop = (15, 15, 75, 90)
    torch.testing.assert_close(
        started(restored, trainer, make_batch([0, 1, 2], crop)), started(store, trainer, make_batch([0, 1, 2], crop))
    )
    with pytest.raises(ValueError, match="topk"):
        HeatmapStore(3, 3, topk=None).load_state_dict(state)


def test_memmap_store_persists_and_checkpoints_by_snapshot(tmp_path: Path) -> None:
    live_dir = tmp_path / "store"
    store, trainer = updated_store(memmap_dir=str(live_dir))
    live = live_dir / "heatmaps.uint8"
    assert live.stat().st_size == 3 * 3 * W * W
    store.flush()
    on_disk = np.memmap(live, dtype=np.uint8, mode="r", shape=(3, 3, W, W))
    assert np.array_equal(on_disk, store.heatmaps.numpy()) and on_disk[0, 0].min() < 255  # the update reached disk

    state = store.state_dict()
    assert "maps" not in state["tensors"]
    snapshot = Path(state["memmap"]["path"])
    assert snapshot.name == "heatmaps-step5.uint8" and snapshot.stat().st_size == live.stat().st_size
    saved = store.heatmaps.clone()

    batch = make_batch([0, 1])
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(torch.full((2, 3, G, G), 0.3)), batch, 0)
    assert not torch.equal(store.heatmaps, saved)

    restored = HeatmapStore(3, 3, momentum=0.5, memmap_dir=str(tmp_path / "other"))
    restored.load_state_dict(state)
    assert torch.equal(restored.heatmaps, saved)
    assert (tmp_path / "other" / "heatmaps.uint8").exists()

    # only the two most recent snapshots stay on disk
    for step in (6, 7):
        trainer.global_step = step
        store.on_train_batch_end(trainer, FakeModule(), step_outputs(torch.full((2, 3, G, G), 0.1 * step)), batch, 0)
        latest = store.state_dict()
    assert sorted(p.name for p in live_dir.glob("heatmaps-step*.uint8")) == [
        "heatmaps-step6.uint8",
        "heatmaps-step7.uint8",
    ]
    with pytest.raises(FileNotFoundError, match="missing") as missing:
        HeatmapStore(3, 3, memmap_dir=str(tmp_path / "third")).load_state_dict(state)
    assert f"copy {state['memmap']['file']} into {tmp_path / 'third'}" in str(missing.value)
    # A snapshot put into the run's memmap_dir (a moved run folder) is found there.
    (tmp_path / "third").mkdir()
    shutil.copy(latest["memmap"]["path"], tmp_path / "third" / latest["memmap"]["file"])
    moved = HeatmapStore(3, 3, momentum=0.5, memmap_dir=str(tmp_path / "third"))
    moved.load_state_dict({**latest, "memmap": {**latest["memmap"], "path": str(tmp_path / "gone" / "x.uint8")}})
    assert torch.equal(moved.heatmaps, store.heatmaps)

    latest_file = Path(latest["memmap"]["path"])
    data = bytearray(latest_file.read_bytes())
    data[17] ^= 0xFF
    latest_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        HeatmapStore(3, 3, memmap_dir=str(tmp_path / "fourth")).load_state_dict(latest)


def test_memmap_restore_is_deferred_outside_fitting(tmp_path: Path) -> None:
    """``trainer.test(ckpt_path=best)`` restores callbacks too; a pruned snapshot must not break it."""
    store, _ = updated_store(memmap_dir=str(tmp_path / "a"))
    state = store.state_dict()
    Path(state["memmap"]["path"]).unlink()
    testing = HeatmapStore(3, 3, memmap_dir=str(tmp_path / "b"))
    testing.setup(None, None, "test")  # type: ignore[arg-type]
    testing.load_state_dict(state)  # no error: the heatmaps are not needed to test


class TinySpatialModel(nn.Module):
    """Conv + BatchNorm giving G x G maps, to check the grid-size probe leaves no trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=30, stride=30)
        self.norm = nn.BatchNorm2d(2)
        self.logged: dict[str, float] = {}

    @property
    def device(self) -> torch.device:
        return self.conv.weight.device

    def log(self, name: str, value: float, **kwargs: Any) -> None:
        self.logged[name] = value

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        maps = self.norm(self.conv(image))
        return {"maps": maps, "logits": maps.mean(dim=(-2, -1))}


def test_grid_and_image_size_inferred_from_the_first_batch() -> None:
    module = TinySpatialModel().train()
    module.norm.eval()  # a frozen BatchNorm must stay frozen
    stats = module.norm.running_mean.clone()
    store = HeatmapStore(2, 2)
    batch = make_batch([0, 1])
    batch["image"] = torch.randn(2, 3, S, S)
    store.on_train_batch_start(fake_trainer(one_hot([0, 1], 2)), module, batch, 0)
    assert store.grid_size == G and store.width == W and store.meta["image_size"] == [S, S]
    assert tuple(batch["extras"]["heatmap_targets"].shape) == (2, 2, G, G)
    assert module.training and module.conv.training and not module.norm.training
    assert torch.equal(module.norm.running_mean, stats)


def test_epoch_diagnostics_and_plot(tmp_path: Path) -> None:
    observed = one_hot([0, 1], 3)
    targets = np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32)
    store = HeatmapStore(2, 3, momentum=0.0, grid_size=G)
    trainer = fake_trainer(observed, targets, root=tmp_path)
    batch = make_batch([0, 1])
    started(store, trainer, batch)
    probs = torch.tensor([[0.8, 0.6, 0.2], [0.2, 0.8, 0.6]])[:, :, None, None].expand(2, 3, G, G)
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(probs), batch, 0)
    module = FakeModule()
    store.on_train_epoch_end(trainer, module)
    assert math.isclose(module.logged["diag/heatmap_annotated"], round(0.8 * 255) / 255, abs_tol=1e-6)
    assert math.isclose(module.logged["diag/heatmap_unannotated_positive"], round(0.6 * 255) / 255, abs_tol=1e-6)
    assert math.isclose(module.logged["diag/heatmap_negative"], round(0.2 * 255) / 255, abs_tol=1e-6)
    epoch_png = tmp_path / "heatmaps" / "epoch_000.png"
    assert epoch_png.read_bytes()[:4] == b"\x89PNG", "the epoch's heatmap figure is written next to the run"

    no_truth = FakeModule()
    store.on_train_epoch_end(fake_trainer(observed), no_truth)
    assert set(no_truth.logged) == {"diag/heatmap_annotated"}

    out = plot_heatmaps(store, [0, 1], ["a", "b", "c"], tmp_path / "plots" / "heatmaps.png", torch.from_numpy(targets))
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"


def test_memory_estimates_and_loss_declares_the_store(tmp_path: Path) -> None:
    assert HeatmapStore.estimate_bytes(82081, 80, 14) == 82081 * 80 * 28 * 28
    assert HeatmapStore.estimate_bytes(10, 80, 14, topk=5) == 10 * 5 * (28 * 28 + 8)
    with pytest.raises(ValueError, match="grid_size"):
        HeatmapStore(1, 1).bytes_per_sample()
    (callback,) = SpatialConsistencyLoss(heatmap_momentum=0.6, topk=2, memmap_dir=str(tmp_path)).callbacks(7, 4)
    assert isinstance(callback, HeatmapStore)
    assert (callback.momentum, callback.topk, callback.memmap_dir) == (0.6, 2, tmp_path.resolve())
    assert (callback.num_samples, callback.num_classes) == (7, 4)


def test_topk_classes_are_chosen_only_from_topk_from_epoch_on() -> None:
    """The paper keeps the 10 top-scoring classes *after the warm-up*: before topk_from_epoch only the
    annotated maps are updated, and the other slots are filled at the first update from then on."""
    observed = one_hot([1, 4], 5)
    trainer = fake_trainer(observed)
    store = HeatmapStore(2, 5, momentum=0.5, grid_size=G, topk=3, topk_from_epoch=2)
    batch = make_batch([0, 1])
    started(store, trainer, batch)
    image_probs = torch.tensor([[0.5, 0.9, 0.1, 0.7, 0.3], [0.6, 0.2, 0.8, 0.1, 0.95]])
    maps = image_probs[:, :, None, None].expand(2, 5, G, G).clone()
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(maps, logits=logit(image_probs)), batch, 0)
    assert store.classes.tolist() == [[1, -1, -1], [4, -1, -1]]  # warm-up: nothing chosen
    assert (store.heatmaps[:, 1:] == 0).all() and (store.heatmaps[0, 0] == 242).all()  # 0.5*255 + 0.5*0.9*255
    trainer.current_epoch = 2
    later = torch.tensor([[0.1, 0.9, 0.8, 0.2, 0.7], [0.6, 0.2, 0.1, 0.3, 0.95]])
    maps = later[:, :, None, None].expand(2, 5, G, G).clone()
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(maps, logits=logit(later)), batch, 0)
    assert store.classes.tolist() == [[1, 2, 4], [4, 0, 3]]  # chosen from the scores after the warm-up
    assert (store.heatmaps[0, 1] == round(0.5 * 255 * 0.8)).all()


def test_initial_classes_in_chunks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import splml.methods.scl.store as store_module

    rng = np.random.default_rng(0)
    annotated = torch.from_numpy(rng.random((50, 7)) < 0.2)
    store = HeatmapStore(50, 7, topk=3)
    ids = torch.arange(7)
    order = torch.argsort(torch.where(annotated, ids, ids + 7), dim=1)[:, :3]
    expected = torch.where(annotated.gather(1, order), order, torch.full_like(order, -1))
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 16 * 7 * 4)  # 4 rows per chunk
    assert torch.equal(store._initial_classes(annotated), expected)


@pytest.mark.parametrize("topk", [None, 2])
def test_streamed_diagnostics_equal_the_means_over_all_entries(monkeypatch: pytest.MonkeyPatch, topk) -> None:
    import splml.methods.scl.store as store_module

    rng = np.random.default_rng(1)
    n, num_classes = 9, 4
    observed = one_hot(list(rng.integers(0, num_classes, n)), num_classes)
    truth = np.maximum(observed, rng.random((n, num_classes)) < 0.4).astype(np.uint8)
    trainer = fake_trainer(observed, truth)
    store = HeatmapStore(n, num_classes, momentum=0.3, grid_size=G, topk=topk, plot_every_n_epochs=0)
    batch = make_batch(list(range(n)))
    started(store, trainer, batch)
    probs = torch.from_numpy(rng.random((n, num_classes, G, G))).float()
    store.on_train_batch_end(trainer, FakeModule(), step_outputs(probs), batch, 0)
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 3 * W * W * num_classes)  # 3 samples per chunk
    module = FakeModule()
    store.on_train_epoch_end(trainer, module)
    means = store.class_means()  # the whole N x L table, as before
    obs, pos = torch.from_numpy(observed) > 0.5, torch.from_numpy(truth) > 0
    for name, mask in (("annotated", obs), ("unannotated_positive", pos & ~obs), ("negative", ~pos & ~obs)):
        assert module.logged[f"diag/heatmap_{name}"] == pytest.approx(float(means[mask].double().mean()), abs=1e-6)
