"""The CVD denoiser: SD1.5 UNet inflated to video + AnimateDiff motion modules + CameraCtrl + CVSMs.

Mirrors the official ``UNet3DConditionModelPoseCond`` forward: every 2-D layer (resnets, spatial
transformers, down/up samplers, conv in/out) runs on ``(b f)`` frames; after each down/up layer's
spatial transformer comes the motion module (conditioned on the pose features of that resolution)
and then the CVSM. The SD1.5 part is diffusers' ``UNet2DConditionModel``; the motion modules and
CVSMs are attached to its blocks as ``motion_modules`` / ``epi_modules`` so the parameter names are
exactly the official checkpoint names (``down_blocks.0.motion_modules.1.…``).

Optional RepVideo feature cache (``cvd_core.feature_cache``): set ``unet.feature_cache`` to a
``FeatureCacheConfig`` (or use ``with_feature_cache`` for a copy that shares the weights). Windows are
the *layer outputs of one resolution stage*, numbered exactly as ComfyUI numbers an SD1.5 UNet's
blocks (``conv_in`` 0, down layers and downsamplers 1-11, mid 12, up layers 13-24), so one config
means the same here and on a core ComfyUI ``MODEL``: before layer ``k`` its main-path input is blended
(skip connections stay raw, the ``cat`` of an up layer comes after the blend); after it, its output is
recorded, stage ``"down"`` for the encoder, ``"up"`` from the mid block on (an up block's upsampler
belongs to its last layer). The cache state is built inside each ``forward`` and dropped with it.

A second window target, ``feature_cache_target = "motion_modules"``, caches the *motion-module
outputs* of consecutive layers instead and blends the next layer's motion-module input: the
temporal features that RepVideo's adjacent-frame diagnostic measures, leaving the spatial path (and
conv_in, downsamplers, the mid block) alone. It uses the same layer numbers (so block_start/end
mean the same layers); windows hold the layers of one down or up block (2 or 3, stage key per
block, since a down and an up block of equal resolution have equal shapes).
"""

from __future__ import annotations

import copy
from typing import Callable, List, Optional, Sequence

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange, repeat
from torch import nn

from ..feature_cache import (UNET_LAYOUT, FeatureCacheConfig, FeatureCacheState, combine_rows,
                             fraction_from_timestep, rows_for_apply_to)
from .cvsm import BiasFn, EpiModule
from .motion_module import VanillaTemporalModule


def _frames_2d(layer: Callable, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Run a 2-D layer on every frame of [b c f h w]."""
    frames = x.shape[2]
    y = layer(rearrange(x, "b c f h w -> (b f) c h w"), *args, **kwargs)
    return rearrange(y, "(b f) c h w -> b c f h w", f=frames)


DDPM_TRAIN_STEPS = 1000  # SD1.5 / AnimateDiff schedule: timesteps 0..999 (for the cache's step range)
_DOWN, _UP = "down", "up"
LAYER_OUTPUTS, MOTION_MODULE_OUTPUTS = "layers", "motion_modules"
CACHE_TARGETS = (LAYER_OUTPUTS, MOTION_MODULE_OUTPUTS)


def _blend(cache: Optional[FeatureCacheState], block: int, x: torch.Tensor, stage=None) -> torch.Tensor:
    return x if cache is None else cache.blend_input(block, x, stage)


def _record(cache: Optional[FeatureCacheState], block: int, x: torch.Tensor, stage: str) -> None:
    if cache is not None:
        cache.record_output(block, x, stage=stage)


def module_with_feature_cache(owner: nn.Module, config: Optional[FeatureCacheConfig], attr: str = "unet",
                              target: str = LAYER_OUTPUTS) -> nn.Module:
    """Shallow copy of ``owner`` whose child ``attr`` (a ``CVDUNet``) carries ``config`` (windows: ``target``).

    Parameters, buffers and every other attribute are shared with ``owner`` (no weight copy); only
    the two module objects on the path are new, so ``owner`` keeps its own setting.
    """
    child = getattr(owner, attr, None)
    if not isinstance(child, CVDUNet):
        raise TypeError(f"{type(owner).__name__}.{attr} must be a CVDUNet, got {type(child).__name__}")
    clone = _shallow_module_copy(owner)
    clone._modules[attr] = child.with_feature_cache(config, target)
    return clone


def _shallow_module_copy(module: nn.Module) -> nn.Module:
    """``copy.copy`` of a module with its own child/parameter/buffer dicts (shared tensors)."""
    clone = copy.copy(module)
    # copy.copy shares the instance's dicts; replacing a child of the copy must not touch the original
    for name in ("_modules", "_parameters", "_buffers"):
        object.__setattr__(clone, name, copy.copy(getattr(module, name)))
    return clone


class CVDUNet(nn.Module):
    """``UNet2DConditionModel`` (names unchanged) with ``motion_modules`` and ``epi_modules`` per layer."""

    feature_cache: Optional[FeatureCacheConfig] = None
    """RepVideo feature cache applied on every forward (None = off); see the module docstring."""
    feature_cache_target: str = LAYER_OUTPUTS
    """What the windows hold: ``"layers"`` (layer outputs per stage) or ``"motion_modules"``."""

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

    # -- feature cache --------------------------------------------------------------------------

    def check_feature_cache(self, config: Optional[FeatureCacheConfig], target: str = LAYER_OUTPUTS) -> None:
        """Raise unless ``config`` on ``target`` is a valid setting for this network's
        ``feature_cache`` / ``feature_cache_target`` attributes (which a caller may also set itself)."""
        if config is not None and not isinstance(config, FeatureCacheConfig):
            raise TypeError(f"feature_cache must be a FeatureCacheConfig or None, got {type(config).__name__}")
        if target not in CACHE_TARGETS:
            raise ValueError(f"feature cache target must be one of {CACHE_TARGETS}, got {target!r}")
        if config is not None:
            config.validate_for(self.cache_block_count())

    def with_feature_cache(self, config: Optional[FeatureCacheConfig], target: str = LAYER_OUTPUTS) -> "CVDUNet":
        """A copy sharing every weight with this network, with ``feature_cache = config`` on ``target``."""
        self.check_feature_cache(config, target)
        clone = _shallow_module_copy(self)
        clone.feature_cache = config
        clone.feature_cache_target = target
        return clone

    def cache_block_count(self) -> int:
        """Blocks in ComfyUI's numbering: conv_in, down layers + downsamplers, mid, up layers (25 for SD1.5)."""
        unet = self.unet
        down = sum(len(b.resnets) + (b.downsamplers is not None) for b in unet.down_blocks)
        return 1 + down + 1 + sum(len(b.resnets) for b in unet.up_blocks)

    def _feature_cache_state(self, timestep: torch.Tensor, batch: int,
                             row_kinds: Optional[Sequence[int]]) -> Optional[FeatureCacheState]:
        """This forward's cache, or None when the cache is off or touches no row at this step."""
        cfg = self.feature_cache
        if cfg is None or cfg.never_blends:
            return None
        cfg.validate_for(self.cache_block_count())
        if cfg.apply_to != "both" and row_kinds is None:
            raise ValueError(f"feature cache apply_to={cfg.apply_to!r} needs to know which batch rows are "
                             "conditional: pass row_kinds (0 = cond, 1 = uncond per row), or use apply_to='both'")
        rows = rows_for_apply_to(cfg.apply_to, row_kinds, batch)
        if not cfg.full_schedule:
            steps = timestep.expand(batch).tolist()
            rows = combine_rows(rows, [cfg.active_at(fraction_from_timestep(t, DDPM_TRAIN_STEPS)) for t in steps])
        state = FeatureCacheState(cfg, layout=UNET_LAYOUT, active_rows=rows)
        return state if state.enabled else None

    # -- the forward pass ---------------------------------------------------------------------

    def _layer_tail(self, block, j, x, pose, partner_rows, bias_for, score_budget, motion_cache=None,
                    layer=0, stage=None):
        """motion module then CVSM of layer j of a block (with the motion-module feature cache, if on)."""
        x = _blend(motion_cache, layer, x, stage)
        x = block.motion_modules[j](x, pose)
        _record(motion_cache, layer, x, stage)
        # partner_rows None: a call without cross-view partners (one view) skips the CVSMs.
        if self.with_cvsm and partner_rows is not None:
            h, w = x.shape[-2:]
            x = block.epi_modules[j](x, partner_rows, bias_for(h, w), score_budget)
        return x

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                pose_features: Optional[Sequence[torch.Tensor]], partner_rows: Optional[torch.Tensor],
                bias_for: Callable[[int, int], Optional[BiasFn]], score_budget: Optional[int] = None,
                row_kinds: Optional[Sequence[int]] = None) -> torch.Tensor:
        """sample [b 4 f h w]; timestep [b]; text [b 77 D]; pose_features per resolution [b C f h w].

        ``row_kinds``: per row 0 = conditional, 1 = unconditional (only needed by a feature cache
        with ``apply_to`` cond/uncond).
        """
        unet = self.unet
        batch, _, frames = sample.shape[:3]
        t_emb = unet.time_proj(timestep.expand(batch)).to(dtype=sample.dtype)
        emb = unet.time_embedding(t_emb)
        emb_frames = repeat(emb, "b c -> (b f) c", f=frames)
        text_frames = repeat(text, "b n c -> (b f) n c", f=frames)
        poses: List[Optional[torch.Tensor]] = list(pose_features) if pose_features is not None else [None] * 4

        state = self._feature_cache_state(timestep, batch, row_kinds)
        on_motion = self.feature_cache_target == MOTION_MODULE_OUTPUTS
        cache, motion_cache = (None, state) if on_motion else (state, None)

        x = _frames_2d(unet.conv_in, sample)
        skips = [x]
        _record(cache, 0, x, _DOWN)
        layer = 0  # ComfyUI block number of the last layer run (see the module docstring)
        for i, block in enumerate(unet.down_blocks):
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                layer += 1
                x = _blend(cache, layer, x)
                x = _frames_2d(resnet, x, emb_frames)
                if attentions is not None:
                    x = _frames_2d(lambda t: attentions[j](t, encoder_hidden_states=text_frames,
                                                           return_dict=False)[0], x)
                x = self._layer_tail(block, j, x, poses[i], partner_rows, bias_for, score_budget,
                                     motion_cache, layer, (_DOWN, i))
                skips.append(x)
                _record(cache, layer, x, _DOWN)
            if block.downsamplers is not None:
                layer += 1
                x = _blend(cache, layer, x)
                for down in block.downsamplers:
                    x = _frames_2d(down, x)
                skips.append(x)
                _record(cache, layer, x, _DOWN)

        layer += 1
        x = _blend(cache, layer, x)
        mid = unet.mid_block
        x = _frames_2d(mid.resnets[0], x, emb_frames)
        for attention, resnet in zip(mid.attentions, mid.resnets[1:]):
            x = _frames_2d(lambda t: attention(t, encoder_hidden_states=text_frames, return_dict=False)[0], x)
            x = _frames_2d(resnet, x, emb_frames)
        _record(cache, layer, x, _UP)

        last_block = len(unet.up_blocks) - 1
        for i, block in enumerate(unet.up_blocks):
            attentions = getattr(block, "attentions", None)
            last_layer = len(block.resnets) - 1
            for j, resnet in enumerate(block.resnets):
                layer += 1
                x = _blend(cache, layer, x)  # main path only: the skip joins raw
                x = torch.cat([x, skips.pop()], dim=1)
                x = _frames_2d(resnet, x, emb_frames)
                if attentions is not None:
                    x = _frames_2d(lambda t: attentions[j](t, encoder_hidden_states=text_frames,
                                                           return_dict=False)[0], x)
                x = self._layer_tail(block, j, x, poses[-(i + 1)], partner_rows, bias_for, score_budget,
                                     motion_cache, layer, (_UP, i))
                if j < last_layer:
                    _record(cache, layer, x, _UP)
            if block.upsamplers is not None:
                # upsample to the skip's exact size so odd latent sizes round-trip (as diffusers does)
                size = tuple(skips[-1].shape[-2:])
                for up in block.upsamplers:
                    x = _frames_2d(up, x, size)
            if i < last_block:  # the upsampler belongs to the last layer (ComfyUI); the final output feeds no block
                _record(cache, layer, x, _UP)

        x = _frames_2d(unet.conv_norm_out, x)
        x = unet.conv_act(x)
        return _frames_2d(unet.conv_out, x)
