"""CV-VAE, 4-channel latent variant (``CVVAEModel``, SD1.x/2.x-compatible latent space).

Our own implementation of AILab-CVC/CV-VAE ``models/vae_models.py`` + ``models/modeling_vae.py``
(commit 375f18a). Module tree and parameter names are the official ones, so the official
``diffusion_pytorch_model.safetensors`` loads with ``strict=True``.

Layout is [B, C, T, H, W]. The encoder is causal in time (every 3-D conv repeats the first frame
in front), so latent frame 0 depends only on pixel frame 0. Only the first conv of each resblock
is 3-D ("half 3D"); the second is a per-frame 2-D conv. Time is halved at encoder levels 0 and 2
and doubled (T -> 2T-1) at decoder levels 3 and 1. The decoder is not causal.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import CVVAEBase
from .layers import (
    CausalConv3d,
    Conv2dWithExtraDim,
    Conv3d,
    batch_to_frames,
    frames_to_batch,
    nearest2x_conv3d,
    replicate_front,
    silu_,
    single_head_attention,
)

SUPPORTED_ATTN_TYPES = ("vanilla", "vanilla-xformers", "spatial-temporal-xformer", "none")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-5, affine=True)


def _conv_class(causal: bool, use_3d_conv: bool):
    """Which conv the official code picks for a "3-D" position."""
    if not use_3d_conv:
        return Conv2dWithExtraDim
    if causal:
        return CausalConv3d
    return Conv3d


class ResnetBlock3D(nn.Module):
    """GroupNorm-SiLU-conv1 (3-D) - GroupNorm-SiLU-dropout-conv2 (2-D per frame when half_3d) + skip."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 use_3d_conv: bool = True, half_3d: bool = True, causal: bool = False):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        conv_cls = _conv_class(causal, use_3d_conv)
        self.norm1 = _group_norm(in_channels)
        self.conv1 = conv_cls(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        conv2_cls = Conv2dWithExtraDim if half_3d else conv_cls
        self.conv2 = conv2_cls(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = conv_cls(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.conv1(silu_(self.norm1(x)))
        h = self.conv2(self.dropout(silu_(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class Downsample3D(nn.Module):
    """Stride-2 conv (space, and time when ``down_time``): zero-pad right/bottom by 1, repeat the
    first frame twice in front. T -> floor((T-1)/2)+1 with ``down_time``."""

    def __init__(self, in_channels: int, down_time: bool = False):
        super().__init__()
        self.down_time = down_time
        stride = 2 if down_time else (1, 2, 2)
        self.conv = Conv3d(in_channels, in_channels, kernel_size=3, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = F.pad(x, (0, 1, 0, 1, 0, 0))
        return self.conv(replicate_front(x, 2))


class Upsample3D(nn.Module):
    """Nearest x2 in space, conv with ``in * up_time`` outputs, channel groups become frames.
    With ``up_time`` the first frame is dropped: T -> 2T-1."""

    def __init__(self, in_channels: int, up_time: bool = False, causal: bool = False):
        super().__init__()
        self.up_time = 2 if up_time else 1
        self.causal = causal
        self.conv = Conv3d(in_channels, in_channels * self.up_time, kernel_size=3, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # = conv(time-replicate(zero-pad(nearest x2(x)))) then depth-to-time, computed on the
        # low-resolution x (layers.nearest2x_conv3d: 2.25x fewer multiply-adds, no upsampled copy).
        x = nearest2x_conv3d(x, *self.conv.weights_for(x), (2, 0) if self.causal else (1, 1), "zeros",
                             self.up_time)
        if self.up_time != 1:
            x = x[:, :, 1:]
        return x


class SpatialAttnBlock(nn.Module):
    """Single-head self-attention within each frame (official ``MemoryEfficientAttnBlock``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = _group_norm(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def spatial(self, frames: torch.Tensor) -> torch.Tensor:
        """Attention over H*W tokens of [N,C,H,W] frames, then ``proj_out`` (no residual)."""
        n, c, h, w = frames.shape
        normed = self.norm(frames)
        q, k, v = (conv(normed).reshape(n, c, h * w).transpose(1, 2) for conv in (self.q, self.k, self.v))
        out = single_head_attention(q, k, v).transpose(1, 2).reshape(n, c, h, w)
        return self.proj_out(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x + batch_to_frames(self.spatial(frames_to_batch(x)), x.shape[0])


class VideoAttnBlock(SpatialAttnBlock):
    """Decoder mid attention (official ``MemoryEfficientAttnVideoBlock``): spatial attention per
    frame, then temporal attention per pixel on its output, one residual at the end."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        self.q_t = nn.Linear(in_channels, in_channels)
        self.k_t = nn.Linear(in_channels, in_channels)
        self.v_t = nn.Linear(in_channels, in_channels)
        self.proj_out_t = nn.Linear(in_channels, in_channels)
        self.norm_t = nn.LayerNorm(in_channels)

    def temporal(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention over the T axis of [N=B*H*W, T, C] tokens."""
        normed = self.norm_t(tokens)
        out = single_head_attention(self.q_t(normed), self.k_t(normed), self.v_t(normed))
        return self.proj_out_t(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b, c, t, h, w = x.shape
        s = self.spatial(frames_to_batch(x))  # [(b t), c, h, w]
        tokens = s.reshape(b, t, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, t, c)
        out = self.temporal(tokens).reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return x + out


def make_attn(in_channels: int, attn_type: str) -> nn.Module:
    """Attention block for an official ``attn_type`` name (xformers types run on SDPA)."""
    if attn_type in ("vanilla", "vanilla-xformers"):
        return SpatialAttnBlock(in_channels)
    if attn_type == "spatial-temporal-xformer":
        return VideoAttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"CV-VAE attention type {attn_type!r} is not supported; use one of {SUPPORTED_ATTN_TYPES}")


class Encoder(nn.Module):
    """Causal video encoder: pixels [B,3,T,H,W] -> moments [B,2z,1+(T-1)/4,H/8,W/8]."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 dropout: float, in_channels: int, z_channels: int, double_z: bool, attn_type: str,
                 use_3d_conv: bool, half_3d: bool, causal: bool, resolution: int = 256):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        conv_cls = _conv_class(causal, use_3d_conv)
        block_kw = dict(dropout=dropout, use_3d_conv=use_3d_conv, half_3d=half_3d, causal=causal)
        self.conv_in = conv_cls(in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1,) + tuple(ch_mult)
        curr_res = resolution
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock3D(in_channels=block_in, out_channels=block_out, **block_kw))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(make_attn(block_in, attn_type))
            if i_level != self.num_resolutions - 1:
                # Time is halved at even levels only (official ``half_t_mult``): 4x overall.
                level.downsample = Downsample3D(block_in, down_time=(i_level % 2 == 0))
                curr_res //= 2
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock3D(in_channels=block_in, out_channels=block_in, **block_kw)
        self.mid.attn_1 = make_attn(block_in, attn_type)
        self.mid.block_2 = ResnetBlock3D(in_channels=block_in, out_channels=block_in, **block_kw)
        self.norm_out = _group_norm(block_in)
        self.conv_out = conv_cls(block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(silu_(self.norm_out(h)))


class Decoder(nn.Module):
    """Non-causal video decoder: latents [B,z,T',h,w] -> pixels [B,3,4T'-3,8h,8w]."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float, z_channels: int, attn_type: str,
                 use_3d_conv: bool, half_3d: bool, causal: bool, resolution: int = 256):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        conv_cls = _conv_class(causal, use_3d_conv)
        block_kw = dict(dropout=dropout, use_3d_conv=use_3d_conv, half_3d=half_3d, causal=causal)
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = conv_cls(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock3D(in_channels=block_in, out_channels=block_in, **block_kw)
        self.mid.attn_1 = make_attn(block_in, attn_type)
        self.mid.block_2 = ResnetBlock3D(in_channels=block_in, out_channels=block_in, **block_kw)
        levels = [None] * self.num_resolutions
        for i_level in reversed(range(self.num_resolutions)):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock3D(in_channels=block_in, out_channels=block_out, **block_kw))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(make_attn(block_in, attn_type))
            if i_level != 0:
                # Mirrors the encoder: time doubles at odd levels (3 and 1 for 4 levels).
                level.upsample = Upsample3D(block_in, up_time=(i_level % 2 == 1), causal=causal)
                curr_res *= 2
            levels[i_level] = level
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(block_in)
        self.conv_out = conv_cls(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(silu_(self.norm_out(h)))


class CVVAEModel(CVVAEBase):
    """CV-VAE with 4 latent channels. Constructor arguments are the official ``config.json`` keys.

    ``encode(x)`` -> :class:`~cvd_core.cvvae.posterior.CVVAEPosterior` (unscaled latents),
    ``decode(z)`` -> pixels; both [B,C,T,H,W], pixels in [-1, 1]. Scale latents by
    ``scaling_factor`` (0.18215) outside, as the official pipelines do.
    """

    variant = "z4"

    def __init__(self, double_z: bool = True, z_channels: int = 4, in_channels: int = 3, out_ch: int = 3,
                 ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (), dropout: float = 0.0, use_3d_conv: bool = True,
                 half_3d: bool = True, causal_encoder: bool = True, causal_decoder: bool = False,
                 encoder_attn_type: str = "vanilla-xformers", decoder_attn_type: str = "spatial-temporal-xformer",
                 scaling_factor: float = 0.18215, force_upcast: bool = True, en_de_n_frames_a_time: int | None = 16,
                 time_n_compress: int | None = 4, spatial_n_compress: int | None = 8,
                 tile_spatial_size: int | None = 576, num_video_frames: int | None = None,
                 tile_overlap_ratio: float | None = 0.2222, reshape_z_dim_to_4: bool = False,
                 reshape_x_dim_to_4: bool = False):
        super().__init__()
        if len(ch_mult) != 4:
            # Time compression is tied to levels 0 and 2: other depths change the 4x rule.
            raise ValueError(f"CV-VAE needs 4 resolution levels (ch_mult of length 4), got ch_mult={list(ch_mult)}")
        common = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                      attn_resolutions=tuple(attn_resolutions), dropout=dropout, z_channels=z_channels,
                      use_3d_conv=use_3d_conv, half_3d=half_3d)
        self.encoder = Encoder(in_channels=in_channels, double_z=double_z, attn_type=encoder_attn_type,
                               causal=causal_encoder, **common)
        self.decoder = Decoder(out_ch=out_ch, attn_type=decoder_attn_type, causal=causal_decoder, **common)
        self._init_common(
            config=dict(double_z=double_z, z_channels=z_channels, in_channels=in_channels, out_ch=out_ch, ch=ch,
                        ch_mult=list(ch_mult), num_res_blocks=num_res_blocks, attn_resolutions=list(attn_resolutions),
                        dropout=dropout, use_3d_conv=use_3d_conv, half_3d=half_3d, causal_encoder=causal_encoder,
                        causal_decoder=causal_decoder, encoder_attn_type=encoder_attn_type,
                        decoder_attn_type=decoder_attn_type, scaling_factor=scaling_factor, force_upcast=force_upcast,
                        en_de_n_frames_a_time=en_de_n_frames_a_time, time_n_compress=time_n_compress,
                        spatial_n_compress=spatial_n_compress, tile_spatial_size=tile_spatial_size,
                        num_video_frames=num_video_frames, tile_overlap_ratio=tile_overlap_ratio,
                        reshape_z_dim_to_4=reshape_z_dim_to_4, reshape_x_dim_to_4=reshape_x_dim_to_4),
            in_channels=in_channels,
            latent_channels=z_channels,
            scaling_factor=scaling_factor,
            shift_factor=0.0,
            # Widest full-resolution activations (for memory estimates): encoder level 0 and
            # decoder level 1, whose time upsampler emits 2x channels at full resolution.
            encoder_full_res_channels=ch * ch_mult[0],
            decoder_full_res_channels=ch * ch_mult[1],
        )
