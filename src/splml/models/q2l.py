"""Query2Label head: a transformer decoder whose queries are the labels.

Liu et al., *Query2Label: A Simple Transformer Way to Multi-Label Classification*, 2021; this
head computes what their released code (SlongLiu/query2labels, ``lib/models/transformer.py``,
``query2label.py``, ``position_encoding.py``) computes, from the same weights
(``tests/test_q2l.py`` checks the logits against a reference built from those equations). The
backbone's feature map (B x D x h x w) is projected to width d by a 1x1 convolution (by default
only when D differs from d; the reference skips the projection unless asked to keep it),
flattened to h * w tokens with a fixed 2-D sine positional encoding, refined by
``encoder_layers`` transformer encoder layers, and read through ``decoder_layers`` decoder layers
by L label queries. As in DETR, from which the reference's transformer comes, the decoder state
starts at zeros and the L learnable label embeddings are *query positions*: added to the
queries (and, with decoder self-attention, the keys) of every attention of every decoder layer,
never to the values or the residual stream. The decoder's self-attention among the labels is
removed by default, as in the paper. Class l's logit is a linear classifier of its own query's
output after the decoder's final LayerNorm: weight L x d, bias L ("group fully connected"),
not one d -> L layer shared by every query.

Layers are post-norm (residual, then LayerNorm) with ReLU feed-forward blocks; the image
positions are added to the keys (and to encoder queries) of every attention, never to the values.
Transformer weights with more than one dimension are Xavier-uniform initialised and the
attention biases are zero (``nn.MultiheadAttention``'s initialisation); the label embeddings
are N(0, 1) and each classifier U(-1/sqrt(d), 1/sqrt(d)), as in the reference.

``maps`` (B x L x h x w), which the spatial-consistency methods and the heatmap store read as
per-position class logits, are the last decoder layer's cross-attention of each label's query
(its decoder state plus its label embedding; averaged over heads, in probability space) placed
in logit space around the class logit::

    maps[l, p] = logit[l] + log(h * w * A[l, p]),    A[l, :] sums to 1 over the h * w positions

so ``log(mean_p exp(maps[l, p])) = logit[l]`` exactly: the logit is a log-mean-exp pooling of
the maps, as the linear head's logit is their arithmetic mean. A position the query ignores has
a map value far below the logit (score ~0 there), one it attends to more than uniformly lies
above it. The spatial-consistency loss then moves both the class score and where the label
query looks; attention maps are also how the paper shows what each query found. (Applying each
class's classifier to every position separately, as the linear head does, has no meaning here:
the classifier reads a decoder output, not an image feature.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sine_positional_encoding(height: int, width: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine encoding, ``(height * width) x dim``: the first half of the channels encodes the row, the second the column.

    Row ``j`` (1-based) sits at ``j / height * 2 pi`` and column ``i`` at ``i / width * 2 pi`` (the
    reference takes cumulative sums of ones divided by their last value plus 1e-6, kept here), so
    the encoding does not depend on the grid size. Each half holds ``dim / 4`` frequencies
    ``temperature^(-2k / (dim / 2))``, sine and cosine of one frequency on adjacent channels.
    """
    if dim % 4:
        raise ValueError(f"the sine positional encoding needs a width divisible by 4, got {dim}")
    half = dim // 2
    # Channel c of a half uses frequency index c // 2: even channels the sine, odd ones the cosine.
    periods = temperature ** (2 * (torch.arange(half, dtype=torch.float32) // 2) / half)

    def axis(n: int) -> Tensor:
        steps = torch.ones(n, dtype=torch.float32).cumsum(0)
        angles = (steps / (steps[-1] + 1e-6) * 2 * math.pi)[:, None] / periods  # n x half
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

    rows, cols = axis(height), axis(width)
    grid = torch.cat([rows[:, None, :].expand(height, width, -1), cols[None, :, :].expand(height, width, -1)], dim=2)
    return grid.reshape(height * width, dim)


def feed_forward(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))


class CrossAttention(nn.Module):
    """Multi-head attention of queries to keys/values that also returns the log attention weights.

    ``nn.MultiheadAttention`` returns its weights after attention dropout (zeros, rescaled rows)
    during training; the maps need the clean distribution, so the few lines are written out. The
    parameters and their initialisation are those of ``nn.MultiheadAttention`` (``in_proj_weight``
    stacking the query, key and value projections, zero ``in_proj_bias`` and ``out_proj.bias``).
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the transformer width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # B x heads x n x d/heads

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """``query`` B x L x d, ``key``/``value`` B x N x d -> (B x L x d, log weights B x heads x L x N)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._split(F.linear(query, w_q, b_q))
        k, v = self._split(F.linear(key, w_k, b_k)), self._split(F.linear(value, w_v, b_v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        log_weights = F.log_softmax(scores.float(), dim=-1)
        out = self.dropout(log_weights.exp().to(v.dtype)) @ v
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1)), log_weights


class EncoderLayer(nn.Module):
    """Self-attention over the image tokens (positions added to queries and keys), then feed-forward."""

    def __init__(self, dim: int, heads: int, feedforward_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = feed_forward(dim, feedforward_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tokens: Tensor, pos: Tensor) -> Tensor:
        qk = tokens + pos
        tokens = self.norm1(tokens + self.drop1(self.attn(qk, qk, tokens, need_weights=False)[0]))
        return self.norm2(tokens + self.drop2(self.ff(tokens)))


class DecoderLayer(nn.Module):
    """[Self-attention among label queries], cross-attention to the image tokens, feed-forward.

    ``queries`` is the decoder state (zeros before the first layer), ``label_pos`` the label
    embeddings, added to the attention queries (and self-attention keys) only.
    """

    def __init__(self, dim: int, heads: int, feedforward_dim: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        self.self_attn = (
            nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if self_attention else None
        )
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.drop_self = nn.Dropout(dropout) if self_attention else None
        self.cross_attn = CrossAttention(dim, heads, dropout)
        self.ff = feed_forward(dim, feedforward_dim, dropout)
        self.norm_cross, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop_cross, self.drop_ff = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, queries: Tensor, memory: Tensor, pos: Tensor, label_pos: Tensor) -> tuple[Tensor, Tensor]:
        if self.self_attn is not None:
            qk = queries + label_pos
            attended = self.self_attn(qk, qk, queries, need_weights=False)[0]
            queries = self.norm_self(queries + self.drop_self(attended))
        attended, log_weights = self.cross_attn(queries + label_pos, memory + pos, memory)
        queries = self.norm_cross(queries + self.drop_cross(attended))
        return self.norm_ff(queries + self.drop_ff(self.ff(queries))), log_weights


class GroupLinear(nn.Module):
    """One linear classifier per query: ``logit[l] = w_l . x_l + b_l`` (weight L x d, bias L)."""

    def __init__(self, num_groups: int, dim: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(dim)  # nn.Linear's default initialisation, per class
        self.weight = nn.Parameter(torch.empty(num_groups, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_groups).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.weight).sum(-1) + self.bias


class Query2LabelHead(nn.Module):
    """Feature map B x D x h x w -> ``{"logits": B x L, "maps": B x L x h x w}`` (see the module docstring)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_dim: int = 256,
        input_proj: bool | None = None,
        encoder_layers: int = 1,
        decoder_layers: int = 2,
        heads: int = 4,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
        decoder_self_attention: bool = False,
    ) -> None:
        super().__init__()
        if input_proj is None:  # the reference's default: project only when the widths differ
            input_proj = in_features != hidden_dim
        if not input_proj and in_features != hidden_dim:
            raise ValueError(
                f"head.input_proj=false needs head.hidden_dim equal to the backbone's feature width "
                f"({in_features}), got hidden_dim={hidden_dim}; set head.input_proj=true or head.hidden_dim={in_features}"
            )
        if decoder_layers < 1 or encoder_layers < 0:
            raise ValueError(
                f"Query2Label needs at least one decoder layer and no negative encoder layers, "
                f"got encoder_layers={encoder_layers}, decoder_layers={decoder_layers}"
            )
        if hidden_dim % 4:
            raise ValueError(f"head.hidden_dim must be divisible by 4 (sine positional encoding), got {hidden_dim}")
        if hidden_dim % heads:
            raise ValueError(f"head.hidden_dim={hidden_dim} is not divisible by head.heads={heads}")
        self.hidden_dim = hidden_dim
        self.input_proj = nn.Conv2d(in_features, hidden_dim, kernel_size=1) if input_proj else nn.Identity()
        self.encoder = nn.ModuleList(
            EncoderLayer(hidden_dim, heads, feedforward_dim, dropout) for _ in range(encoder_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(hidden_dim, heads, feedforward_dim, dropout, decoder_self_attention)
            for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.label_queries = nn.Embedding(num_classes, hidden_dim)
        # The positional encoding of the last grid seen, (h, w, device, dtype) -> tensor: fixed, so built once.
        self._pos_key: tuple | None = None
        self._pos: Tensor | None = None
        self.classifier = GroupLinear(num_classes, hidden_dim)
        # The reference initialises its transformer (encoder, decoder, final norm) this way;
        # nn.MultiheadAttention and CrossAttention have zeroed their attention biases already.
        for layer in (*self.encoder, *self.decoder):
            for param in layer.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)

    def _positions(self, h: int, w: int, tokens: Tensor) -> Tensor:
        key = (h, w, tokens.device, tokens.dtype)
        if self._pos is None or self._pos_key != key:
            self._pos = sine_positional_encoding(h, w, self.hidden_dim).to(device=tokens.device, dtype=tokens.dtype)[
                None
            ]
            self._pos_key = key
        return self._pos

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        projected = self.input_proj(features)
        b, _, h, w = projected.shape
        tokens = projected.flatten(2).transpose(1, 2)  # B x N x d, N = h * w
        pos = self._positions(h, w, tokens)
        for layer in self.encoder:
            tokens = layer(tokens, pos)
        label_pos = self.label_queries.weight[None].expand(b, -1, -1)
        queries = torch.zeros_like(label_pos)
        for layer in self.decoder:
            queries, log_weights = layer(queries, tokens, pos, label_pos)
        logits = self.classifier(self.decoder_norm(queries))
        # log of the head-averaged attention, B x L x N; + log N makes a uniform attention 0.
        log_attention = torch.logsumexp(log_weights, dim=1) - math.log(log_weights.shape[1]) + math.log(h * w)
        maps = logits[..., None] + log_attention.to(logits.dtype)
        return {"logits": logits, "maps": maps.view(b, -1, h, w)}
