"""Per-sample stores: update arithmetic, epoch-level selection, duplicates and checkpoints."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from splml.methods.em.store import SoftNegativeStore
from splml.methods.expected.store import ScoreStore, expected_positive_mask
from splml.methods.large_loss.store import ObservedLabelStore
from splml.methods.role.store import LabelEstimatorStore


class FakeModule:
    device = torch.device("cpu")
    lr = 1e-2

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_dict(self, values, **_):
        self.logged.update(values)

    def log(self, name, value, **_):
        self.logged[name] = value


def fake_trainer(observed: np.ndarray, targets: np.ndarray | None = None, epoch: int = 0, max_epochs: int = 10):
    train = SimpleNamespace(observed=observed.astype(np.float32), targets=targets)
    return SimpleNamespace(
        datamodule=SimpleNamespace(datasets={"train": train}), current_epoch=epoch, max_epochs=max_epochs,
        global_step=0, is_global_zero=True,
    )  # fmt: skip


OBS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
TRUTH = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1], [1, 0, 1]], dtype=np.float32)


def batch_of(idx, observed=OBS, padded=None):
    idx = torch.tensor(idx)
    batch = {"index": idx, "observed": torch.from_numpy(observed)[idx], "extras": {}}
    if padded is not None:
        batch["padded"] = torch.tensor(padded)
    return batch


def outputs_for(probs):
    p = torch.tensor(probs, dtype=torch.float32)
    return {"outputs": {"logits": torch.log(p) - torch.log1p(-p)}}


def test_score_store_ema_update_and_extras():
    store = ScoreStore(4, 3, momentum=0.8, expected_positives=1.0)
    trainer, module = fake_trainer(OBS, TRUTH), FakeModule()
    store.setup(trainer, module, "fit")
    assert torch.equal(store.tensors["scores"], torch.from_numpy(OBS))
    batch = batch_of([0, 2])
    store.on_train_batch_start(trainer, module, batch, 0)
    assert torch.equal(batch["extras"]["ema_scores"], torch.from_numpy(OBS[[0, 2]]))
    assert torch.equal(batch["extras"]["expected_positive"], torch.from_numpy(OBS[[0, 2]] > 0))
    store.on_train_batch_end(trainer, module, outputs_for([[0.5, 0.5, 0.5], [0.1, 0.2, 0.9]]), batch, 0)
    expected_row0 = [0.8 * 1 + 0.2 * 0.5, 0.2 * 0.5, 0.2 * 0.5]
    expected_row2 = [0.8 + 0.2 * 0.1, 0.2 * 0.2, 0.2 * 0.9]
    torch.testing.assert_close(store.tensors["scores"][[0, 2]], torch.tensor([expected_row0, expected_row2]))
    torch.testing.assert_close(store.tensors["scores"][[1, 3]], torch.from_numpy(OBS[[1, 3]]))


def test_duplicate_and_padded_rows_update_once():
    store = ScoreStore(4, 3, momentum=0.5)
    trainer, module = fake_trainer(OBS), FakeModule()
    store.setup(trainer, module, "fit")
    batch = batch_of([1, 1, 3], padded=[False, False, True])
    store.on_train_batch_end(
        trainer, module, outputs_for([[0.2, 0.2, 0.2], [0.9, 0.9, 0.9], [0.5, 0.5, 0.5]]), batch, 0
    )
    torch.testing.assert_close(store.tensors["scores"][1], torch.tensor([0.1, 0.6, 0.1]))  # first occurrence wins
    torch.testing.assert_close(store.tensors["scores"][3], torch.from_numpy(OBS[3]))  # padded row ignored
    assert store.coverage().tolist() == [0, 1, 0, 0]


def test_expected_positive_mask_counts_and_clamping():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.6], [0.5, 0.2]])
    annotated = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.bool)
    mask = expected_positive_mask(scores, annotated, expected_positives=1.5)  # 3 per class
    assert mask[:, 0].tolist() == [True, True, False, True]
    assert mask[:, 1].tolist() == [False, True, True, True]
    huge = expected_positive_mask(scores, annotated, expected_positives=50.0)  # K x count > N: all samples
    assert bool(huge.all())


def test_expected_positives_recomputed_at_epoch_start_with_diagnostics():
    store = ScoreStore(4, 3, momentum=0.0, expected_positives=1.5)
    module = FakeModule()
    store.setup(fake_trainer(OBS, TRUTH), module, "fit")
    store.tensors["scores"] = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.9, 0.1], [0.9, 0.1, 0.7], [0.8, 0.1, 0.9]])
    store.on_train_epoch_start(fake_trainer(OBS, TRUTH, epoch=1), module)
    # class 0: 2 annotated -> 3 expected positives: rows 0, 2, 3; class 1: round(1.5)=2 -> rows 1, 0
    mask = store.tensors["expected_positive"]
    assert mask[:, 0].tolist() == [True, False, True, True]
    assert mask[:, 1].tolist() == [True, True, False, False]
    assert mask[:, 2].tolist() == [False, False, True, True]
    # extra positives: (0,1) true, (3,0) true, (2,2) true -> precision 100, all 3 hidden found
    assert module.logged["diag/extra_positive_precision"] == 100.0
    assert module.logged["diag/extra_positive_recall"] == 100.0
    assert module.logged["diag/false_negatives_penalised"] == 0.0


def test_score_store_checkpoint_round_trip_and_size_check():
    store = ScoreStore(4, 3, momentum=0.8, expected_positives=1.0)
    store.setup(fake_trainer(OBS), FakeModule(), "fit")
    store.tensors["scores"][2, 1] = 0.42
    clone = ScoreStore(4, 3, momentum=0.8, expected_positives=1.0)
    clone.load_state_dict(store.state_dict())
    assert clone.checksum() == store.checksum()
    with pytest.raises(ValueError, match="same dataset"):
        ScoreStore(5, 3).load_state_dict(store.state_dict())


def test_label_store_applies_flips_permanently():
    store = ObservedLabelStore(4, 3)
    trainer, module = fake_trainer(OBS, TRUTH), FakeModule()
    store.setup(trainer, module, "fit")
    batch = batch_of([0, 3])
    flips = torch.tensor([[False, True, False], [True, False, False]])
    store.on_train_batch_end(trainer, module, {"flip_mask": flips}, batch, 0)
    assert store.tensors["observed"][0].tolist() == [1, 1, 0]
    assert store.tensors["observed"][3].tolist() == [1, 0, 1]
    later = batch_of([3, 1])
    store.on_train_batch_start(trainer, module, later, 1)
    assert later["observed"].tolist() == [[1, 0, 1], [0, 1, 0]]
    store.on_train_epoch_start(trainer, module)
    assert module.logged["diag/extra_positive_precision"] == 100.0
    assert module.logged["diag/extra_positives"] == 2.0
    assert module.logged["diag/false_negatives_penalised"] == 1.0  # (2, 2) is still hidden


def test_soft_negative_quota_per_class_and_lowest_probabilities_first():
    observed = np.zeros((10, 2), dtype=np.float32)
    observed[0, 0] = observed[1, 1] = 1
    store = SoftNegativeStore(10, 2, warmup=2, fraction=0.9)
    module = FakeModule()
    store.setup(fake_trainer(observed), module, "fit")
    probs = torch.linspace(0.05, 0.95, 10)
    store.tensors["latest_probs"] = torch.stack([probs, probs.flip(0)], 1)
    store.on_train_epoch_start(fake_trainer(observed, epoch=1, max_epochs=5), module)
    assert not store.tensors["mask"].any(), "nothing before the warm-up"
    store.on_train_epoch_start(fake_trainer(observed, epoch=2, max_epochs=5), module)
    # U_c = 9 unknowns per class, 3 rounds -> floor(0.9 * 9 / 3) = 2 per class per epoch
    assert store.tensors["mask"][:, 0].nonzero().flatten().tolist() == [1, 2]  # row 0 is annotated
    assert store.tensors["mask"][:, 1].nonzero().flatten().tolist() == [8, 9]
    torch.testing.assert_close(store.tensors["target"][1, 0], probs[1])
    store.on_train_epoch_start(fake_trainer(observed, epoch=2, max_epochs=5), module)
    assert int(store.tensors["mask"].sum()) == 4, "an epoch is assigned only once (resume safe)"


def test_role_estimator_initialisation_and_rowwise_adam_matches_torch_adam():
    store = LabelEstimatorStore(4, 3, lr_mult=10.0, seed=3)
    trainer, module = fake_trainer(OBS), FakeModule()
    store.setup(trainer, module, "fit")
    probs = store.tensors["logits"].sigmoid()
    assert torch.allclose(probs[torch.from_numpy(OBS) > 0], torch.tensor(0.995))
    unknown = probs[torch.from_numpy(OBS) == 0]
    assert bool(((unknown >= 0.4 - 1e-6) & (unknown <= 0.6 + 1e-6)).all())
    reference = torch.nn.Parameter(store.tensors["logits"][[1, 2]].clone())
    adam = torch.optim.Adam([reference], lr=module.lr * 10)
    for step in range(3):
        batch = batch_of([1, 2])
        store.on_train_batch_start(trainer, module, batch, step)
        rows = batch["extras"]["role_g_logits"]
        loss = (rows.sigmoid() * torch.tensor([1.0, 2.0, 3.0])).sum()
        loss.backward()
        store.on_train_batch_end(trainer, module, {}, batch, step)
        adam.zero_grad()
        (reference.sigmoid() * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        adam.step()
    torch.testing.assert_close(store.tensors["logits"][[1, 2]], reference.detach(), rtol=1e-5, atol=1e-6)
    assert store.tensors["steps"].tolist() == [0, 3, 3, 0]


def test_role_estimator_without_gradient_is_a_clear_error():
    store = LabelEstimatorStore(4, 3)
    trainer, module = fake_trainer(OBS), FakeModule()
    store.setup(trainer, module, "fit")
    batch = batch_of([0])
    store.on_train_batch_start(trainer, module, batch, 0)
    with pytest.raises(RuntimeError, match="role_g_logits"):
        store.on_train_batch_end(trainer, module, {}, batch, 0)


def test_store_sizes_are_checked_against_the_training_split():
    with pytest.raises(ValueError, match="training split"):
        ScoreStore(5, 3).setup(fake_trainer(OBS), FakeModule(), "fit")
    assert math.isfinite(ScoreStore(4, 3).momentum)
