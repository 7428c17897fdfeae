"""Small building blocks shared by the motion modules, the CVSMs and the pose encoder.

Parameter names follow diffusers' ``Attention`` / ``FeedForward`` (``to_q``, ``to_out.0``,
``ff.net.0.proj``, ``ff.net.2``) because the official AnimateDiff / CameraCtrl / CVD checkpoints
store them under those names.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class AttentionProjections(nn.Module):
    """q/k/v/out projections of a multi-head attention (no q/k/v bias, output bias), diffusers names."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        # index 1 is diffusers' dropout slot; keeping it makes ``to_out.0`` the checkpoint name.
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, heads*d] -> [B, heads, L, d]."""
        return rearrange(x, "b l (h d) -> b h l d", h=self.heads)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b h l d -> b l (h d)")


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """diffusers ``FeedForward(dim, activation_fn="geglu")``: 4x inner width, names ``net.0.proj``, ``net.2``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class PositionalEncoding(nn.Module):
    """AnimateDiff's sinusoidal frame encoding; ``pe`` [1, max_len, d] is stored in the checkpoints."""

    def __init__(self, d_model: int, max_len: int = 32):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(f"frames must be <= {self.pe.shape[1]} (the temporal position encoding's "
                             f"max_len), got {frames}")
        return x + self.pe[:, :frames].to(x.dtype)


class PoseAdaptorProcessor(nn.Module):
    """CameraCtrl's ``PoseAdaptorAttnProcessor`` weights (query + key/value condition): ``qkv_merge``.

    The attention input becomes ``qkv_merge(x + pose)·scale + x`` for q, k and v alike.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.qkv_merge = nn.Linear(dim, dim)
        self.scale = 1.0

    def forward(self, x: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        return self.qkv_merge(x + pose) * self.scale + x


class TemporalSelfAttention(AttentionProjections):
    """AnimateDiff "Temporal_Self" attention over frames: input [(b h w), f, c].

    Position encoding is added to the (already layer-normed) input; with a ``processor`` the
    CameraCtrl pose features condition the queries, keys and values.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, pe_max_len: int = 32):
        super().__init__(dim, heads, dim_head)
        self.pos_encoder = PositionalEncoding(dim, max_len=pe_max_len)
        self.processor: Optional[PoseAdaptorProcessor] = None

    def add_pose_processor(self) -> None:
        self.processor = PoseAdaptorProcessor(self.to_q.in_features)

    def forward(self, x: torch.Tensor, pose: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.pos_encoder(x)
        if self.processor is not None and pose is not None:
            x = self.processor(x, pose)
        q, k, v = (self.split_heads(proj(x)) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](self.merge_heads(out))


class TemporalTransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``h += attn_i(norm_i(h))`` for each attention, then ``h += ff(ff_norm(h))``."""

    def __init__(self, dim: int, heads: int, num_attentions: int, pe_max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalSelfAttention(dim, heads, dim // heads, pe_max_len) for _ in range(num_attentions)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attentions)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pose: Optional[torch.Tensor] = None) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), pose) + x
        return self.ff(self.ff_norm(x)) + x


def frame_group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """AnimateDiff's ``InflatedGroupNorm``: GroupNorm of every frame on its own ([b c f h w])."""
    frames = x.shape[2]
    y = norm(rearrange(x, "b c f h w -> (b f) c h w"))
    return rearrange(y, "(b f) c h w -> b c f h w", f=frames)
