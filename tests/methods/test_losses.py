"""Method losses against values computed by hand from the formulas in ``specs/methods.md``.

Every expected number below is written out with plain ``math`` from the formula (never by calling
the function under test a second time). Inputs are given as probabilities and turned into float64
logits, so ``sigmoid(logit) == p`` to ~1e-16 and the comparisons can be tight.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from splml.builders import loss_config
from splml.methods.an import AssumeNegativeLoss, assume_negative_loss
from splml.methods.an_ls import LabelSmoothingANLoss, label_smoothing_an_loss
from splml.methods.asl import AsymmetricLoss, asymmetric_loss
from splml.methods.base import LossContext, SPMLLoss, linear_schedule
from splml.methods.combined import CombinedLoss
from splml.methods.em.em import EntropyMaximizationLoss, entropy_maximization_loss
from splml.methods.em.em_apl import EMAPLLoss, em_apl_loss
from splml.methods.epr import ExpectedPositiveRegularizerLoss, expected_positive_regularized_loss
from splml.methods.expected.cl import ConsistencyLoss, consistency_loss
from splml.methods.expected.en import ExpectedNegativeLoss, expected_negative_loss
from splml.methods.expected.ep import ExpectedPositiveLoss, expected_positive_loss
from splml.methods.focal import FocalLoss, focal_loss
from splml.methods.gr import GeneralizedRobustLoss, generalized_robust_loss
from splml.methods.hill import HillLoss, hill_loss
from splml.methods.large_loss.base import large_loss_count, select_large_unknown_losses
from splml.methods.large_loss.ll_cp import LargeLossPermanentCorrection, large_loss_permanent_correction
from splml.methods.large_loss.ll_ct import LargeLossTemporaryCorrection
from splml.methods.large_loss.ll_r import LargeLossRejection
from splml.methods.registry import loss_names
from splml.methods.role.loss import ROLELoss, role_loss
from splml.methods.scl.loss import SpatialConsistencyLoss, spatial_consistency_loss
from splml.methods.splc import SPLCLoss
from splml.methods.wan import WeakAssumeNegativeLoss

EPS = 1e-5
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- hand-math helpers
def nl(x: float) -> float:
    """-log(x + 1e-5), the suite's floor, in plain math."""
    return -math.log(x + EPS)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logits_of(probs: list[list[float]], requires_grad: bool = False) -> torch.Tensor:
    t = torch.logit(torch.tensor(probs, dtype=torch.float64))
    return t.requires_grad_(requires_grad)


def obs(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def run(
    loss: SPMLLoss,
    logits: torch.Tensor,
    observed: torch.Tensor,
    extras: dict[str, Any] | None = None,
    epoch: int = 0,
    max_epochs: int = 10,
    maps: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    outputs = {"logits": logits}
    if maps is not None:
        outputs["maps"] = maps
    batch = {"observed": observed, "target": (observed > 0).to(logits.dtype), "extras": extras or {}}
    out = loss(outputs, batch, LossContext(epoch=epoch, max_epochs=max_epochs))
    return out if isinstance(out, dict) else {"loss": out}


def approx(x: float) -> Any:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- baselines
def test_an_ls_hand_value_and_eps_zero_is_an() -> None:
    p = [[0.7, 0.2, 0.9]]
    z = obs([[1, 0, -1]])
    expected = ((0.9 * nl(0.7) + 0.1 * nl(0.3)) + (0.9 * nl(0.8) + 0.1 * nl(0.2)) + (0.9 * nl(0.1) + 0.1 * nl(0.9))) / 3
    assert run(LabelSmoothingANLoss(eps=0.1), logits_of(p), z)["loss"].item() == approx(expected)
    probs = torch.tensor(p, dtype=torch.float64)
    an_expected = (nl(0.7) + nl(0.8) + nl(0.1)) / 3
    assert label_smoothing_an_loss(probs, z, eps=0.0).item() == approx(an_expected)
    assert assume_negative_loss(probs, z).item() == approx(an_expected)


def test_wan_divides_unknowns_by_l_minus_1_but_not_annotated_negatives() -> None:
    p = [[0.7, 0.2, 0.4], [0.1, 0.6, 0.3]]
    z = obs([[1, 0, 0], [0, 1, -1]])
    expected = (nl(0.7) + nl(0.8) / 2 + nl(0.6) / 2 + nl(0.9) / 2 + nl(0.6) + nl(0.7)) / 6
    assert run(WeakAssumeNegativeLoss(), logits_of(p), z)["loss"].item() == approx(expected)


def test_epr_hand_value() -> None:
    p = [[0.7, 0.2, 0.4], [0.1, 0.6, 0.3]]
    z = obs([[1, 0, 0], [0, 1, 0]])
    mean_sum = ((0.7 + 0.2 + 0.4) + (0.1 + 0.6 + 0.3)) / 2
    expected = (nl(0.7) + nl(0.6)) / 6 + (mean_sum - 1.5) ** 2 / 9
    assert run(ExpectedPositiveRegularizerLoss(1.5), logits_of(p), z)["loss"].item() == approx(expected)


def test_epr_k_larger_than_num_classes_is_finite_and_pushes_up() -> None:
    p = [[0.7, 0.2, 0.4]]
    z = obs([[1, 0, 0]])
    logits = logits_of(p, requires_grad=True)
    loss = run(ExpectedPositiveRegularizerLoss(5.0), logits, z)["loss"]
    expected = nl(0.7) / 3 + (1.3 - 5.0) ** 2 / 9
    assert loss.item() == approx(expected)
    loss.backward()
    # K = 5 > L = 3 cannot be met; the regulariser can only push every score up.
    assert torch.all(logits.grad < 0)
    # d/dz_unknown = 2 (sum - K) / L^2 * p (1 - p)
    assert logits.grad[0, 1].item() == approx(2 * (1.3 - 5.0) / 9 * 0.2 * 0.8)


def test_role_hand_value_and_gradients() -> None:
    f = [[0.7, 0.2]]
    g = [[0.9, 0.5]]
    z = obs([[1, 0]])
    f_logits = logits_of(f, requires_grad=True)
    g_logits = logits_of(g, requires_grad=True)
    out = role_loss(f_logits, g_logits, z, expected_positives=1.0)
    pos = 0.5 * (nl(0.7) / 2 + nl(0.9) / 2)
    bce_f = ((0.9 * nl(0.7) + 0.1 * nl(0.3)) + (0.5 * nl(0.2) + 0.5 * nl(0.8))) / 2
    bce_g = ((0.7 * nl(0.9) + 0.3 * nl(0.1)) + (0.2 * nl(0.5) + 0.8 * nl(0.5))) / 2
    reg = 0.5 * ((0.9 - 1.0) ** 2 / 4 + (1.4 - 1.0) ** 2 / 4)
    assert out["loss"].item() == approx(pos + 0.5 * (bce_f + bce_g) + reg)
    out["loss"].backward()
    assert g_logits.grad is not None and torch.all(g_logits.grad != 0)
    # Stop-gradient: g's unknown entry is taught only by BCE(g, sg f) and R(g), never by BCE(f, g).
    gu, fu = 0.5, 0.2
    d_bce = (-fu / (gu + EPS) + (1 - fu) / (1 - gu + EPS)) / 2  # mean over B x L = 2 entries
    d_reg = 2 * (1.4 - 1.0) / 4
    assert g_logits.grad[0, 1].item() == approx(0.5 * (d_bce + d_reg) * gu * (1 - gu))


def test_role_wrapper_reads_extras_and_k_larger_than_l() -> None:
    z = obs([[1, 0, 0]])
    g_logits = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    out = run(ROLELoss(expected_positives=10.0), logits_of([[0.7, 0.2, 0.4]]), z, {"role_g_logits": g_logits})
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.all(g_logits.grad < 0)  # K > L: the label estimates are pushed up everywhere
    with pytest.raises(KeyError, match="role_g_logits"):
        run(ROLELoss(1.0), logits_of([[0.7, 0.2, 0.4]]), z)


# ----------------------------------------------------------------------------- other losses
def test_asl_hand_value_and_detached_gradient() -> None:
    p = [[0.7, 0.2, 0.03]]
    z = obs([[1, 0, 0]])
    # negatives: p_m = max(p - 0.05, 0) -> 0.15 and 0 (the easy negative is discarded)
    expected = (nl(0.7) + 0.15**4 * nl(0.85) + 0.0) / 3
    logits = logits_of(p, requires_grad=True)
    loss = run(AsymmetricLoss(), logits, z)["loss"]
    assert loss.item() == approx(expected)
    loss.backward()
    # detached focusing weight: d/dz = w * 1/(1 - p_m + eps) * p (1 - p) / 3
    assert logits.grad[0, 1].item() == approx(0.15**4 / (0.85 + EPS) * 0.2 * 0.8 / 3)
    assert logits.grad[0, 2].item() == 0.0
    probs = torch.tensor(p, dtype=torch.float64)
    with_pos = asymmetric_loss(probs, z, gamma_neg=4, gamma_pos=1, clip=0.05)
    assert with_pos.item() == approx((0.3 * nl(0.7) + 0.15**4 * nl(0.85)) / 3)


def test_asl_undetached_weight_has_extra_gradient() -> None:
    z = obs([[1, 0]])
    logits = logits_of([[0.7, 0.2]], requires_grad=True)
    run(AsymmetricLoss(detach_focusing_weight=False), logits, z)["loss"].backward()
    pm = 0.15
    d_dp = 4 * pm**3 * nl(1 - pm) + pm**4 / (1 - pm + EPS)
    assert logits.grad[0, 1].item() == approx(d_dp * 0.2 * 0.8 / 2)


def test_focal_hand_value() -> None:
    p = [[0.7, 0.2, 0.6]]
    z = obs([[1, 0, -1]])
    expected = (0.25 * 0.3**2 * nl(0.7) + 0.2**2 * nl(0.8) + 0.6**2 * nl(0.4)) / 3
    assert run(FocalLoss(alpha=0.25, gamma=2.0), logits_of(p), z)["loss"].item() == approx(expected)
    probs = torch.tensor(p, dtype=torch.float64)
    assert focal_loss(probs, z, alpha=1.0, gamma=0.0).item() == approx((nl(0.7) + nl(0.8) + nl(0.4)) / 3)


def test_hill_hand_value() -> None:
    logits = torch.tensor([[2.0, math.log(0.6 / 0.4), -1.0]], dtype=torch.float64)
    z = obs([[1, 0, 0]])
    pm = sig(2.0 - 1.0)
    p2 = sig(-1.0)
    expected = ((1 - pm) ** 2 * nl(pm) + (1.5 - 0.6) * 0.6**2 + (1.5 - p2) * p2**2) / 3
    assert run(HillLoss(), logits, z)["loss"].item() == approx(expected)
    assert hill_loss(logits, z, margin=0.0, gamma=0.0, lamb=1.5).item() == approx(
        (nl(sig(2.0)) + 0.9 * 0.36 + (1.5 - p2) * p2**2) / 3
    )


def test_splc_margin_then_correction_from_second_epoch() -> None:
    logits = torch.tensor([[2.0, math.log(0.7 / 0.3), math.log(0.2 / 0.8), math.log(0.9 / 0.1)]], dtype=torch.float64)
    z = obs([[1, 0, 0, -1]])
    pm = sig(1.0)  # margin 1 on the annotated positive
    epoch0 = ((1 - pm) ** 2 * nl(pm) + 0.7**2 * nl(0.3) + 0.2**2 * nl(0.8) + 0.9**2 * nl(0.1)) / 4
    out0 = run(SPLCLoss(), logits, z, epoch=0)
    assert out0["loss"].item() == approx(epoch0)
    assert out0["num_corrected"].item() == 0
    # epoch 1: the unknown at 0.7 > tau becomes a positive; the annotated negative at 0.9 does not.
    epoch1 = ((1 - pm) ** 2 * nl(pm) + 0.3**2 * nl(0.7) + 0.2**2 * nl(0.8) + 0.9**2 * nl(0.1)) / 4
    x = logits.clone().requires_grad_(True)
    out1 = run(SPLCLoss(), x, z, epoch=1)
    assert out1["loss"].item() == approx(epoch1)
    assert out1["num_corrected"].item() == 1
    out1["loss"].backward()
    assert x.grad[0, 1] < 0  # pseudo-positive: gradient towards target 1
    assert x.grad[0, 3] > 0  # annotated negative stays a negative


def test_gr_hand_value_schedule_and_detached_weights() -> None:
    p = [[0.7, 0.4, 0.9]]
    z = obs([[1, 0, -1]])

    def unknown_term(pu: float, w: float, b: float, mu: float, sigma: float) -> float:
        k = sig(w * pu + b)
        v = math.exp(-((pu - mu) ** 2) / (2 * sigma**2))
        return v * (k * (1 - (pu + EPS) ** 0.01) / 0.01 + (1 - k) * (1 - (1 - pu + EPS)))

    # epoch 0 of 5: w = 0, b = -2, mu = 0.5, sigma = 2
    expected0 = (nl(0.7) + unknown_term(0.4, 0.0, -2.0, 0.5, 2.0) + nl(0.1)) / 3
    out0 = run(GeneralizedRobustLoss(), logits_of(p), z, epoch=0, max_epochs=5)
    assert out0["loss"].item() == approx(expected0)
    # epoch 2 of 5 is half way: w = 1, mu = 0.65, sigma = 1.25
    logits = logits_of(p, requires_grad=True)
    out2 = run(GeneralizedRobustLoss(), logits, z, epoch=2, max_epochs=5)
    assert out2["gr_w"].item() == approx(1.0)
    assert out2["gr_mu"].item() == approx(0.65)
    assert out2["gr_sigma"].item() == approx(1.25)
    assert out2["loss"].item() == approx((nl(0.7) + unknown_term(0.4, 1.0, -2.0, 0.65, 1.25) + nl(0.1)) / 3)
    # k and v are constants: d/dp = v (k * -(p + eps)^(q2 - 1) + (1 - k) * 1)
    out2["loss"].backward()
    k, v = sig(1.0 * 0.4 - 2.0), math.exp(-((0.4 - 0.65) ** 2) / (2 * 1.25**2))
    d_dp = v * (k * -((0.4 + EPS) ** (0.01 - 1)) + (1 - k))
    assert logits.grad[0, 1].item() == approx(d_dp * 0.4 * 0.6 / 3)
    # last epoch reaches the end values
    assert linear_schedule(0.5, 0.8, 4, 5) == approx(0.8)
    assert linear_schedule(2.0, 0.5, 0, 1) == approx(2.0)
    probs = torch.tensor(p, dtype=torch.float64)
    assert generalized_robust_loss(probs, z, w=0, b=-2, mu=0.5, sigma=2).item() == approx(expected0)


def test_em_hand_value() -> None:
    p = [[0.7, 0.4, 0.9]]
    z = obs([[1, 0, -1]])
    h = -(0.4 * math.log(0.4 + EPS) + 0.6 * math.log(0.6 + EPS))
    expected = (nl(0.7) - 0.1 * h + nl(0.1)) / 3
    assert run(EntropyMaximizationLoss(alpha=0.1), logits_of(p), z)["loss"].item() == approx(expected)


def test_em_apl_hand_value() -> None:
    p = [[0.7, 0.4, 0.2, 0.9]]
    z = obs([[1, 0, 0, -1]])
    mask = torch.tensor([[False, True, False, True]])  # the stale mark on the annotated negative is ignored
    target = torch.tensor([[0.0, 0.3, 0.0, 0.5]], dtype=torch.float64)
    h = -(0.2 * math.log(0.2 + EPS) + 0.8 * math.log(0.8 + EPS))
    soft = 0.9 * (0.3 * nl(0.4) + 0.7 * nl(0.6))
    expected = (nl(0.7) + soft - 0.1 * h + nl(0.1)) / 4
    out = run(EMAPLLoss(alpha=0.1, beta=0.9), logits_of(p), z, {"apl_target": target, "apl_mask": mask})
    assert out["loss"].item() == approx(expected)
    assert out["num_soft_negatives"].item() == 1
    probs = torch.tensor(p, dtype=torch.float64)
    none = em_apl_loss(probs, z, 0.1, 0.9, target, torch.zeros_like(mask))
    assert none["loss"].item() == approx(entropy_maximization_loss(probs, z, 0.1).item())


# ----------------------------------------------------------------------------- large loss
P_LL = [[0.5, 0.9, 0.1], [0.6, 0.4, 0.3]]
Z_LL = [[1, 0, 0], [0, 1, 0]]


def test_large_loss_count_and_float_noise() -> None:
    assert large_loss_count(2, 3, 0.2, 100) == 2  # ceil(1.2)
    assert large_loss_count(4, 5, 0.05, 100) == 1  # 4 * 5 * 0.05 is 1.0000000000000002 in floats
    assert large_loss_count(2, 3, 3.0, 4) == 4  # clamped to the unknown entries
    assert large_loss_count(16, 80, 0.0, 100) == 0


def test_ll_r_rejects_largest_unknown_losses_with_zero_gradient() -> None:
    z = obs(Z_LL)
    assert run(LargeLossRejection(0.2), logits_of(P_LL), z, epoch=0)["loss"].item() == approx(
        (nl(0.5) + nl(0.1) + nl(0.9) + nl(0.4) + nl(0.4) + nl(0.7)) / 6
    )
    logits = logits_of(P_LL, requires_grad=True)
    # epoch 1: k = ceil(2 * 3 * 1 * 0.2) = 2 -> the unknowns at 0.9 and 0.6 are rejected
    out = run(LargeLossRejection(0.2), logits, z, epoch=1)
    assert out["loss"].item() == approx((nl(0.5) + nl(0.9) + nl(0.4) + nl(0.7)) / 6)
    assert out["num_corrected"].item() == 2
    out["loss"].backward()
    assert logits.grad[0, 1].item() == 0.0 and logits.grad[1, 0].item() == 0.0
    assert logits.grad[0, 2].item() > 0 and logits.grad[1, 2].item() > 0


def test_ll_r_k_grows_and_is_clamped_to_unknowns() -> None:
    z = obs(Z_LL)
    out = run(LargeLossRejection(0.2), logits_of(P_LL), z, epoch=3)  # k = ceil(3.6) = 4 = all unknowns
    assert out["num_corrected"].item() == 4
    out = run(LargeLossRejection(1.0), logits_of(P_LL), z, epoch=5)  # k = 30 -> clamped to 4
    assert out["loss"].item() == approx((nl(0.5) + nl(0.4)) / 6)
    assert out["num_corrected"].item() == 4


def test_ll_ct_corrects_temporarily_and_skips_annotated_negatives() -> None:
    z = obs([[1, 0, -1], [0, 1, 0]])
    logits = logits_of([[0.5, 0.9, 0.95], [0.6, 0.4, 0.3]], requires_grad=True)
    out = run(LargeLossTemporaryCorrection(0.2), logits, z, epoch=1)  # k = 2: 0.9 and 0.6, not the -1 at 0.95
    expected = (nl(0.5) + nl(0.9) + nl(0.05) + nl(0.6) + nl(0.4) + nl(0.7)) / 6
    assert out["loss"].item() == approx(expected)
    out["loss"].backward()
    assert logits.grad[0, 1] < 0 and logits.grad[1, 0] < 0  # trained as positives
    assert logits.grad[0, 2] > 0


def test_ll_cp_constant_k_flip_mask_and_previous_flips() -> None:
    z = obs(Z_LL)
    out0 = run(LargeLossPermanentCorrection(0.2), logits_of(P_LL), z, epoch=0)
    assert not out0["flip_mask"].any()
    # k = ceil(6 * 0.2) = 2 at every epoch >= 1 (it does not grow, unlike Ct which would pick 4 at epoch 3)
    out3 = run(LargeLossPermanentCorrection(0.2), logits_of(P_LL), z, epoch=3)
    expected_mask = torch.tensor([[False, True, False], [True, False, False]])
    assert torch.equal(out3["flip_mask"], expected_mask)
    assert out3["loss"].item() == approx((nl(0.5) + nl(0.9) + nl(0.9) + nl(0.6) + nl(0.4) + nl(0.7)) / 6)
    ct3 = run(LargeLossTemporaryCorrection(0.2), logits_of(P_LL), z, epoch=3)
    assert ct3["num_corrected"].item() == 4 and out3["num_corrected"].item() == 2
    # after the store applied the flips, the next pick moves on to the remaining unknowns
    z_flipped = obs([[1, 1, 0], [1, 1, 0]])
    loss, flip = large_loss_permanent_correction(torch.tensor(P_LL, dtype=torch.float64), z_flipped, 0.2)
    assert torch.equal(flip, torch.tensor([[False, False, True], [False, False, True]]))
    assert loss.item() == approx((nl(0.5) + nl(0.9) + nl(0.1) + nl(0.6) + nl(0.4) + nl(0.3)) / 6)


def test_select_large_unknown_losses_ignores_known_entries() -> None:
    losses = torch.tensor([[5.0, 1.0, 9.0]])
    z = obs([[1, 0, -1]])
    assert torch.equal(select_large_unknown_losses(losses, z, 3), torch.tensor([[False, True, False]]))


# ----------------------------------------------------------------------------- EN / EP / CL / SCL
def test_en_ignores_unannotated_expected_positives() -> None:
    p = [[0.7, 0.6, 0.2], [0.3, 0.8, 0.4]]
    z = obs([[1, 0, 0], [0, 1, -1]])
    ep_mask = torch.tensor([[True, True, False], [False, True, True]])  # (1, 2) is an annotated negative
    logits = logits_of(p, requires_grad=True)
    out = run(ExpectedNegativeLoss(2.0), logits, z, {"expected_positive": ep_mask})
    expected = (nl(0.7) + 0 + nl(0.8) + nl(0.7) + nl(0.8) + nl(0.6)) / 6
    assert out["loss"].item() == approx(expected)
    assert out["num_ignored"].item() == 1
    out["loss"].backward()
    assert logits.grad[0, 1].item() == 0.0  # expected positive, not annotated: no gradient
    assert logits.grad[1, 2].item() > 0  # annotated negative keeps its negative gradient
    # epoch-0 mask = the annotated positives: EN is AN
    probs = torch.tensor(p, dtype=torch.float64)
    assert expected_negative_loss(probs, z, z > 0)["loss"].item() == approx(assume_negative_loss(probs, z).item())


def test_ep_trains_expected_positives_as_positives() -> None:
    p = [[0.7, 0.6, 0.2]]
    z = obs([[1, 0, 0]])
    mask = torch.tensor([[True, True, False]])
    logits = logits_of(p, requires_grad=True)
    out = run(ExpectedPositiveLoss(2.0), logits, z, {"expected_positive": mask})
    assert out["loss"].item() == approx((nl(0.7) + nl(0.6) + nl(0.8)) / 3)
    assert out["num_corrected"].item() == 1
    out["loss"].backward()
    assert logits.grad[0, 1] < 0
    assert expected_positive_loss(torch.tensor(p, dtype=torch.float64), z, mask)["loss"].item() == approx(
        (nl(0.7) + nl(0.6) + nl(0.8)) / 3
    )


def test_consistency_loss_is_mean_abs_difference() -> None:
    p = [[0.7, 0.2], [0.5, 0.9]]
    s = torch.tensor([[1.0, 0.0], [0.4, 0.9]], dtype=torch.float64)
    expected = (0.3 + 0.2 + 0.1 + 0.0) / 4
    logits = logits_of(p, requires_grad=True)
    out = run(ConsistencyLoss(), logits, obs([[1, 0], [0, 1]]), {"ema_scores": s})
    assert out["loss"].item() == approx(expected)
    out["loss"].backward()
    assert logits.grad[0, 0].item() == approx(-1 / 4 * 0.7 * 0.3)  # p < s: pulled up
    assert logits.grad[0, 1].item() == approx(1 / 4 * 0.2 * 0.8)
    assert consistency_loss(torch.tensor(p, dtype=torch.float64), s).item() == approx(expected)


def test_spatial_consistency_float_and_uint8_targets() -> None:
    maps = logits_of([[0.7, 0.2, 0.5, 0.9]]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.5], dtype=torch.float64).reshape(1, 1, 2, 2)
    expected = (0.3 + 0.2 + 0.5 + 0.4) / 4
    assert spatial_consistency_loss(maps.sigmoid(), target).item() == approx(expected)
    target_u8 = torch.tensor([255, 0, 0, 51], dtype=torch.uint8).reshape(1, 1, 2, 2)
    out = run(SpatialConsistencyLoss(), logits_of([[0.5]]), obs([[1]]), {"heatmap_targets": target_u8}, maps=maps)
    assert out["loss"].item() == approx((0.3 + 0.2 + 0.5 + abs(0.9 - 51 / 255)) / 4)
    with pytest.raises(ValueError):
        spatial_consistency_loss(maps.sigmoid(), target.reshape(1, 1, 4, 1))


def test_combined_respects_start_epoch_and_gamma() -> None:
    p = [[0.7, 0.6, 0.2]]
    z = obs([[1, 0, 0]])
    extras = {
        "expected_positive": torch.tensor([[True, True, False]]),
        "ema_scores": torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
    }
    loss = CombinedLoss(ExpectedNegativeLoss(2.0), ConsistencyLoss(), gamma=0.1, start_epoch=2)
    assert loss.name == "en_cl"
    assert set(loss.requires_extras) == {"expected_positive", "ema_scores"}
    en = (nl(0.7) + 0 + nl(0.8)) / 3
    before = run(loss, logits_of(p), z, extras, epoch=1)
    assert before["loss"].item() == approx(en)
    assert before["loss_term"].item() == 0.0
    cl = (0.3 + 0.6 + 0.2) / 3
    after = run(loss, logits_of(p), z, extras, epoch=2)
    assert after["loss"].item() == approx(en + 0.1 * cl)
    assert after["loss_base"].item() == approx(en)
    assert after["loss_term"].item() == approx(cl)
    assert after["num_ignored"].item() == 1
    # the term is not evaluated before its start, so its store may still be empty
    run(loss, logits_of(p), z, {"expected_positive": extras["expected_positive"]}, epoch=0)


def test_combined_epr_cl_and_an_scl() -> None:
    p = [[0.7, 0.6, 0.2]]
    z = obs([[1, 0, 0]])
    s = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    epr = nl(0.7) / 3 + (1.5 - 2.0) ** 2 / 9
    cl = (0.3 + 0.6 + 0.2) / 3
    out = run(CombinedLoss(ExpectedPositiveRegularizerLoss(2.0), ConsistencyLoss(), gamma=1.0), logits_of(p), z,
              {"ema_scores": s})  # fmt: skip
    assert out["loss"].item() == approx(epr + cl)
    maps = torch.zeros(1, 3, 1, 1, dtype=torch.float64)  # sigmoid(0) = 0.5 everywhere
    targets = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    an = (nl(0.7) + nl(0.4) + nl(0.8)) / 3
    an_scl = CombinedLoss(AssumeNegativeLoss(), SpatialConsistencyLoss(), gamma=0.1)
    out = run(an_scl, logits_of(p), z, {"heatmap_targets": targets}, maps=maps)
    assert out["loss"].item() == approx(an + 0.1 * 0.5)
    assert CombinedLoss(ExpectedNegativeLoss(2.0), SpatialConsistencyLoss()).requires_extras == (
        "expected_positive",
        "heatmap_targets",
    )
    generic = CombinedLoss(AssumeNegativeLoss(), ConsistencyLoss(), gamma=2.0)
    assert generic.name == "an_cl"


# ----------------------------------------------------------------------------- robustness, every loss
def _all_losses() -> list[tuple[str, SPMLLoss]]:
    """Every registered classification method as its YAML builds it (K = 7 > L = 4), and a few variants."""
    context = {"seed": 1, "dataset": {"expected_positives": 7.0}, "optim": {"linear_probe_epochs": 1}}
    built = [
        (name, instantiate(OmegaConf.merge(context, loss_config(name)).loss)) for name in loss_names("classification")
    ]
    return [
        *built,
        ("asl_undetached", AsymmetricLoss(detach_focusing_weight=False)),
        ("focal_alpha", FocalLoss(alpha=0.25)),
        ("ll_r_large", LargeLossRejection(0.5)),
        ("ll_ct_large", LargeLossTemporaryCorrection(0.5)),
        ("ll_cp_large", LargeLossPermanentCorrection(0.5)),
    ]


@pytest.mark.parametrize(("name", "loss"), _all_losses(), ids=[name for name, _ in _all_losses()])
@pytest.mark.parametrize("epoch", [0, 3])
def test_every_loss_finite_with_all_unknown_rows_and_saturated_logits(name: str, loss: SPMLLoss, epoch: int) -> None:
    # rows 1 and 2 are all-unknown; logits of +-50 saturate float32 sigmoid to exactly 1 (and ~0)
    logits = torch.tensor([[50.0, -50.0, 50.0, 0.0], [50.0, -50.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    z = torch.tensor([[1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    g_logits = torch.tensor([[-50.0, 50.0, 0.0, 1.0]] * 3, requires_grad=True)
    maps = torch.tensor([[[[50.0, -50.0], [0.0, 1.0]]] * 4] * 3, requires_grad=True)
    extras = {
        "role_g_logits": g_logits,
        "expected_positive": torch.tensor([[True, True, False, False]] * 3),
        "ema_scores": torch.tensor([[1.0, 0.0, 0.5, 0.0]] * 3),
        "heatmap_targets": torch.zeros(3, 4, 2, 2, dtype=torch.uint8),
        "apl_target": torch.full((3, 4), 0.2),
        "apl_mask": torch.tensor([[False, True, False, False]] * 3),
        "adagc_stage": "gc" if epoch else "warmup",
        "adagc_pseudo": torch.tensor([[0.0, 1.0, 0.5, 0.2]] * 3),
        "mixup": {"perm": torch.tensor([2, 0, 1]), "lam": 0.3},
    }
    out = run(loss, logits, z, extras, epoch=epoch, maps=maps)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()
    for extra in (g_logits, maps):
        assert extra.grad is None or torch.isfinite(extra.grad).all()


def test_pure_functions_finite_at_probabilities_exactly_0_and_1() -> None:
    probs = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    z = obs([[1, 0, 0, -1]])
    soft_mask = torch.tensor([[False, True, False, False]])
    values = [
        assume_negative_loss(probs, z),
        label_smoothing_an_loss(probs, z),
        expected_positive_regularized_loss(probs, z, 9.0),
        asymmetric_loss(probs, z, detach_focusing_weight=False),
        focal_loss(probs, z),
        generalized_robust_loss(probs, z, w=2.0, b=-2.0, mu=0.8, sigma=0.5),
        entropy_maximization_loss(probs, z),
        em_apl_loss(probs, z, 0.1, 0.9, torch.full_like(probs, 0.1), soft_mask)["loss"],
        expected_negative_loss(probs, z, torch.ones(1, 4, dtype=torch.bool))["loss"],
        large_loss_permanent_correction(probs, z, 0.5)[0],
    ]
    # -log(0 + 1e-5) is the largest any single term can be
    assert nl(0.0) == approx(-math.log(1e-5))
    for value in values:
        assert torch.isfinite(value)
        (grad,) = torch.autograd.grad(value, probs)
        assert torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- Hydra configs
def test_every_loss_config_instantiates_with_its_name() -> None:
    files = sorted((REPO / "conf" / "loss").glob("*.yaml"))
    assert len(files) >= 20
    for path in files:
        cfg = OmegaConf.merge(
            {"seed": 1, "dataset": {"expected_positives": 2.9}, "optim": {"linear_probe_epochs": 1}},
            loss_config(path.stem),
        )
        loss = instantiate(cfg.loss)
        assert isinstance(loss, SPMLLoss), path.name
        assert loss.name == path.stem, path.name
    em = instantiate(OmegaConf.merge({"dataset": {"em": {"alpha": 0.2}}}, loss_config("em")).loss)
    assert em.alpha == 0.2
    em_default = instantiate(OmegaConf.merge({"dataset": {}}, loss_config("em_apl")).loss)
    assert (em_default.alpha, em_default.beta) == (0.1, 0.9)


def test_a_composition_is_its_two_parts_from_their_own_yamls() -> None:
    """en_scl.yaml composes en.yaml and term/scl.yaml: their options, overridable where they live."""
    context = {"seed": 1, "dataset": {"expected_positives": 2.9}, "optim": {"linear_probe_epochs": 3}}
    cfg = OmegaConf.merge(context, loss_config("en_scl", "loss.gamma=0.5", "loss.term.topk=2"))
    loss = instantiate(cfg.loss)
    assert isinstance(loss, CombinedLoss) and loss.name == "en_scl" and (loss.gamma, loss.start_epoch) == (0.5, 3)
    assert isinstance(loss.base, ExpectedNegativeLoss) and loss.base.expected_positives == 2.9
    assert isinstance(loss.term, SpatialConsistencyLoss) and loss.term.topk == 2
    # EN and CL share one score store: the term follows the base's momentum.
    en_cl = instantiate(OmegaConf.merge(context, loss_config("en_cl", "loss.base.score_momentum=0.6")).loss)
    assert en_cl.base.score_momentum == en_cl.term.score_momentum == 0.6
    (store,) = en_cl.callbacks(5, 3)
    assert store.momentum == 0.6 and store.expected_positives == 2.9
