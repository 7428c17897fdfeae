"""Cross-View Synchronization Module (CVSM, CVD's ``EpiModule``) and its pure cross-view attention.

Tokens are laid out ``(b f) (h w) c`` (row r = b·frames + f). Row r takes its keys and values
*only* from row ``partner_rows[r]`` (the partner view's frame with the same time index) and adds
the epipolar bias of row r. Key layout: ``epi_transformer.{norm, proj_in, proj_out,
transformer_blocks.0.{attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0}, norms.{0,1}, ff.net.{0.proj,2},
ff_norm}}`` (``CVD.ckpt["unet_trainable_dict"]``); the official ``pos_encoder.coords`` buffers are
not stored (the bias comes from ``cvd_core.camera.epipolar``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import AttentionProjections, FeedForward, frame_group_norm

# bias_for_rows(start, end) -> additive bias [end-start, Nq, Nk] for those token rows.
BiasFn = Callable[[int, int], torch.Tensor]

# Attention scores held at once (elements of heads × rows × queries × keys) by the chunked path.
DEFAULT_SCORE_BUDGET = 1 << 27


def cross_view_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, partner_rows: torch.Tensor,
                         bias_for_rows: Optional[BiasFn], score_budget: Optional[int] = None) -> torch.Tensor:
    """softmax(q·k[partner]ᵀ/√d + bias)·v[partner], heads-first tensors [R, heads, N, d].

    With ``score_budget`` (elements), rows and then queries are processed in chunks so that at most
    about that many scores (and bias entries) exist at once. Every query row's softmax is
    independent, so the chunked result is the same computation, remainders included.
    """
    rows, heads, n_q, _ = q.shape
    n_k = k.shape[2]
    k = k.index_select(0, partner_rows)
    v = v.index_select(0, partner_rows)
    if score_budget is None:
        bias = None if bias_for_rows is None else bias_for_rows(0, rows)[:, None].to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    per_row = heads * n_q * n_k
    row_chunk = max(1, min(rows, score_budget // max(per_row, 1)))
    query_chunk = n_q if row_chunk > 1 or per_row <= score_budget else max(1, score_budget // (heads * n_k))
    outputs = []
    for start in range(0, rows, row_chunk):
        end = min(rows, start + row_chunk)
        bias = None if bias_for_rows is None else bias_for_rows(start, end)[:, None].to(q.dtype)
        pieces = []
        for q_start in range(0, n_q, query_chunk):
            q_end = min(n_q, q_start + query_chunk)
            mask = None if bias is None else bias[:, :, q_start:q_end]
            pieces.append(F.scaled_dot_product_attention(q[start:end, :, q_start:q_end], k[start:end],
                                                         v[start:end], attn_mask=mask))
        outputs.append(torch.cat(pieces, dim=2))
    return torch.cat(outputs, dim=0)


class EpiSelfAttention(AttentionProjections):
    """CVD "Epi_Self" attention: queries from the row, keys/values from its partner row only."""

    def forward(self, x: torch.Tensor, partner_rows: torch.Tensor, bias_for_rows: Optional[BiasFn],
                score_budget: Optional[int] = None) -> torch.Tensor:
        q, k, v = (self.split_heads(proj(x)) for proj in (self.to_q, self.to_k, self.to_v))
        out = cross_view_attention(q, k, v, partner_rows, bias_for_rows, score_budget)
        return self.to_out[0](self.merge_heads(out))


class EpiTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, num_attentions: int = 2):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [EpiSelfAttention(dim, heads, dim // heads) for _ in range(num_attentions)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attentions)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, partner_rows, bias_for_rows, score_budget=None):
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = x + attention(norm(x), partner_rows, bias_for_rows, score_budget)
        return self.ff(self.ff_norm(x)) + x


class EpiTransformer3D(nn.Module):
    def __init__(self, channels: int, heads: int = 8, num_blocks: int = 1, num_attentions: int = 2,
                 norm_groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [EpiTransformerBlock(channels, heads, num_attentions) for _ in range(num_blocks)])
        # zero-initialised in the official constructor; CVD.ckpt fills it
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, partner_rows, bias_for_rows, score_budget=None):
        frames, height, width = x.shape[-3:]
        h = rearrange(frame_group_norm(self.norm, x), "b c f h w -> (b f) (h w) c")
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, partner_rows, bias_for_rows, score_budget)
        h = self.proj_out(h)
        return rearrange(h, "(b f) (h w) c -> b c f h w", f=frames, h=height, w=width) + x


class EpiModule(nn.Module):
    """One CVSM (``…epi_modules.N``)."""

    def __init__(self, channels: int, heads: int = 8, num_blocks: int = 1, num_attentions: int = 2):
        super().__init__()
        self.epi_transformer = EpiTransformer3D(channels, heads, num_blocks, num_attentions)

    def forward(self, x: torch.Tensor, partner_rows: torch.Tensor, bias_for_rows: Optional[BiasFn],
                score_budget: Optional[int] = None) -> torch.Tensor:
        """x [b c f h w] -> same shape; ``partner_rows`` [(b f)] long; ``bias_for_rows`` see BiasFn."""
        return self.epi_transformer(x, partner_rows, bias_for_rows, score_budget)
