"""``CVDModel``: the loaded CVD denoiser with the ``predict_noise`` contract.

Batch layout (see the fixture README): row b of the UNet batch is one (view, CFG branch);
``partner[b]`` is the row whose same-index frames give row b's CVSM keys and values.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..camera.epipolar import epipolar_attention_bias
from .cvsm import DEFAULT_SCORE_BUDGET
from .network import CVDUNet
from .pose_encoder import CameraPoseEncoder
from ..dtypes import ParameterPlacement, resolve_dtype  # noqa: F401 (resolve_dtype re-exported)

SlopeSetting = Union[None, float, str]


def _checked_row_kinds(row_kinds, batch: int) -> Optional[List[int]]:
    """``row_kinds`` as a list of ``batch`` ints in {0, 1} (or None), or a clear error."""
    if row_kinds is None:
        return None
    kinds = [int(k) for k in torch.as_tensor(row_kinds).reshape(-1).tolist()]
    if len(kinds) != batch or any(k not in (0, 1) for k in kinds):
        raise ValueError(f"row_kinds must give one guidance branch per batch row ({batch} values, "
                         f"0 = cond, 1 = uncond), got {kinds}")
    return kinds


class CVDModel(ParameterPlacement, nn.Module):
    """UNet (SD1.5 + motion modules + CameraCtrl processors + CVSMs) and the CameraCtrl pose encoder.

    Attributes a caller may set:
        first_frame_slope: pseudo epipolar lines of frame 0 (F = 0): None = horizontal (default,
            reproducible), a float angle in radians (normal of the line), or "random" (the official
            ``epi_rand_slope_ff``: one angle ~ U(0, π) per resolution and call, from ``slope_generator``).
        bias_mode: "relative" (official) or "absolute" (band in image pixels, see
            ``cvd_core.camera.epipolar``).
        pixel_band, decay_alpha: the bias parameters (3, 3).
        attention_score_budget: max attention scores held at once by the CVSMs (elements); larger
            problems are chunked over rows and queries with identical results. None = never chunk.
        pose_adaptor_scale: CameraCtrl ``scale`` (1.0).
    """

    def __init__(self, unet: CVDUNet, pose_encoder: CameraPoseEncoder):
        super().__init__()
        self.unet = unet
        self.pose_encoder = pose_encoder
        self.first_frame_slope: SlopeSetting = None
        self.slope_generator: Optional[torch.Generator] = None
        self.bias_mode = "relative"
        self.pixel_band = 3.0
        self.decay_alpha = 3.0
        self.attention_score_budget: Optional[int] = DEFAULT_SCORE_BUDGET
        self.load_report: Dict[str, dict] = {}

    # -- settings ------------------------------------------------------------------------------


    @property
    def pose_adaptor_scale(self) -> float:
        for module in self.unet.modules():
            if hasattr(module, "qkv_merge"):
                return module.scale
        return 0.0

    @pose_adaptor_scale.setter
    def pose_adaptor_scale(self, value: float) -> None:
        for module in self.unet.modules():
            if hasattr(module, "qkv_merge"):
                module.scale = float(value)

    # -- helpers -------------------------------------------------------------------------------

    def _draw_slope(self) -> Optional[float]:
        setting = self.first_frame_slope
        if setting is None or isinstance(setting, (int, float)):
            return setting
        if setting == "random":
            return float(torch.rand(1, generator=self.slope_generator)) * math.pi
        raise ValueError(f"first_frame_slope must be None, a float (radians) or 'random', got {setting!r}")

    def _bias_factory(self, F_rows: torch.Tensor, first_frame_rows: torch.Tensor, image_hw: Tuple[int, int]):
        """bias_for(h, w) -> bias_for_rows(start, end); the full-range bias is cached per resolution."""
        cache: Dict[Tuple[int, int], torch.Tensor] = {}
        rows = F_rows.shape[0]

        def bias_for(h: int, w: int):
            slope = self._draw_slope()

            def bias_for_rows(start: int, end: int) -> torch.Tensor:
                full = start == 0 and end == rows
                if full and (h, w) in cache:
                    return cache[(h, w)]
                bias = epipolar_attention_bias(F_rows[start:end], h, w, image_hw, pixel_band=self.pixel_band,
                                               decay_alpha=self.decay_alpha, first_frame_slope=slope,
                                               mode=self.bias_mode, pseudo_rows=first_frame_rows[start:end])
                if full:
                    cache[(h, w)] = bias
                return bias

            return bias_for_rows

        return bias_for

    @staticmethod
    def _check_inputs(latents, text, plucker, F_mats, partner):
        if latents.dim() != 5:
            raise ValueError(f"latents must be [B, C, F, h, w], got shape {tuple(latents.shape)}")
        batch, _, frames, h, w = latents.shape
        if plucker.dim() != 5 or plucker.shape[:3] != (batch, 6, frames):
            raise ValueError(f"plucker must be [B={batch}, 6, F={frames}, H, W], got {tuple(plucker.shape)}")
        if plucker.shape[-2:] != (8 * h, 8 * w):
            raise ValueError(f"plucker must be at image resolution (8x the latent {h}x{w}), "
                             f"got {tuple(plucker.shape[-2:])}")
        if F_mats is None and partner is None:
            return  # no cross-view partners: plain CameraCtrl call
        if F_mats is None or partner is None:
            raise ValueError("F_mats and partner go together: give both (cross-view attention) or neither "
                             "(one view, CVSMs skipped)")
        if F_mats.shape != (batch, frames, 3, 3):
            raise ValueError(f"F_mats must be [B={batch}, F={frames}, 3, 3], got {tuple(F_mats.shape)}")
        if F_mats.dtype in (torch.float16, torch.bfloat16):
            # Pixel-unit F entries reach ~1e-7: half precision flushes them and moves the epipolar
            # bias by whole units (up to ~4 in fp16), silently. The bias is computed in float32.
            raise ValueError(f"F_mats must be float32 or float64, got {F_mats.dtype}: fundamental matrices lose "
                             "the epipolar geometry in half precision (keep them float32 whatever the model dtype)")
        if text.dim() != 3 or text.shape[0] != batch:
            raise ValueError(f"text must be [B={batch}, tokens, D], got {tuple(text.shape)}")
        if partner.shape != (batch,):
            raise ValueError(f"partner must be [B={batch}] row indices, got {tuple(partner.shape)}")
        if bool(((partner < 0) | (partner >= batch)).any()):
            raise ValueError(f"partner entries must be batch rows in [0, {batch}), got {partner.tolist()}")
        if bool((partner == torch.arange(batch, device=partner.device)).any()):
            raise ValueError("partner[b] must differ from b: CVSM attention is purely cross-view "
                             f"(got {partner.tolist()})")

    # -- the denoiser call ---------------------------------------------------------------------

    @torch.no_grad()
    def predict_noise(self, latents: torch.Tensor, timestep, text: torch.Tensor, plucker: torch.Tensor,
                      F_mats: Optional[torch.Tensor] = None, partner: Optional[torch.Tensor] = None,
                      row_kinds: Optional[Sequence[int]] = None,
                      pseudo_frames: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw noise prediction [B, 4, F, h, w] (before CFG) for one denoiser call.

        latents [B,4,F,h,w]; timestep scalar or [B]; text [B,77,D]; plucker [B,6,F,8h,8w];
        F_mats [B,F,3,3] with ``x_partnerᵀ F_mats[b,f] x_b = 0`` in image pixels; partner [B]
        (row whose same-index frames give row b's keys/values). The F-image is the plucker's
        H×W (the official F_mat_size = image height for square video).

        ``F_mats=None`` and ``partner=None`` (a single view, the sampler's N = 1 protocol): the
        CVSMs are skipped, which is plain CameraCtrl (SD1.5 + AnimateDiff + pose adaptor).

        ``row_kinds`` [B] (optional): the guidance branch of each row, 0 = conditional, 1 =
        unconditional (ComfyUI's ``cond_or_uncond`` numbering). The network itself ignores it; a
        feature cache with ``apply_to`` cond/uncond needs it to pick its rows.

        ``pseudo_frames`` [B, F] bool (optional): the frames of each row that get first-frame pseudo
        lines instead of the epipolar lines of F; None = frame 0 of every row (the clip's first frame,
        where all cameras coincide). Context windows pass it (``cvd_core.sampling.window_inputs``).
        """
        device, dtype = self.device, self.dtype
        if partner is not None:
            partner = torch.as_tensor(partner, device=device).long().reshape(-1)
        self._check_inputs(latents, text, plucker, F_mats, partner)
        self._draw_slope()  # validates the setting before any compute
        batch, _, frames = latents.shape[:3]
        row_kinds = _checked_row_kinds(row_kinds, batch)
        image_hw = tuple(int(s) for s in plucker.shape[-2:])

        if partner is None:
            partner_rows, bias_for = None, None
        else:
            frame_index = torch.arange(frames, device=device)
            partner_rows = (partner[:, None] * frames + frame_index).reshape(-1)
            if pseudo_frames is None:
                first_frame_rows = (frame_index == 0).repeat(batch)
            else:  # a context window: pseudo lines only where the cameras coincide (window_inputs)
                first_frame_rows = torch.as_tensor(pseudo_frames, dtype=torch.bool, device=device).reshape(-1)
                if first_frame_rows.numel() != batch * frames:
                    raise ValueError(f"pseudo_frames must be [B={batch}, F={frames}] booleans, got "
                                     f"{list(torch.as_tensor(pseudo_frames).shape)}")
            F_rows = F_mats.to(device=device, dtype=torch.float32).reshape(-1, 3, 3)
            bias_for = self._bias_factory(F_rows, first_frame_rows, image_hw)

        timestep = torch.as_tensor(timestep, device=device)
        if timestep.dim() == 0:
            timestep = timestep[None]
        pose_features = self.pose_encoder(plucker.to(device=device, dtype=dtype))
        out = self.unet(latents.to(device=device, dtype=dtype), timestep, text.to(device=device, dtype=dtype),
                        pose_features, partner_rows, bias_for,
                        self.attention_score_budget, row_kinds=row_kinds)
        return out.to(latents.dtype)

    def parameter_counts(self) -> Dict[str, int]:
        """Parameter counts per part (for a model-info display)."""
        counts = {"sd15_unet": 0, "motion_modules": 0, "pose_adaptor": 0, "cvsm": 0}
        for name, p in self.unet.named_parameters():
            if ".processor." in name:
                counts["pose_adaptor"] += p.numel()
            elif "motion_modules." in name:
                counts["motion_modules"] += p.numel()
            elif "epi_modules." in name:
                counts["cvsm"] += p.numel()
            else:
                counts["sd15_unet"] += p.numel()
        counts["pose_encoder"] = sum(p.numel() for p in self.pose_encoder.parameters())
        return counts
