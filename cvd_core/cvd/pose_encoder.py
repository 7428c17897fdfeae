"""CameraCtrl's camera pose encoder: Plücker maps -> one feature map per UNet resolution.

``PixelUnshuffle(8)`` (6·64 = 384 channels) -> ``encoder_conv_in`` -> per level ``nums_rb`` residual
blocks, each followed by a temporal self-attention over frames (PE max length 16). Key names as
``CameraCtrl.ckpt["pose_encoder_state_dict"]``.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from einops import rearrange
from torch import nn

from .layers import TemporalTransformerBlock


class PoseResBlock(nn.Module):
    """CameraCtrl/T2I-Adapter ``ResnetBlock``: optional 2x down, optional in_conv, conv-ReLU-conv + skip."""

    def __init__(self, in_c: int, out_c: int, down: bool, ksize: int = 1, sk: bool = True, use_conv: bool = False):
        super().__init__()
        pad = ksize // 2
        self.down = down
        if down:
            self.down_opt = _Downsample(in_c, use_conv)
        self.in_conv = nn.Conv2d(in_c, out_c, ksize, 1, pad) if (in_c != out_c or not sk) else None
        self.block1 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_c, out_c, ksize, 1, pad)
        self.skep = nn.Conv2d(in_c, out_c, ksize, 1, pad) if not sk else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = self.down_opt(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        h = self.block2(self.act(self.block1(x)))
        return h + (self.skep(x) if self.skep is not None else x)


class _Downsample(nn.Module):
    """2x down that rounds odd sides *up*, like the UNet's stride-2 convs (3x3, padding 1).

    CameraCtrl's ``AvgPool2d(2, 2)`` floors: at a latent side that is not divisible by 8 (e.g. 36
    at 288 px: 36 -> 18 -> 9 -> 4 here, 5 in the UNet) its features stop matching the UNet's and the
    pose adaptor cannot add them. ``ceil_mode=True`` keeps every full 2x2 window as it was (same
    windows, same divisor: bit-identical whenever the side is even, so at every multiple of 64 px)
    and adds one border window over the leftover row/column, averaged over its in-image pixels only
    (padding 0: PyTorch divides a clipped window by its in-bounds count). That border token then
    describes exactly the pixels of the UNet token it is added to, with no extra compute or padding
    content. See docs/frame_sizes.md.
    """

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = (nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv
                   else nn.AvgPool2d(2, 2, ceil_mode=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class CameraPoseEncoder(nn.Module):
    def __init__(self, channels: Sequence[int] = (320, 640, 1280, 1280), nums_rb: int = 2, cin: int = 384,
                 ksize: int = 1, sk: bool = True, use_conv: bool = False, downscale_factor: int = 8,
                 heads: int = 8, pe_max_len: int = 16):
        super().__init__()
        channels = list(channels)
        self.unshuffle = nn.PixelUnshuffle(downscale_factor)
        self.encoder_conv_in = nn.Conv2d(cin, channels[0], 3, 1, 1)
        self.encoder_down_conv_blocks = nn.ModuleList()
        self.encoder_down_attention_blocks = nn.ModuleList()
        for level, width in enumerate(channels):
            convs, attns = nn.ModuleList(), nn.ModuleList()
            for j in range(nums_rb):
                in_c = (channels[level - 1] if level > 0 else channels[0]) if j == 0 else width
                convs.append(PoseResBlock(in_c, width, down=(j == 0 and level > 0), ksize=ksize, sk=sk,
                                          use_conv=use_conv))
                attns.append(TemporalTransformerBlock(width, heads, num_attentions=1, pe_max_len=pe_max_len))
            self.encoder_down_conv_blocks.append(convs)
            self.encoder_down_attention_blocks.append(attns)

    def forward(self, plucker: torch.Tensor) -> List[torch.Tensor]:
        """plucker [b, 6, f, H, W] -> features [b, C_l, f, ceil(H/8/2^l), ceil(W/8/2^l)] per level."""
        batch = plucker.shape[0]
        x = self.unshuffle(rearrange(plucker, "b c f h w -> (b f) c h w"))
        x = self.encoder_conv_in(x)
        features = []
        for convs, attns in zip(self.encoder_down_conv_blocks, self.encoder_down_attention_blocks):
            for conv, attn in zip(convs, attns):
                x = conv(x)
                h, w = x.shape[-2:]
                x = rearrange(x, "(b f) c h w -> (b h w) f c", b=batch)
                x = attn(x)
                x = rearrange(x, "(b h w) f c -> (b f) c h w", h=h, w=w)
            features.append(rearrange(x, "(b f) c h w -> b c f h w", b=batch))
        return features
