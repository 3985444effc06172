"""The retrieval losses against plain loops over anchors and positives, and their invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from splml.methods.base import LossContext
from splml.methods.contrastive.jaccard_supcon import JaccardSupConLoss, jaccard_supcon_loss
from splml.methods.contrastive.macl import MACLLoss, label_rarity, macl_loss, pair_weights
from splml.methods.contrastive.mulsupcon import MulSupConLoss, mulsupcon_loss
from splml.methods.contrastive.supcon import SupConLoss, supcon_loss

LOSSES = {
    "supcon": lambda z, y: supcon_loss(z, y, 0.2),
    "jaccard_supcon": lambda z, y: jaccard_supcon_loss(z, y, 0.2),
    "mulsupcon": lambda z, y: mulsupcon_loss(z, y, 0.2),
    "macl": lambda z, y: macl_loss(z, y, 0.2, alpha=0.7, beta=0.4)["loss"],
    "macl_pair": lambda z, y: macl_loss(z, y, 0.2, alpha=0.7, beta=0.4, denominator="pair")["loss"],
}


def _batch(seed: int, n: int = 12, num_labels: int = 5, dim: int = 6):
    gen = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.rand(n, num_labels, generator=gen) < 0.35
    labels[torch.arange(n), torch.randint(0, num_labels, (n,), generator=gen)] = True  # every row has a label
    labels[0] = False
    labels[0, -1] = True  # label L-1 on row 0 only: an anchor that may have no positive
    labels[1:, -1] = False
    return z, labels


def _log_softmax_row(z, i, temps):
    """log of exp(s_ip) / sum_{a != i} exp(s_ia) for every p, with s_ia = z_i.z_a / temps[a]."""
    s = [float(z[i] @ z[a]) / temps[a] if a != i else -math.inf for a in range(len(z))]
    log_norm = math.log(sum(math.exp(v) for v in s if v != -math.inf))
    return [v - log_norm for v in s]


def _loop_weighted(z, labels, weight, temperature):
    """mean over anchors with positives of -(1/sum w) sum_p w_ip log_softmax_ip (plain Python)."""
    n = len(z)
    losses = []
    for i in range(n):
        temps = [temperature(i, a) for a in range(n)]
        log_p = _log_softmax_row(z, i, temps)
        w = [weight(i, p) if p != i else 0.0 for p in range(n)]
        if sum(w) > 0:
            losses.append(-sum(wp * lp for wp, lp in zip(w, log_p, strict=True) if wp) / sum(w))
    return sum(losses) / len(losses)


def _sets(labels):
    return [set(torch.nonzero(row).flatten().tolist()) for row in labels]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supcon_matches_a_loop_over_positives(seed):
    z, labels = _batch(seed)
    sets = _sets(labels)
    expected = _loop_weighted(z, labels, lambda i, p: float(bool(sets[i] & sets[p])), lambda i, a: 0.2)
    assert float(supcon_loss(z, labels, 0.2)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_jaccard_supcon_weights_positives_by_overlap(seed):
    z, labels = _batch(seed)
    sets = _sets(labels)

    def jaccard(i, p):
        return len(sets[i] & sets[p]) / len(sets[i] | sets[p])

    expected = _loop_weighted(z, labels, jaccard, lambda i, a: 0.2)
    assert float(jaccard_supcon_loss(z, labels, 0.2)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mulsupcon_is_one_anchor_per_sample_and_label(seed):
    z, labels = _batch(seed)
    sets = _sets(labels)
    per_anchor = []
    for i, own in enumerate(sets):
        log_p = _log_softmax_row(z, i, [0.2] * len(z))
        for label in sorted(own):
            positives = [p for p in range(len(z)) if p != i and label in sets[p]]
            if positives:
                per_anchor.append(-sum(log_p[p] for p in positives) / len(positives))
    assert float(mulsupcon_loss(z, labels, 0.2)) == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-10)
    # Multi-label anchors make it differ from SupCon (same positives, other grouping).
    assert float(mulsupcon_loss(z, labels, 0.2)) != pytest.approx(float(supcon_loss(z, labels, 0.2)), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_macl_matches_the_formula_in_a_loop(seed):
    z, labels = _batch(seed)
    sets = _sets(labels)
    n, num_labels = labels.shape
    count = [sum(label in s for s in sets) for label in range(num_labels)]
    rarity = [sum(1 - count[label] / n for label in s) / len(s) for s in sets]

    def jaccard(i, a):
        return len(sets[i] & sets[a]) / len(sets[i] | sets[a])

    def raw_weight(i, p):
        shared = sets[i] & sets[p]
        return sum(n / count[label] for label in shared) / len(shared)

    def weight(i, p):
        if not sets[i] & sets[p]:
            return 0.0
        positives = [q for q in range(n) if q != i and sets[i] & sets[q]]
        return raw_weight(i, p) / (sum(raw_weight(i, q) for q in positives) / len(positives))

    alpha, beta, tau = 0.7, 0.4, 0.2

    def temperature(i, a):
        return tau / (1 + alpha * jaccard(i, a) + beta * rarity[i])

    # denominator="pair": every candidate a of anchor i's softmax at its own T_ia.
    expected = _loop_weighted(z, labels, weight, temperature)
    assert float(macl_loss(z, labels, tau, alpha, beta, denominator="pair")["loss"]) == pytest.approx(
        expected, rel=1e-10
    )
    # denominator="positive" (the default): positive p's softmax over every candidate at T_ip.
    losses = []
    for i in range(n):
        w = [weight(i, p) if p != i else 0.0 for p in range(n)]
        if sum(w) > 0:
            terms = [w[p] * _log_softmax_row(z, i, [temperature(i, p)] * n)[p] for p in range(n) if w[p]]
            losses.append(-sum(terms) / sum(w))
    assert float(macl_loss(z, labels, tau, alpha, beta)["loss"]) == pytest.approx(sum(losses) / len(losses), rel=1e-10)
    assert float(macl_loss(z, labels, tau, alpha, beta)["loss"]) != pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_macl_denominators_agree_without_the_overlap_term(seed):
    """alpha = 0: the temperature is the anchor's, the same for every candidate, so both readings coincide."""
    z, labels = _batch(seed)
    positive = macl_loss(z, labels, 0.2, alpha=0.0, beta=0.6)["loss"]
    assert float(positive) == pytest.approx(float(macl_loss(z, labels, 0.2, 0.0, 0.6, denominator="pair")["loss"]),
                                            rel=1e-12)  # fmt: skip


def test_a_collapsed_projection_gains_nothing_with_the_positive_denominator():
    """All embeddings equal: every term of the default is -log(N - 1), as in SupCon; in the pair reading
    the temperatures alone make the softmax non-uniform (a positive is sharper than a negative)."""
    _, labels = _batch(2)
    n = labels.shape[0]
    collapsed = torch.ones(n, 6, dtype=torch.float64)
    assert float(supcon_loss(collapsed, labels, 0.1)) == pytest.approx(math.log(n - 1), rel=1e-12)
    assert float(macl_loss(collapsed, labels, 0.1, 0.5, 0.5)["loss"]) == pytest.approx(math.log(n - 1), rel=1e-12)
    assert float(macl_loss(collapsed, labels, 0.1, 0.5, 0.5, denominator="pair")["loss"]) != pytest.approx(
        math.log(n - 1), rel=1e-3
    )


def test_an_unknown_macl_denominator_is_refused():
    with pytest.raises(ValueError, match="loss.denominator must be one of"):
        MACLLoss(denominator="candidate")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macl_without_its_parts_is_supcon(seed):
    z, labels = _batch(seed)
    plain = macl_loss(z, labels, tau=0.15, alpha=0.0, beta=0.0, weighting=False)["loss"]
    assert float(plain) == pytest.approx(float(supcon_loss(z, labels, 0.15)), rel=1e-12)
    # Each part on its own changes the loss (so the equality above is not vacuous).
    for kwargs in ({"alpha": 0.5, "beta": 0.0, "weighting": False}, {"alpha": 0.0, "beta": 0.5, "weighting": False},
                   {"alpha": 0.0, "beta": 0.0, "weighting": True}):  # fmt: skip
        assert float(macl_loss(z, labels, tau=0.15, **kwargs)["loss"]) != pytest.approx(float(plain), rel=1e-6)


def test_with_single_positive_labels_every_variant_but_macl_is_supcon():
    z, _ = _batch(3)
    labels = F.one_hot(torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 2, 1, 0, 4]), 5).bool()
    reference = float(supcon_loss(z, labels, 0.2))
    assert float(jaccard_supcon_loss(z, labels, 0.2)) == pytest.approx(reference, rel=1e-12)
    assert float(mulsupcon_loss(z, labels, 0.2)) == pytest.approx(reference, rel=1e-12)


def test_macl_weights_have_mean_one_and_favour_rare_shared_labels():
    labels = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]).bool()
    from splml.methods.contrastive.base import positive_pairs

    positives = positive_pairs(labels)
    weights = pair_weights(labels, positives)
    for i in range(len(labels)):
        if positives[i].any():
            assert float(weights[i][positives[i]].mean()) == pytest.approx(1.0)
    # Anchor 0 shares the common label 0 with rows 1-3 and the rarer label 1 with row 4.
    assert weights[0, 4] > weights[0, 1] == weights[0, 2]
    assert (weights[~positives] == 0).all()
    rarity = label_rarity(labels)
    assert rarity[5] > rarity[4] > rarity[1] and 0 <= float(rarity.min()) and float(rarity.max()) < 1


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_are_finite_and_reach_every_embedding(name):
    z, labels = _batch(4)
    z = z.clone().requires_grad_(True)
    loss = LOSSES[name](z, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert (z.grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_batch_without_positive_pairs_gives_zero_with_a_graph(name):
    z = torch.randn(4, 3, requires_grad=True)
    labels = torch.eye(4).bool()
    loss = LOSSES[name](z, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))
    single = torch.randn(1, 3, requires_grad=True)
    assert LOSSES[name](single, torch.ones(1, 2).bool()).item() == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identical_embeddings_are_finite(name):
    z = torch.ones(6, 4, requires_grad=True)
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [1, 0]]).bool()
    loss = LOSSES[name](z, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_invariant_to_sample_order_label_order_and_embedding_scale(name):
    z, labels = _batch(5)
    reference = float(LOSSES[name](z, labels))
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))
    cols = torch.randperm(labels.shape[1], generator=torch.Generator().manual_seed(1))
    assert float(LOSSES[name](z[perm], labels[perm])) == pytest.approx(reference, rel=1e-10)
    assert float(LOSSES[name](z, labels[:, cols])) == pytest.approx(reference, rel=1e-10)
    assert float(LOSSES[name](z * 3.0, labels)) == pytest.approx(reference, rel=1e-10)
    # ...and it does depend on which sample holds which embedding (so the checks above can fail).
    assert float(LOSSES[name](z.roll(1, dims=0), labels)) != pytest.approx(reference, rel=1e-6)


def test_pulling_positives_together_lowers_every_loss():
    z, labels = _batch(6)
    y = labels.double()
    # Embeddings built from the labels put samples sharing labels close together.
    aligned = F.normalize(y @ torch.randn(labels.shape[1], 6, generator=torch.Generator().manual_seed(2),
                                          dtype=torch.float64) * 4 + z, dim=1)  # fmt: skip
    for name, fn in LOSSES.items():
        assert float(fn(aligned, labels)) < float(fn(z, labels)), name


@pytest.mark.parametrize("cls", [SupConLoss, JaccardSupConLoss, MulSupConLoss, MACLLoss])
def test_module_flattens_views_and_reads_the_observed_labels(cls):
    loss = cls(tau=0.2)
    z, labels = _batch(7, n=8)
    views = torch.stack([z, F.normalize(z + 0.1, dim=1)], dim=1)  # B x 2 x D
    observed = labels.float() * 2 - 1  # -1 = annotated negative: not a label
    batch = {"observed": observed, "target": torch.ones_like(observed)}
    value = loss({"z": views}, batch, LossContext())
    value = value["loss"] if isinstance(value, dict) else value
    flat = loss.loss_fn(views.reshape(16, -1), labels.repeat_interleave(2, dim=0))
    flat = flat["loss"] if isinstance(flat, dict) else flat
    assert float(value) == pytest.approx(float(flat), rel=1e-12)
    assert loss.task == "retrieval"


def test_contrastive_loss_on_classifier_outputs_is_a_clear_error():
    with pytest.raises(KeyError, match="task=retrieval"):
        SupConLoss()({"logits": torch.zeros(2, 3)}, {"observed": torch.ones(2, 3)}, LossContext())


@pytest.mark.parametrize("cls", [SupConLoss, JaccardSupConLoss, MulSupConLoss, MACLLoss])
def test_non_positive_temperature_is_refused(cls):
    with pytest.raises(ValueError, match="tau"):
        cls(tau=0.0)


def test_negative_macl_coefficients_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        MACLLoss(alpha=-0.1)
