"""The CVD denoiser: SD1.5 UNet inflated to video + AnimateDiff motion modules + CameraCtrl + CVSMs.

Mirrors the official ``UNet3DConditionModelPoseCond`` forward: every 2-D layer (resnets, spatial
transformers, down/up samplers, conv in/out) runs on ``(b f)`` frames; after each down/up layer's
spatial transformer comes the motion module (conditioned on the pose features of that resolution)
and then the CVSM. The SD1.5 part is diffusers' ``UNet2DConditionModel``; the motion modules and
CVSMs are attached to its blocks as ``motion_modules`` / ``epi_modules`` so the parameter names are
exactly the official checkpoint names (``down_blocks.0.motion_modules.1.…``).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange, repeat
from torch import nn

from .cvsm import BiasFn, EpiModule
from .motion_module import VanillaTemporalModule


def _frames_2d(layer: Callable, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Run a 2-D layer on every frame of [b c f h w]."""
    frames = x.shape[2]
    y = layer(rearrange(x, "b c f h w -> (b f) c h w"), *args, **kwargs)
    return rearrange(y, "(b f) c h w -> b c f h w", f=frames)


class CVDUNet(nn.Module):
    """``UNet2DConditionModel`` (names unchanged) with ``motion_modules`` and ``epi_modules`` per layer."""

    def __init__(self, unet_config: dict, motion_heads: int = 8, motion_pe_max_len: int = 32,
                 epi_heads: int = 8, with_cvsm: bool = True, with_pose_adaptor: bool = True):
        super().__init__()
        self.unet = UNet2DConditionModel.from_config(unet_config)
        widths = list(self.unet.config.block_out_channels)
        self.with_cvsm = with_cvsm
        for i, block in enumerate(self.unet.down_blocks):
            self._attach(block, widths[i], len(block.resnets), motion_heads, motion_pe_max_len, epi_heads,
                         with_pose_adaptor)
        for i, block in enumerate(self.unet.up_blocks):
            self._attach(block, widths[::-1][i], len(block.resnets), motion_heads, motion_pe_max_len, epi_heads,
                         with_pose_adaptor)

    def _attach(self, block, width, layers, motion_heads, pe_max_len, epi_heads, with_pose_adaptor):
        motion = nn.ModuleList([VanillaTemporalModule(width, motion_heads, pe_max_len=pe_max_len)
                                for _ in range(layers)])
        if with_pose_adaptor:
            for module in motion:
                module.add_pose_processor()
        block.motion_modules = motion
        if self.with_cvsm:
            block.epi_modules = nn.ModuleList([EpiModule(width, epi_heads) for _ in range(layers)])

    # -- the forward pass ---------------------------------------------------------------------

    def _layer_tail(self, block, j, x, pose, partner_rows, bias_for, score_budget):
        """motion module then CVSM of layer j of a block."""
        x = block.motion_modules[j](x, pose)
        if self.with_cvsm:
            h, w = x.shape[-2:]
            x = block.epi_modules[j](x, partner_rows, bias_for(h, w), score_budget)
        return x

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                pose_features: Optional[Sequence[torch.Tensor]], partner_rows: torch.Tensor,
                bias_for: Callable[[int, int], Optional[BiasFn]], score_budget: Optional[int] = None) -> torch.Tensor:
        """sample [b 4 f h w]; timestep [b]; text [b 77 D]; pose_features per resolution [b C f h w]."""
        unet = self.unet
        batch, _, frames = sample.shape[:3]
        t_emb = unet.time_proj(timestep.expand(batch)).to(dtype=sample.dtype)
        emb = unet.time_embedding(t_emb)
        emb_frames = repeat(emb, "b c -> (b f) c", f=frames)
        text_frames = repeat(text, "b n c -> (b f) n c", f=frames)
        poses: List[Optional[torch.Tensor]] = list(pose_features) if pose_features is not None else [None] * 4

        x = _frames_2d(unet.conv_in, sample)
        skips = [x]
        for i, block in enumerate(unet.down_blocks):
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                x = _frames_2d(resnet, x, emb_frames)
                if attentions is not None:
                    x = _frames_2d(lambda t: attentions[j](t, encoder_hidden_states=text_frames,
                                                           return_dict=False)[0], x)
                x = self._layer_tail(block, j, x, poses[i], partner_rows, bias_for, score_budget)
                skips.append(x)
            if block.downsamplers is not None:
                for down in block.downsamplers:
                    x = _frames_2d(down, x)
                skips.append(x)

        mid = unet.mid_block
        x = _frames_2d(mid.resnets[0], x, emb_frames)
        for attention, resnet in zip(mid.attentions, mid.resnets[1:]):
            x = _frames_2d(lambda t: attention(t, encoder_hidden_states=text_frames, return_dict=False)[0], x)
            x = _frames_2d(resnet, x, emb_frames)

        for i, block in enumerate(unet.up_blocks):
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                x = torch.cat([x, skips.pop()], dim=1)
                x = _frames_2d(resnet, x, emb_frames)
                if attentions is not None:
                    x = _frames_2d(lambda t: attentions[j](t, encoder_hidden_states=text_frames,
                                                           return_dict=False)[0], x)
                x = self._layer_tail(block, j, x, poses[-(i + 1)], partner_rows, bias_for, score_budget)
            if block.upsamplers is not None:
                # upsample to the skip's exact size so odd latent sizes round-trip (as diffusers does)
                size = tuple(skips[-1].shape[-2:])
                for up in block.upsamplers:
                    x = _frames_2d(up, x, size)

        x = _frames_2d(unet.conv_norm_out, x)
        x = unet.conv_act(x)
        return _frames_2d(unet.conv_out, x)
