"""Learned fusion operators from the multimodal literature, on the common ``FusionOp`` interface.

Each class implements one paper's operator (named in its docstring) with
``forward(a, b) -> fused`` and ``out_channels(a_channels, b_channels)``, as the operators in
:mod:`fusioncli.models.fusion` do. ``a`` is the RGB side and ``b`` the LiDAR side wherever the
operator is asymmetric. Two families:

* on **vectors** (B, C) -- the per-modality embeddings of late fusion: :class:`GatedFusion`
  (GMU), :class:`TensorFusion` (TFN), :class:`LowRankFusion` (LMF), :class:`LogitAverage`;
* on **feature maps** (B, C, H, W) -- the conv stems' outputs: :class:`FiLMFusion`,
  :class:`MMTMFusion`, :class:`CrossAttentionFusion`.

Every learnable tensor is a registered ``nn.Parameter`` (or sits in an ``nn.Module`` /
``nn.ParameterList``), so ``model.parameters()`` -- and the optimizer -- sees all of them. Only
ops that keep ``channels_last`` and bf16 autocast working are used, and nothing allocates on a
fixed device, so the operators also run on the ``meta`` device (how the CLI sizes strategies).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fusioncli.models.fusion import FusionOp


def _require_vectors(op: FusionOp, a: torch.Tensor, b: torch.Tensor) -> None:
    # A Linear applied to a (B, C, H, W) map would silently mix the W axis instead of channels.
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{type(op).__name__} fuses (B, C) vectors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")


def _require_maps(op: FusionOp, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 4 or b.ndim != 4:
        raise ValueError(
            f"{type(op).__name__} fuses (B, C, H, W) feature maps, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_channels(op: FusionOp, expected: tuple[int, int], got: tuple[int, int]) -> None:
    if expected != got:
        raise ValueError(f"{type(op).__name__} was built for {expected[0]} and {expected[1]} channels, got {got}")


def _with_one(x: torch.Tensor) -> torch.Tensor:
    """Append a constant 1 to each vector: (B, C) -> (B, C + 1).

    TFN and LMF both do this so the fused representation keeps the unimodal terms (and a bias)
    next to the bimodal products.
    """
    return torch.cat((x, x.new_ones(x.shape[0], 1)), dim=1)


class GatedFusion(FusionOp):
    """Gated Multimodal Unit (GMU) -- Arevalo, Solorio, Montes-y-Gomez, Gonzalez,
    "Gated Multimodal Units for Information Fusion", ICLR workshop 2017.

    ``h_a = tanh(W_a a)``, ``h_b = tanh(W_b b)``, ``z = sigmoid(W_z [a; b])``,
    ``h = z * h_a + (1 - z) * h_b``: a learned, per-sample and per-unit convex mix of the two
    modalities. Without biases, as in the paper's equations.
    """

    def __init__(self, a_features: int, b_features: int, hidden: int) -> None:
        super().__init__()
        self.features = (a_features, b_features)
        self.hidden = hidden
        self.hidden_a = nn.Linear(a_features, hidden, bias=False)
        self.hidden_b = nn.Linear(b_features, hidden, bias=False)
        self.gate = nn.Linear(a_features + b_features, hidden, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _require_vectors(self, a, b)
        h_a = torch.tanh(self.hidden_a(a))
        h_b = torch.tanh(self.hidden_b(b))
        z = torch.sigmoid(self.gate(torch.cat((a, b), dim=1)))
        return z * h_a + (1 - z) * h_b

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        _check_channels(self, self.features, (a_channels, b_channels))
        return self.hidden


class TensorFusion(FusionOp):
    """Tensor fusion (TFN) -- Zadeh, Chen, Poria, Cambria, Morency, "Tensor Fusion Network for
    Multimodal Sentiment Analysis", EMNLP 2017.

    The outer product of the 1-augmented vectors, ``[a; 1] (x) [b; 1]`` ((C_a+1) x (C_b+1): the
    unimodal terms plus every bimodal product), flattened and projected by one Linear to
    ``out_features`` -- the first layer of the paper's inference subnetwork, kept here so that
    TFN and :class:`LowRankFusion` (its low-rank approximation) map the same inputs to the same
    output size and their ``fusion`` parameter counts compare directly.
    """

    def __init__(self, a_features: int, b_features: int, out_features: int) -> None:
        super().__init__()
        self.features = (a_features, b_features)
        self.out_features = out_features
        self.projection = nn.Linear((a_features + 1) * (b_features + 1), out_features)

    def outer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The fused tensor before the projection: (B, C_a + 1, C_b + 1)."""
        _require_vectors(self, a, b)
        return _with_one(a).unsqueeze(2) * _with_one(b).unsqueeze(1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.projection(self.outer(a, b).flatten(1))

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        _check_channels(self, self.features, (a_channels, b_channels))
        return self.out_features


class LowRankFusion(FusionOp):
    """Low-rank multimodal fusion (LMF) -- Liu, Shen, Lakshminarasimhan, Liang, Zadeh, Morency,
    "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors", ACL 2018.

    TFN's projection ``W . ([a; 1] (x) [b; 1])`` with ``W`` decomposed into ``rank`` modality-
    specific factors: ``h = sum_i w_i * ([a; 1] W_a^(i)) * ([b; 1] W_b^(i)) + bias``, which never
    builds the outer product. Initialised as the authors' code does (Xavier-normal factors and
    rank weights, zero bias).

    The factors live in an ``nn.ParameterList``: in a plain Python list they would not be
    registered, so the optimizer would never see them (MultiBench's LMF has exactly that bug).
    """

    def __init__(self, a_features: int, b_features: int, out_features: int, rank: int = 4) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.features = (a_features, b_features)
        self.out_features = out_features
        self.rank = rank
        self.factors = nn.ParameterList(
            [nn.Parameter(torch.empty(rank, n + 1, out_features)) for n in (a_features, b_features)]
        )
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for factor in self.factors:
            nn.init.xavier_normal_(factor)
        nn.init.xavier_normal_(self.rank_weights)
        nn.init.zeros_(self.bias)

    def full_weight(self) -> torch.Tensor:
        """The equivalent TFN projection weight, (out, (C_a+1) * (C_b+1)), for tests and analysis."""
        fa, fb = self.factors
        w = torch.einsum("r,rio,rjo->oij", self.rank_weights[0], fa, fb)
        return w.reshape(self.out_features, -1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _require_vectors(self, a, b)
        fa, fb = self.factors
        # (B, C+1) @ (rank, C+1, out) -> (rank, B, out): each modality's rank-many projections.
        product = torch.matmul(_with_one(a), fa) * torch.matmul(_with_one(b), fb)
        # Weighted sum over the rank axis: (1, rank) @ (B, rank, out) -> (B, 1, out).
        return torch.matmul(self.rank_weights, product.transpose(0, 1)).squeeze(1) + self.bias

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        _check_channels(self, self.features, (a_channels, b_channels))
        return self.out_features


class LogitAverage(FusionOp):
    """Decision-level fusion: the mean of the two modalities' logits (no parameters).

    Logits, not probabilities, are averaged: the result is still a logit vector (so the usual
    cross-entropy applies and both classifiers train jointly), and ``softmax`` of the mean logit
    is the normalised geometric mean of the two predicted distributions (a product of experts).
    Averaging probabilities instead (a mixture) would need ``log`` of the mean to feed the loss.
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b) / 2

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        if a_channels != b_channels:
            raise ValueError(f"LogitAverage needs equal class counts, got {a_channels} and {b_channels}")
        return a_channels


class FiLMFusion(FusionOp):
    """Feature-wise linear modulation (FiLM) of ``a`` conditioned on ``b`` -- Perez, Strub,
    de Vries, Dumoulin, Courville, "FiLM: Visual Reasoning with a General Conditioning Layer",
    AAAI 2018.

    Direction: ``b`` (the LiDAR map) conditions ``a`` (the RGB map). A FiLM generator -- global
    average pool of ``b`` then one Linear -- predicts per-channel ``gamma`` and ``beta``, and the
    output is ``gamma * a + beta`` (channels of ``a``, same spatial size). ``gamma`` is
    parameterised as ``1 + delta`` so the layer starts close to the identity (a design choice;
    the paper predicts ``gamma`` directly). Asymmetric by design, as in the paper (the question
    conditions the image): LiDAR reaches the head only through ``gamma`` and ``beta``.
    """

    def __init__(self, a_channels: int, b_channels: int) -> None:
        super().__init__()
        self.channels = (a_channels, b_channels)
        self.generator = nn.Linear(b_channels, 2 * a_channels)

    def modulation(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma`` and ``beta`` predicted from ``b``, each (B, C_a, 1, 1)."""
        delta, beta = self.generator(b.mean(dim=(2, 3))).chunk(2, dim=1)
        return (1 + delta)[:, :, None, None], beta[:, :, None, None]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _require_maps(self, a, b)
        gamma, beta = self.modulation(b)
        return gamma * a + beta

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        _check_channels(self, self.channels, (a_channels, b_channels))
        return a_channels


class MMTMFusion(FusionOp):
    """Multimodal Transfer Module (MMTM) -- Joze, Shaban, Iuzzolino, Koishida, "MMTM: Multimodal
    Transfer Module for CNN Fusion", CVPR 2020 (a two-stream squeeze-and-excitation).

    Squeeze: global average pool of each map, concatenated, one joint Linear + ReLU to
    ``2 (C_a + C_b) / ratio`` units (``ratio=4``, the sizing of the reference implementation).
    Excite: one Linear per modality back to its channels; each map is rescaled channel-wise by
    ``2 * sigmoid(.)``, so the module starts near the identity. The two recalibrated maps are then
    concatenated (C_a + C_b channels), so ``mmtm`` differs from ``intermediate-concat`` only by
    the recalibration. (The paper inserts MMTMs at several depths and keeps the streams apart;
    here there is one MMTM, at the end of the conv stems.)
    """

    def __init__(self, a_channels: int, b_channels: int, ratio: int = 4) -> None:
        super().__init__()
        self.channels = (a_channels, b_channels)
        joint = max(1, 2 * (a_channels + b_channels) // ratio)
        self.squeeze = nn.Linear(a_channels + b_channels, joint)
        self.excite_a = nn.Linear(joint, a_channels)
        self.excite_b = nn.Linear(joint, b_channels)

    def excitations(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The channel scales in (0, 2) for ``a`` and ``b``, each (B, C, 1, 1)."""
        z = F.relu(self.squeeze(torch.cat((a.mean(dim=(2, 3)), b.mean(dim=(2, 3))), dim=1)))
        scale_a = 2 * torch.sigmoid(self.excite_a(z))
        scale_b = 2 * torch.sigmoid(self.excite_b(z))
        return scale_a[:, :, None, None], scale_b[:, :, None, None]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _require_maps(self, a, b)
        scale_a, scale_b = self.excitations(a, b)
        return torch.cat((a * scale_a, b * scale_b), dim=1)

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        _check_channels(self, self.channels, (a_channels, b_channels))
        return a_channels + b_channels


class MultiHeadCrossAttention(nn.Module):
    """Scaled dot-product attention of ``query`` tokens over ``context`` tokens, ``heads`` heads.

    Written with explicit matmuls (not ``F.scaled_dot_product_attention``) so the FLOP counter
    sees the attention products on every device, the meta device included; with 16-64 tokens
    the fused kernels would gain nothing.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, n_q, dim = query.shape
        head_dim = dim // self.heads
        q = self.query(query).view(batch, n_q, self.heads, head_dim).transpose(1, 2)
        k, v = self.key_value(context).view(batch, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(head_dim), dim=-1)
        mixed = torch.matmul(weights.to(v.dtype), v).transpose(1, 2).reshape(batch, n_q, dim)
        return self.out(mixed)


class CrossAttentionBlock(nn.Module):
    """One pre-norm transformer block whose attention reads the *other* modality:
    ``x = x + attn(LN(x), LN(y))``, then ``x = x + FFN(LN(x))`` (FFN: dim -> ``ffn_mult`` dim -> dim).

    Pre-norm as in MulT and TransFuser's GPT blocks; it also keeps the residual stream's scale, so
    positions where the stems saw an object stay larger than the empty background ones (a
    post-norm block rescales every token to unit variance).
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2) -> None:
        super().__init__()
        self.attention = MultiHeadCrossAttention(dim, heads)
        self.norm_attention = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.ReLU(), nn.Linear(ffn_mult * dim, dim))
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x), self.norm_context(context))
        return x + self.ffn(self.norm_ffn(x))


class CrossAttentionFusion(FusionOp):
    """Bidirectional cross-modal attention between two feature maps, as in MulT (Tsai et al.,
    "Multimodal Transformer for Unaligned Multimodal Language Sequences", ACL 2019) and
    TransFuser (Prakash, Chitta, Geiger, "Multi-Modal Fusion Transformer for End-to-End
    Autonomous Driving", CVPR 2021).

    Each map's H x W positions become tokens, projected to ``dim`` with a learned positional
    embedding per modality. RGB tokens attend to LiDAR tokens and LiDAR tokens to RGB tokens
    (one :class:`CrossAttentionBlock` per direction, both reading the un-updated tokens). The
    attended tokens go back to their H x W positions and the two maps are concatenated: output
    (B, 2 * dim, H, W) for a map head, much as TransFuser hands the transformer's output back to
    the conv feature maps. Not mean-pooled: on these small-object maps a head after global
    average pooling barely trained (measured; see ``fusioncli.models.zoo.build_cross_attention``).
    """

    def __init__(self, a_channels: int, b_channels: int, tokens: int, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.channels = (a_channels, b_channels)
        self.tokens = tokens
        self.dim = dim
        self.project_a = nn.Linear(a_channels, dim)
        self.project_b = nn.Linear(b_channels, dim)
        self.position_a = nn.Parameter(torch.empty(1, tokens, dim))
        self.position_b = nn.Parameter(torch.empty(1, tokens, dim))
        self.a_from_b = CrossAttentionBlock(dim, heads)
        self.b_from_a = CrossAttentionBlock(dim, heads)
        # ViT/GPT-style small init, so position does not drown the content at the start.
        nn.init.trunc_normal_(self.position_a, std=0.02)
        nn.init.trunc_normal_(self.position_b, std=0.02)

    def _tokens(self, x: torch.Tensor, project: nn.Linear, position: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H*W, C) in logical order, whatever the memory format.
        tokens = x.flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.tokens:
            raise ValueError(f"CrossAttentionFusion was built for {self.tokens} positions, got {tokens.shape[1]}")
        return project(tokens) + position

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _require_maps(self, a, b)
        ta = self._tokens(a, self.project_a, self.position_a)
        tb = self._tokens(b, self.project_b, self.position_b)
        fused = torch.cat((self.a_from_b(ta, tb), self.b_from_a(tb, ta)), dim=2)  # (B, H*W, 2 dim)
        return fused.transpose(1, 2).reshape(a.shape[0], 2 * self.dim, a.shape[2], a.shape[3])

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        _check_channels(self, self.channels, (a_channels, b_channels))
        return 2 * self.dim
