"""Under DDP the contrastive losses contrast the union of the processes' batches (2 CPU processes, gloo)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from splml.methods.base import LossContext
from splml.methods.contrastive.base import gather_union_batch
from splml.methods.contrastive.jaccard_supcon import JaccardSupConLoss
from splml.methods.contrastive.macl import MACLLoss
from splml.methods.contrastive.mulsupcon import MulSupConLoss
from splml.methods.contrastive.supcon import SupConLoss

LOSSES = {
    "supcon": lambda gather: SupConLoss(tau=0.2, gather_across_processes=gather),
    "jaccard_supcon": lambda gather: JaccardSupConLoss(tau=0.2, gather_across_processes=gather),
    "mulsupcon": lambda gather: MulSupConLoss(tau=0.2, gather_across_processes=gather),
    "macl": lambda gather: MACLLoss(tau=0.2, alpha=0.7, beta=0.4, gather_across_processes=gather),
    "macl_pair": lambda gather: MACLLoss(
        tau=0.2, alpha=0.7, beta=0.4, denominator="pair", gather_across_processes=gather
    ),
}
#: Images of the union batch per rank: uneven (a last batch), and rank 1 also holds one padded duplicate.
SPLIT = (4, 3)


def _union_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """7 images x 2 views of 6 inputs, and their label sets (5 labels; every image has one)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(sum(SPLIT), 2, 6, generator=gen, dtype=torch.float64)
    labels = torch.rand(sum(SPLIT), 5, generator=gen) < 0.4
    labels[torch.arange(sum(SPLIT)), torch.randint(0, 5, (sum(SPLIT),), generator=gen)] = True
    return x, labels


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(6, 4).double()


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's images (rank 1 gets a duplicate of its first image flagged ``padded``)."""
    x, labels = _union_batch()
    start = sum(SPLIT[:rank])
    own = slice(start, start + SPLIT[rank])
    x, labels, padded = x[own], labels[own], torch.zeros(SPLIT[rank], dtype=torch.bool)
    if rank == 1:
        x, labels = torch.cat([x, x[:1]]), torch.cat([labels, labels[:1]])
        padded = torch.cat([padded, torch.ones(1, dtype=torch.bool)])
    return x, labels, padded


def _loss_and_grads(model: nn.Module, loss, x, labels, padded=None) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    observed = labels.double() * 2 - 1  # annotated negatives (-1) are not labels
    batch = {"observed": observed, "target": labels.double()}
    if padded is not None:
        batch["padded"] = padded
    out = loss({"z": F.normalize(model(x), dim=-1)}, batch, LossContext())
    out["loss"].backward()
    params = model.module.parameters() if isinstance(model, DistributedDataParallel) else model.parameters()
    return float(out["loss"].detach()), [p.grad.detach().clone() for p in params]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = DistributedDataParallel(_model())
        x, labels, padded = _rank_batch(rank)
        results = {}
        for name, make in LOSSES.items():
            for gather in (True, False):
                results[name, gather] = _loss_and_grads(model, make(gather), x, labels, padded)
        z = torch.arange(float(SPLIT[rank]))[:, None].requires_grad_(True)
        joined, joined_labels = gather_union_batch(z, torch.ones(SPLIT[rank], 2, dtype=torch.bool))
        results["gather"] = (joined.detach(), joined_labels)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp_contrastive")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gathered_loss_and_gradients_are_those_of_one_process_on_the_union_batch(two_ranks, name):
    x, labels = _union_batch()
    single_loss, single_grads = _loss_and_grads(_model(), LOSSES[name](True), x, labels)
    for rank, results in enumerate(two_ranks):
        loss, grads = results[name, True]
        assert loss == pytest.approx(single_loss, rel=1e-12), f"rank {rank}"
        # DDP averaged the ranks' gradients: the update is exactly the one-process update.
        for got, expected in zip(grads, single_grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_without_gathering_each_process_contrasts_its_own_batch(two_ranks, name):
    x, labels = _union_batch()
    union_loss, _ = _loss_and_grads(_model(), LOSSES[name](False), x, labels)
    for rank, results in enumerate(two_ranks):
        own_x, own_labels, padded = _rank_batch(rank)
        own_loss, _ = _loss_and_grads(_model(), LOSSES[name](False), own_x, own_labels, padded)
        assert results[name, False][0] == pytest.approx(own_loss, rel=1e-12)
        assert results[name, False][0] != pytest.approx(union_loss, rel=1e-6)


def test_the_gather_keeps_rank_order_and_drops_the_padding(two_ranks):
    for joined, joined_labels in (r["gather"] for r in two_ranks):
        assert joined.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0]
        assert joined_labels.shape == (7, 2) and joined_labels.dtype == torch.bool
    z = torch.arange(4.0)[:, None]
    kept, kept_labels = gather_union_batch(z, torch.eye(4, dtype=torch.bool), torch.tensor([0, 0, 1, 0]).bool())
    assert kept.flatten().tolist() == [0.0, 1.0, 3.0] and kept_labels[:, 2].tolist() == [False, False, False]
