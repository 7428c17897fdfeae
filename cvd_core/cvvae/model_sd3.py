"""CV-VAE, 16-channel latent variant (``CVVAESD3Model``, SD3/SD3.5-compatible latent space).

Our own implementation of AILab-CVC/CV-VAE ``models/vae_models3d_sd3.py`` +
``models/vae_blocks3d_sd3.py`` (commit 375f18a), with the official diffusers-style parameter
names. Differences from the z=4 variant: every 3-D conv pads *replicate* in all dims (the
causal one repeats the first frame in front), GroupNorm eps 1e-6, 2-D 1x1 shortcuts, the
downsampler is a causal conv with padding 1, and the mid attention (encoder and decoder) is
spatial only (diffusers ``Attention``: one head, group norm, residual).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import CVVAEBase
from .layers import (CausalConv3d as _CausalConv3d, Conv2dWithExtraDim, Conv3d as _FastConv3d, batch_to_frames,
                     frames_to_batch, nearest2x_conv3d, silu_, single_head_attention)


class CausalConv3d(_CausalConv3d):
    """Causal 3-D conv of the SD3 variant: replicate padding in H and W too."""

    spatial_padding = "replicate"


class Conv3d(_FastConv3d):
    """Non-causal 3-D conv with replicate padding in T, H and W (official ``Conv3d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=padding, padding_mode="replicate")


def _conv_class(causal: bool):
    return CausalConv3d if causal else Conv3d


class ResnetBlock3D(nn.Module):
    """diffusers-style resnet: norm1-SiLU-conv1 (3-D) - norm2-SiLU-dropout-conv2 (2-D) + 2-D 1x1 shortcut."""

    def __init__(self, *, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6,
                 dropout: float = 0.0, causal: bool = True, half_3d: bool = True):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=eps, affine=True)
        conv1_cls = _conv_class(causal)
        self.conv1 = conv1_cls(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(num_groups=groups, num_channels=out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        conv2_cls = Conv2dWithExtraDim if half_3d else conv1_cls
        self.conv2 = conv2_cls(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = (Conv2dWithExtraDim(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
                              if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.conv1(silu_(self.norm1(x)))
        h = self.conv2(self.dropout(silu_(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample3D(nn.Module):
    """Stride-2 conv (space; time too when ``down_time``) through the padded conv of the variant."""

    def __init__(self, channels: int, causal: bool = True, down_time: bool = False):
        super().__init__()
        stride = 2 if down_time else (1, 2, 2)
        self.conv = _conv_class(causal)(channels, channels, kernel_size=3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.conv(x)


class Upsample3D(nn.Module):
    """Nearest x2 in space, padded conv with ``channels * up_time`` outputs, channel groups become
    frames, first frame dropped when ``up_time`` (T -> 2T-1)."""

    def __init__(self, channels: int, causal: bool = False, up_time: bool = False):
        super().__init__()
        self.up_time = 2 if up_time else 1
        self.conv = _conv_class(causal)(channels, channels * self.up_time, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # = conv(replicate-pad(nearest x2(x))) then depth-to-time, on the low-resolution x (see z=4).
        causal = isinstance(self.conv, CausalConv3d)
        x = nearest2x_conv3d(x, *self.conv.weights_for(x), (2, 0) if causal else (1, 1), "replicate",
                             self.up_time)
        if self.up_time != 1:
            x = x[:, :, 1:]
        return x


class FrameAttention(nn.Module):
    """diffusers ``Attention`` as configured by the official mid block (one head of ``channels``,
    group norm, biases, residual) applied to every frame separately."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(num_groups=groups, num_channels=channels, eps=eps, affine=True)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b = x.shape[0]
        frames = frames_to_batch(x)
        n, c, h, w = frames.shape
        tokens = self.group_norm(frames).reshape(n, c, h * w).transpose(1, 2)
        out = single_head_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens))
        out = self.to_out[1](self.to_out[0](out))
        out = out.transpose(1, 2).reshape(n, c, h, w)
        return x + batch_to_frames(out, b)


class UNetMidBlock3D(nn.Module):
    """resnet - attention - resnet."""

    def __init__(self, channels: int, groups: int, add_attention: bool, causal: bool, half_3d: bool):
        super().__init__()
        kw = dict(in_channels=channels, out_channels=channels, groups=groups, causal=causal, half_3d=half_3d)
        self.resnets = nn.ModuleList([ResnetBlock3D(**kw), ResnetBlock3D(**kw)])
        # The official block keeps a ``None`` slot when attention is off: no parameters either way.
        self.attentions = nn.ModuleList([FrameAttention(channels, groups)] if add_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class DownEncoderBlock3D(nn.Module):
    """``num_layers`` resnets and an optional downsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool,
                 causal: bool, half_3d: bool, down_time: bool):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock3D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          groups=groups, causal=causal, half_3d=half_3d)
            for i in range(num_layers)
        ])
        self.downsamplers = (nn.ModuleList([Downsample3D(out_channels, causal=causal, down_time=down_time)])
                             if add_downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock3D(nn.Module):
    """``num_layers`` resnets and an optional upsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool,
                 causal: bool, half_3d: bool, up_time: bool):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock3D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          groups=groups, causal=causal, half_3d=half_3d)
            for i in range(num_layers)
        ])
        self.upsamplers = (nn.ModuleList([Upsample3D(out_channels, causal=causal, up_time=up_time)])
                           if add_upsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


def _check_block_types(kind: str, types: Sequence[str], expected: str) -> None:
    bad = [t for t in types if t != expected]
    if bad:
        raise ValueError(f"CV-VAE SD3 {kind} blocks must all be {expected!r}, got {list(types)}")


class Encoder3D(nn.Module):
    """Causal encoder: pixels -> moments with ``2*out_channels`` channels."""

    def __init__(self, in_channels: int, out_channels: int, down_block_types: Sequence[str],
                 block_out_channels: Sequence[int], layers_per_block: int, norm_num_groups: int, double_z: bool,
                 mid_block_add_attention: bool, causal: bool, half_3d: bool):
        super().__init__()
        _check_block_types("down", down_block_types, "DownEncoderBlock3D")
        conv_cls = _conv_class(causal)
        self.conv_in = conv_cls(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i in range(len(down_block_types)):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final = i == len(block_out_channels) - 1
            self.down_blocks.append(DownEncoderBlock3D(
                input_channel, output_channel, layers_per_block, norm_num_groups, add_downsample=not is_final,
                causal=causal, half_3d=half_3d, down_time=(i % 2 == 0) and not is_final))
        self.mid_block = UNetMidBlock3D(block_out_channels[-1], norm_num_groups, mid_block_add_attention, causal, half_3d)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = conv_cls(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder3D(nn.Module):
    """Non-causal decoder: latents -> pixels."""

    def __init__(self, in_channels: int, out_channels: int, up_block_types: Sequence[str],
                 block_out_channels: Sequence[int], layers_per_block: int, norm_num_groups: int,
                 mid_block_add_attention: bool, causal: bool, half_3d: bool):
        super().__init__()
        _check_block_types("up", up_block_types, "UpDecoderBlock3D")
        conv_cls = _conv_class(causal)
        self.conv_in = conv_cls(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.mid_block = UNetMidBlock3D(block_out_channels[-1], norm_num_groups, mid_block_add_attention, causal, half_3d)
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i in range(len(up_block_types)):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            is_final = i == len(block_out_channels) - 1
            self.up_blocks.append(UpDecoderBlock3D(
                prev_output_channel, output_channel, layers_per_block + 1, norm_num_groups,
                add_upsample=not is_final, causal=causal, half_3d=half_3d, up_time=(i % 2 == 0) and not is_final))
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = conv_cls(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class CVVAESD3Model(CVVAEBase):
    """CV-VAE with 16 latent channels. Constructor arguments are the official ``config.json`` keys.

    Latents are unscaled; SD3 uses ``(z - shift_factor) * scaling_factor`` with 0.0609 / 1.5305
    (the official config has no such keys: SD3's own VAE values, *inferred*).
    """

    variant = "z16"

    def __init__(self, in_channels: int = 3, out_channels: int = 16,
                 down_block_types: Sequence[str] = ("DownEncoderBlock3D",) * 4,
                 up_block_types: Sequence[str] = ("UpDecoderBlock3D",) * 4,
                 block_out_channels: Sequence[int] = (128, 256, 512, 512), layers_per_block: int = 2,
                 norm_num_groups: int = 32, act_fn: str = "silu", double_z: bool = True,
                 mid_block_add_attention: bool = True, causal_encoder: bool = True, causal_decoder: bool = False,
                 half_3d: bool = True, en_de_n_frames_a_time: int | None = 16, time_n_compress: int | None = 4,
                 spatial_n_compress: int | None = 8, tile_spatial_size: int | None = 576,
                 num_video_frames: int | None = None, tile_overlap_ratio: float | None = 0.2222,
                 reshape_z_dim_to_4: bool = False, reshape_x_dim_to_4: bool = False,
                 scaling_factor: float = 1.5305, shift_factor: float = 0.0609):
        super().__init__()
        if act_fn != "silu":
            raise ValueError(f"CV-VAE SD3 supports act_fn='silu' only, got {act_fn!r}")
        if len(block_out_channels) != 4:
            raise ValueError(f"CV-VAE SD3 needs 4 blocks (block_out_channels of length 4), got {list(block_out_channels)}")
        common = dict(block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                      norm_num_groups=norm_num_groups, mid_block_add_attention=mid_block_add_attention, half_3d=half_3d)
        self.encoder = Encoder3D(in_channels, out_channels, down_block_types, double_z=double_z, causal=causal_encoder,
                                 **common)
        self.decoder = Decoder3D(out_channels, in_channels, up_block_types, causal=causal_decoder, **common)
        self._init_common(
            config=dict(in_channels=in_channels, out_channels=out_channels, down_block_types=list(down_block_types),
                        up_block_types=list(up_block_types), block_out_channels=list(block_out_channels),
                        layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, act_fn=act_fn,
                        double_z=double_z, mid_block_add_attention=mid_block_add_attention,
                        causal_encoder=causal_encoder, causal_decoder=causal_decoder, half_3d=half_3d,
                        en_de_n_frames_a_time=en_de_n_frames_a_time, time_n_compress=time_n_compress,
                        spatial_n_compress=spatial_n_compress, tile_spatial_size=tile_spatial_size,
                        num_video_frames=num_video_frames, tile_overlap_ratio=tile_overlap_ratio,
                        reshape_z_dim_to_4=reshape_z_dim_to_4, reshape_x_dim_to_4=reshape_x_dim_to_4,
                        scaling_factor=scaling_factor, shift_factor=shift_factor),
            in_channels=in_channels,
            latent_channels=out_channels,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            encoder_full_res_channels=block_out_channels[0],
            decoder_full_res_channels=block_out_channels[1],
        )
