"""Why MACL's described formula collapses the projection: a controlled study on the benchmark's labels.

    python experiments/retrieval/diagnose_macl.py [--seeds 0 1 2] [--steps 600]

No images, so that every variant trains in seconds: each of the 600 training patches of
``experiment=retrieval_synthetic`` keeps its full label set ``y`` and gets a fixed input
``x = 0.3 y A + e`` (A, e Gaussian: the labels are recoverable but noisy, as in an image); an MLP
(64 -> 128 -> 128 -> 128, ReLU) maps two noisy views ``x + 0.3 e'`` of each item to ``z``; batches of
32 items (64 views), Adam at 1e-3 and 600 steps, as the benchmark's batch and optimiser. The
first 200 items then query the other 400 by the cosine of ``z`` (mAP@100, relevance = shares a
label). The variants change one thing at a time: the softmax denominator's temperature, the
temperature range (``tau``, ``alpha``, ``beta``), the pair weighting, and the gradient scale
(the loss times 0.1, or SGD instead of Adam). Besides retrieval, each row reports the mean
cosine of all pairs, of the pairs sharing a label and of the others, and both readings of the
MACL loss (``pair``, ``positive``) of the trained network on fresh batches, next to a collapsed
projection (every ``z`` equal), to show which configurations each objective prefers. The first
column needs no training: the share of an anchor's softmax mass that sits on its negatives when
every ``z`` is equal (:func:`negative_share_at_collapse`), i.e. how much a variant can still gain
by pushing negatives apart once the positives are aligned.

The table goes into experiments/retrieval/README.md (block ``macl_diagnosis``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from splml.methods.contrastive.base import jaccard_overlap, positive_pairs
from splml.methods.contrastive.macl import label_rarity, macl_loss
from splml.methods.contrastive.supcon import supcon_loss
from splml.retrieval_metrics import compute_retrieval_metrics
from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
LossFn = Callable[[Tensor, Tensor], Tensor]


def macl(denominator: str = "positive", tau: float = 0.1, alpha: float = 0.5, beta: float = 0.5,
         weighting: bool = True, scale: float = 1.0) -> LossFn:  # fmt: skip
    return lambda z, y: scale * macl_loss(z, y, tau, alpha, beta, weighting, denominator)["loss"]


#: SupCon is MACL without its parts (alpha = beta = 0, no weighting; then both denominators agree).
SUPCON = {"alpha": 0.0, "beta": 0.0, "weighting": False}
#: name -> (MACL options, optimiser); the defaults are the benchmark's (tau 0.1, alpha = beta = 0.5, weighting on).
VARIANTS: dict[str, tuple[dict, str]] = {
    "SupCon": (SUPCON, "adam"),
    "SupCon, SGD": (SUPCON, "sgd"),
    "MACL pair (described formula)": ({"denominator": "pair"}, "adam"),
    "pair, no weighting": ({"denominator": "pair", "weighting": False}, "adam"),
    "pair, beta = 0": ({"denominator": "pair", "beta": 0.0}, "adam"),
    "pair, alpha = 0 (= positive, alpha = 0)": ({"denominator": "pair", "alpha": 0.0}, "adam"),
    "pair, alpha = 0.1": ({"denominator": "pair", "alpha": 0.1}, "adam"),
    "pair, tau = 0.2": ({"denominator": "pair", "tau": 0.2}, "adam"),
    "pair, tau = 0.5": ({"denominator": "pair", "tau": 0.5}, "adam"),
    "pair, loss x 0.1": ({"denominator": "pair", "scale": 0.1}, "adam"),
    "pair, SGD": ({"denominator": "pair"}, "sgd"),
    "MACL positive (default)": ({"denominator": "positive"}, "adam"),
    "positive, SGD": ({"denominator": "positive"}, "sgd"),
}


def loss_of(options: dict) -> LossFn:
    if options is SUPCON:
        return lambda z, y: supcon_loss(z, y, 0.1)
    return macl(**options)


def negative_share_at_collapse(labels: Tensor, options: dict, seed: int = 0, batches: int = 50) -> float:
    """Percent of an anchor's softmax mass on its negatives when every z is equal, mean over anchors and batches.

    It bounds what separating the negatives can gain while the positives stay aligned:
    ``-log(1 - share)`` nats per term. Pair reading: candidate ``a`` weighs ``exp(1 / T_ia)``;
    positive reading (and SupCon): every candidate of a term weighs the same, so the share is the
    fraction of negatives among the candidates.
    """
    tau, alpha, beta = options.get("tau", 0.1), options.get("alpha", 0.5), options.get("beta", 0.5)
    pair = options.get("denominator", "positive") == "pair"
    gen = torch.Generator().manual_seed(seed)
    shares = []
    for _ in range(batches):
        y = labels[torch.randperm(labels.shape[0], generator=gen)[:32]].repeat_interleave(2, dim=0).double()
        n = y.shape[0]
        off = ~torch.eye(n, dtype=torch.bool)
        positives = positive_pairs(y)
        negatives = ~positives & off
        if pair:
            inverse = (1 + alpha * jaccard_overlap(y) + beta * label_rarity(y)[:, None]) / tau
            mass = inverse.masked_fill(~off, float("-inf")).softmax(dim=1)
        else:
            mass = off.double() / (n - 1)
        shares.append(float((mass * negatives).sum(dim=1)[positives.any(dim=1)].mean()))
    return 100 * statistics.fmean(shares)


def training_labels() -> np.ndarray:
    """The full label sets of the benchmark's 600 training patches (the synthetic dataset is generated if needed)."""
    from hydra import compose, initialize_config_dir

    from splml.builders import build_datamodule, config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=retrieval_synthetic", "labels=full"])
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    targets = np.asarray(datamodule.datasets["train"].targets)
    if targets.shape[0] != 600:
        raise RuntimeError(f"expected the 600 training patches of experiment=retrieval_synthetic, got {targets.shape}")
    return targets.astype(bool)


def train_variant(labels: Tensor, loss_fn: LossFn, optimiser: str, seed: int, steps: int) -> dict[str, float]:
    """Train the MLP with ``loss_fn`` and measure retrieval, cosines and both MACL readings (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    n, num_labels = labels.shape
    inputs = labels.float() @ torch.randn(num_labels, 64, generator=gen) * 0.3 + torch.randn(n, 64, generator=gen)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, 128))  # fmt: skip
    opt = (torch.optim.Adam(net.parameters(), 1e-3) if optimiser == "adam"
           else torch.optim.SGD(net.parameters(), 0.05, momentum=0.9))  # fmt: skip

    def batch() -> tuple[Tensor, Tensor]:
        items = torch.randperm(n, generator=gen)[:32]
        x = inputs[items]
        views = torch.stack([x + 0.3 * torch.randn(x.shape, generator=gen) for _ in range(2)], dim=1)
        return views.reshape(-1, 64), labels[items].repeat_interleave(2, dim=0)

    for _ in range(steps):
        views, y = batch()
        loss = loss_fn(F.normalize(net(views), dim=-1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = F.normalize(net(inputs), dim=-1)
        metrics = compute_retrieval_metrics(z[:200].numpy(), labels[:200].numpy(), z[200:].numpy(),
                                            labels[200:].numpy(), ks=[100])  # fmt: skip
        similarity = z @ z.T
        positives = positive_pairs(labels)
        negatives = ~positives & ~torch.eye(n, dtype=torch.bool)
        held_out = [batch() for _ in range(20)]
        readings = {
            f"loss {d}": statistics.fmean(float(macl(d)(F.normalize(net(v), dim=-1), y)) for v, y in held_out)
            for d in ("pair", "positive")
        }
    return {
        "mAP@100": float(metrics["mAP@100"]),
        "cos all": float(similarity[~torch.eye(n, dtype=torch.bool)].mean()),
        "cos positives": float(similarity[positives].mean()),
        "cos negatives": float(similarity[negatives].mean()),
        **readings,
    }


def collapsed_losses(labels: Tensor, seed: int) -> dict[str, float]:
    """Both readings of the MACL loss when every z is the same vector, on batches like the training ones."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for d in ("pair", "positive"):
        values = []
        for _ in range(20):
            y = labels[torch.randperm(labels.shape[0], generator=gen)[:32]].repeat_interleave(2, dim=0)
            values.append(float(macl(d)(torch.ones(y.shape[0], 8), y)))
        out[f"loss {d}"] = statistics.fmean(values)
    return out


COLUMNS = ["negatives' share at collapse (%)", "mAP@100", "cos all", "cos positives", "cos negatives", "loss pair",
           "loss positive"]  # fmt: skip


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}" if abs(values[0]) < 10 else f"{values[0]:.2f}"
    mean, std = statistics.fmean(values), statistics.stdev(values)
    return f"{mean:.2f} ± {std:.2f}" if abs(mean) >= 10 else f"{mean:.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-readme", action="store_true", help="print the table only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    labels = torch.from_numpy(training_labels())
    rows = [f"| variant | optimiser | {' | '.join(COLUMNS)} |", "|---|---|" + "---:|" * len(COLUMNS)]
    for name, (options, optimiser) in VARIANTS.items():
        share = negative_share_at_collapse(labels, options)
        runs = [train_variant(labels, loss_of(options), optimiser, seed, args.steps) for seed in args.seeds]
        cells = [f"{share:.1f}"] + [cell([r[c] for r in runs]) for c in COLUMNS[1:]]
        rows.append(f"| {name} | {optimiser} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    collapsed = collapsed_losses(labels, args.seeds[0])
    blank = ["", "", "1.000", "1.000", "1.000"]
    rows.append(f"| collapsed projection (every z equal) | | {' | '.join(blank)} | "
                f"{collapsed['loss pair']:.3f} | {collapsed['loss positive']:.3f} |")  # fmt: skip
    table = "\n".join(rows)
    footer = (
        f"Seeds {', '.join(map(str, args.seeds))} (mean ± std), {args.steps} steps; "
        f"`python experiments/retrieval/diagnose_macl.py` ({(time.time() - started) / 60:.1f} min on the shared CPU). "
        f"log(N - 1) = {np.log(63):.3f} for N = 64 views."
    )
    print(table + "\n\n" + footer)
    if not args.no_readme:
        write_generated_block(HERE / "README.md", "macl_diagnosis", table + "\n\n" + footer)


if __name__ == "__main__":
    main()
