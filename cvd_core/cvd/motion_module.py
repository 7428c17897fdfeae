"""AnimateDiff "Vanilla" motion module (temporal transformer), as used by AnimateDiff v3 and CVD.

Key layout (``v3_sd15_mm.ckpt``): ``temporal_transformer.{norm, proj_in, proj_out,
transformer_blocks.0.{attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0,pos_encoder.pe}, norms.{0,1},
ff.net.{0.proj,2}, ff_norm}}``; CameraCtrl adds ``attention_blocks.0.processor.qkv_merge``.
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange
from torch import nn

from .layers import TemporalTransformerBlock, frame_group_norm


class TemporalTransformer3D(nn.Module):
    def __init__(self, channels: int, heads: int = 8, num_blocks: int = 1, num_attentions: int = 2,
                 pe_max_len: int = 32, norm_groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, num_attentions, pe_max_len) for _ in range(num_blocks)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, pose: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [b c f h w]; pose (optional) [b c f h w] CameraCtrl features at this resolution."""
        height, width = x.shape[-2:]
        h = rearrange(frame_group_norm(self.norm, x), "b c f h w -> (b h w) f c")
        h = self.proj_in(h)
        if pose is not None:
            pose = rearrange(pose, "b c f h w -> (b h w) f c")
        for block in self.transformer_blocks:
            h = block(h, pose)
        h = self.proj_out(h)
        return rearrange(h, "(b h w) f c -> b c f h w", h=height, w=width) + x


class VanillaTemporalModule(nn.Module):
    """One motion module (``…motion_modules.N``)."""

    def __init__(self, channels: int, heads: int = 8, num_blocks: int = 1, num_attentions: int = 2,
                 pe_max_len: int = 32):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3D(channels, heads, num_blocks, num_attentions, pe_max_len)

    def add_pose_processor(self) -> None:
        """CameraCtrl conditions the first temporal attention of the (first) block."""
        self.temporal_transformer.transformer_blocks[0].attention_blocks[0].add_pose_processor()

    def forward(self, x: torch.Tensor, pose: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.temporal_transformer(x, pose)
