"""Temporal chunking and spatial tiling for CV-VAE encode/decode.

Modes (``TilingConfig.mode``):

- ``"none"``: one encoder/decoder call on the whole video.
- ``"official"``: the official ``tiled_encode``/``tiled_decode`` exactly (chunks of
  ``en_de_n_frames_a_time`` frames re-encoding the boundary frame, spatial tiles of
  ``tile_spatial_size`` px blended the official way). Settings whose tile stride is not a
  multiple of 8 are rejected instead of silently shrinking the output as upstream does.
- ``"manual"``: our tiler with explicit ``tile_size`` (px), ``tile_overlap`` (fraction) and
  ``temporal_chunk`` (frames). Tiles are all full-size (the last one is aligned to the edge) and
  blended with normalised linear ramps, so every accepted setting gives the exact output shape.
  Temporal windows follow the official scheme (windows share their boundary frame).
- ``"auto"``: ``manual`` with sizes chosen from free memory; on out-of-memory it releases the
  failed attempt and retries with smaller tiles, then shorter chunks.

Every mode produces its output one temporal window at a time (windows share no output frame), so
the compute device holds the input tiles of one call and one window of output; the whole result
is only assembled where the caller wants it (:func:`decode_frames` writes frames straight into a
CPU buffer). Working memory of ``manual``/``auto`` on the device thus stays flat in video length
for a fixed tile and chunk size; the input stays where it is and moves to the device tile by tile.
Every tile/chunk reports through :mod:`cvd_core.progress`; an exception from ``progress.advance``
(cancel) propagates and nothing is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Tuple

import torch

from ..guards import precision_hint, require_finite
from ..progress import Progress, ensure_progress
from .frames import (check_frame_count, check_spatial_size, latent_frames, pad_frames_with_last, padded_frame_count,
                     pixel_frames)
from .memory import estimate_tile_bytes, free_memory_bytes, is_out_of_memory, release_cached_memory
from .posterior import CVVAEPosterior

MODES = ("auto", "none", "manual", "official")
MIN_TILE_PX = 16
AUTO_MIN_TILE_PX = 64
AUTO_DEFAULT_CHUNK = 16
MAX_OVERLAP = 0.5


@dataclass(frozen=True)
class TilingConfig:
    """How to split a video for encode/decode.

    ``tile_size``: spatial tile edge in pixels (multiple of 8, >= 16); ``None``/0 = whole frame
    in ``manual``, upper bound in ``auto``. ``tile_overlap``: fraction of the tile shared with
    the neighbour, 0 to 0.5. ``temporal_chunk``: pixel frames per temporal window (multiple of
    4; windows share a boundary frame); ``None``/0 = whole video in ``manual``, 16 in ``auto``.
    """

    mode: str = "auto"
    tile_size: Optional[int] = None
    tile_overlap: float = 0.25
    temporal_chunk: Optional[int] = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"tiling mode must be one of {MODES}, got {self.mode!r}")
        tile = _optional_int("tile_size", self.tile_size)
        chunk = _optional_int("temporal_chunk", self.temporal_chunk)
        object.__setattr__(self, "tile_size", tile)
        object.__setattr__(self, "temporal_chunk", chunk)
        if tile is not None and (tile % 8 or tile < MIN_TILE_PX):
            lo, hi = max(MIN_TILE_PX, tile // 8 * 8), max(MIN_TILE_PX, -(-tile // 8) * 8)
            hint = f"{lo}" if lo == hi else f"{lo} or {hi}"
            raise ValueError(f"tile_size must be a multiple of 8 pixels and at least {MIN_TILE_PX}, got {tile}: use {hint}")
        if chunk is not None and (chunk % 4 or chunk < 4):
            lo, hi = max(4, chunk // 4 * 4), max(4, -(-chunk // 4) * 4)
            hint = f"{lo}" if lo == hi else f"{lo} or {hi}"
            raise ValueError(f"temporal_chunk must be a multiple of 4 frames (4, 8, 12, 16, ...), got {chunk}: use {hint}")
        overlap = float(self.tile_overlap)
        if not 0.0 <= overlap <= MAX_OVERLAP or math.isnan(overlap):
            raise ValueError(f"tile_overlap must be a fraction between 0 and {MAX_OVERLAP}, got {self.tile_overlap}")
        object.__setattr__(self, "tile_overlap", overlap)
        if self.mode in ("none", "official") and (tile is not None or chunk is not None):
            raise ValueError(f"tile_size and temporal_chunk are only used by modes 'manual' and 'auto'; "
                             f"mode {self.mode!r} takes none (got tile_size={tile}, temporal_chunk={chunk})")


def _optional_int(name: str, value) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be positive (or 0/None for 'not set'), got {value}")
    return value or None


# Where a finished piece of output goes: (first batch item, first output frame, block [b, C, t, H, W]).
Emit = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class TilePlan:
    """Concrete split in latent units: spatial tile and overlap, latent frames per window step."""

    latent_tile: Optional[int]
    latent_overlap: int
    chunk_latent: Optional[int]


# ---------------------------------------------------------------- public entry points


def encode_video(model, x: torch.Tensor, tiling: Optional[TilingConfig] = None, pad: bool = False,
                 progress: Optional[Progress] = None, memory_budget: Optional[int] = None) -> CVVAEPosterior:
    """Encode pixels [B,3,T,H,W] in [-1, 1] (4-D: single frames) -> posterior over *unscaled* latents.

    T must be 1+4k unless ``pad`` (repeat the last frame; ``posterior.num_frames`` keeps the
    original count for :func:`decode_video`). H and W must be multiples of 8. ``memory_budget``:
    bytes one ``auto`` tile may use (default: measured on the model's device).
    """
    tiling = tiling or TilingConfig()
    x = _as_video(model, x)
    _check_channels("input", x, model.in_channels)
    check_spatial_size(x.shape[3], x.shape[4])
    frames = x.shape[2]
    if pad:
        x = pad_frames_with_last(x, padded_frame_count(frames))
    else:
        check_frame_count(frames)
    moments = _Assembled((x.shape[0], latent_frames(x.shape[2]), x.shape[3] // 8, x.shape[4] // 8), model.device)
    with torch.no_grad():
        _dispatch(model, x, "encode", tiling, ensure_progress(progress), memory_budget, moments)
    return CVVAEPosterior(moments.out, num_frames=frames)


def decode_video(model, z: torch.Tensor, tiling: Optional[TilingConfig] = None, num_frames: Optional[int] = None,
                 progress: Optional[Progress] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """Decode *unscaled* latents [B,z,T',h,w] -> pixels [B,3,4T'-3,8h,8w] (about [-1, 1]) on the model's device.

    ``num_frames`` trims the output (the count before ``pad=True`` encoding); ``memory_budget`` as
    in :func:`encode_video`.
    """
    z, keep = _decodable(model, z, num_frames)
    video = _Assembled((z.shape[0], keep, z.shape[3] * 8, z.shape[4] * 8), model.device)
    with torch.no_grad():
        _dispatch(model, z, "decode", tiling or TilingConfig(), ensure_progress(progress), memory_budget, video)
    return video.out


def decode_frames(model, z: torch.Tensor, tiling: Optional[TilingConfig] = None, num_frames: Optional[int] = None,
                  progress: Optional[Progress] = None, memory_budget: Optional[int] = None,
                  out_device="cpu") -> torch.Tensor:
    """Decode *unscaled* latents [B,z,T',h,w] -> frames ``[B, T, 8h, 8w, 3]`` float32 in [0, 1] on ``out_device``.

    The same pixels as ``(decode_video(...) + 1) / 2`` clamped, but each temporal window is
    converted on the model's device and copied into the preallocated result as soon as it is done:
    the device never holds the whole video and nothing but the result grows with its length. A
    window with NaN or infinity raises ``NonFiniteError`` naming view, channel and frame.
    """
    z, keep = _decodable(model, z, num_frames)
    frames = torch.empty((z.shape[0], keep, z.shape[3] * 8, z.shape[4] * 8, 3), dtype=torch.float32,
                         device=out_device)
    hint = precision_hint(model.dtype)

    def emit(first: int, start: int, block: torch.Tensor) -> None:
        block = block[:, :, : max(0, keep - start)]
        require_finite(block, "the decoded frames", axes=("view", "channel", "frame"), hint=hint,
                       offset=(first, 0, start))
        pixels = ((block.float() + 1.0) / 2.0).clamp_(0.0, 1.0).permute(0, 2, 3, 4, 1)
        frames[first:first + block.shape[0], start:start + block.shape[2]].copy_(pixels)

    with torch.no_grad():
        _dispatch(model, z, "decode", tiling or TilingConfig(), ensure_progress(progress), memory_budget, emit)
    return frames


def _decodable(model, z: torch.Tensor, num_frames: Optional[int]) -> Tuple[torch.Tensor, int]:
    """Checked 5-D latents and the number of frames to keep."""
    if z.dim() == 4:
        z = z.unsqueeze(2)
    if z.dim() != 5:
        raise ValueError(f"latents must be [B, C, T, h, w] (or 4-D single frames), got shape {list(z.shape)}")
    _check_channels("latent", z, model.latent_channels)
    decoded = pixel_frames(z.shape[2])
    if num_frames is not None and not decoded - 3 <= int(num_frames) <= decoded:
        raise ValueError(f"num_frames={num_frames} does not fit {z.shape[2]} latent frames, which decode to "
                         f"{decoded} frames (padding adds at most 3): use {max(1, decoded - 3)}..{decoded}")
    return z, decoded if num_frames is None else int(num_frames)


class _Assembled:
    """An ``Emit`` that copies blocks into one ``[B, C, T, H, W]`` tensor on ``device``, allocated at the
    first block (its channels and dtype); frames past ``T`` are dropped (a trimmed decode)."""

    def __init__(self, sizes: Tuple[int, int, int, int], device):
        self.sizes, self.device, self.out = sizes, device, None

    def __call__(self, first: int, start: int, block: torch.Tensor) -> None:
        batch, frames, height, width = self.sizes
        if self.out is None:
            self.out = torch.empty((batch, block.shape[1], frames, height, width), dtype=block.dtype,
                                   device=self.device)
        block = block[:, :, : max(0, frames - start)]
        self.out[first:first + block.shape[0], :, start:start + block.shape[2]].copy_(block)


# ---------------------------------------------------------------- shared checks


def _as_video(model, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        # Official semantics: a 4-D batch is single frames, or (b t) when num_video_frames is set.
        t = model.config.get("num_video_frames") or 1
        if x.shape[0] % t:
            raise ValueError(f"4-D input: batch {x.shape[0]} is not a multiple of num_video_frames={t}")
        return x.reshape(x.shape[0] // t, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)
    if x.dim() != 5:
        raise ValueError(f"pixels must be [B, C, T, H, W] (or 4-D single frames), got shape {list(x.shape)}")
    return x


def _check_channels(what: str, t: torch.Tensor, expected: int) -> None:
    if t.shape[1] != expected:
        raise ValueError(f"{what} must have {expected} channels on dim 1 ([B, C, T, H, W]), got shape {list(t.shape)}")


def _dispatch(model, src: torch.Tensor, kind: str, tiling: TilingConfig, progress: Progress,
              budget: Optional[int], emit: Emit) -> None:
    if tiling.mode == "official":
        _official(model, src, kind, progress, emit)
    elif tiling.mode == "none":
        _tiled(model, src, kind, TilePlan(None, 0, None), progress, emit)
    elif tiling.mode == "manual":
        _tiled(model, src, kind, manual_plan(tiling), progress, emit)
    else:
        _auto(model, src, kind, tiling, progress, budget, emit)


def _on_model(model, tile: torch.Tensor) -> torch.Tensor:
    """One call's input, moved to where and how the model computes (the caller's video stays put)."""
    return tile.to(device=model.device, dtype=model.dtype)


# ---------------------------------------------------------------- manual / none


def manual_plan(tiling: TilingConfig) -> TilePlan:
    """The plan the knobs of ``tiling`` describe."""
    latent_tile = tiling.tile_size // 8 if tiling.tile_size else None
    overlap = round(latent_tile * tiling.tile_overlap) if latent_tile else 0
    chunk = tiling.temporal_chunk // 4 if tiling.temporal_chunk else None
    return TilePlan(latent_tile, overlap, chunk)


def time_windows(length: int, step: Optional[int]) -> List[Tuple[int, int, bool]]:
    """Windows ``(start, end, drop_first)`` over ``length`` items advancing by ``step``; windows
    share their boundary item, whose output is dropped from every window but the first."""
    if step is None or length - 1 <= step:
        return [(0, length, False)]
    rounds = math.ceil((length - 1) / step)
    return [(n * step, min(n * step + step + 1, length), n > 0) for n in range(rounds)]


def tile_spans(size: int, tile: Optional[int], overlap: int) -> List[Tuple[int, int]]:
    """Full-size tiles ``(start, end)`` covering ``size``; the last one is aligned to the end."""
    if tile is None or size <= tile:
        return [(0, size)]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return [(s, s + tile) for s in starts]


def blend_weights(spans: List[Tuple[int, int]], scale: int, dtype: torch.dtype, device) -> List[torch.Tensor]:
    """Per-span 1-D weights (in output units = ``scale`` x span units) that ramp linearly across
    overlaps and sum to exactly 1 at every position."""
    total = torch.zeros(spans[-1][1] * scale, dtype=torch.float64)
    raw = []
    for i, (start, end) in enumerate(spans):
        size = (end - start) * scale
        pos = torch.arange(size, dtype=torch.float64) + 0.5
        w = torch.ones(size, dtype=torch.float64)
        if i > 0:
            lead = (spans[i - 1][1] - start) * scale
            if lead > 0:
                w = w * torch.clamp(pos / lead, max=1.0)
        if i + 1 < len(spans):
            trail = (end - spans[i + 1][0]) * scale
            if trail > 0:
                w = w * torch.clamp((size - pos) / trail, max=1.0)
        raw.append(w)
        total[start * scale:end * scale] += w
    return [(w / total[s * scale:e * scale]).to(device=device, dtype=dtype) for w, (s, e) in zip(raw, spans)]


def _tiled(model, src: torch.Tensor, kind: str, plan: TilePlan, progress: Progress, emit: Emit) -> None:
    """Our tiler: per batch item, per temporal window, per spatial tile; weighted accumulation into
    one window of output on the model's device, emitted when the window is complete."""
    encode = kind == "encode"
    fn: Callable[[torch.Tensor], torch.Tensor] = model.encode_tile if encode else model.decode_tile
    in_scale, out_scale = (8, 1) if encode else (1, 8)
    batch, _, length, height, width = src.shape
    h, w = height // in_scale, width // in_scale
    step = None if plan.chunk_latent is None else plan.chunk_latent * (4 if encode else 1)
    windows = time_windows(length, step)
    ys, xs = tile_spans(h, plan.latent_tile, plan.latent_overlap), tile_spans(w, plan.latent_tile, plan.latent_overlap)
    acc_dtype = torch.promote_types(model.dtype, torch.float32)
    wy = blend_weights(ys, out_scale, acc_dtype, model.device)
    wx = blend_weights(xs, out_scale, acc_dtype, model.device)
    out_frames_of = latent_frames if encode else pixel_frames
    progress.start(batch * len(windows) * len(ys) * len(xs))
    for b in range(batch):
        for t0, t1, drop_first in windows:
            window = None
            for (y0, y1), wy_i in zip(ys, wy):
                for (x0, x1), wx_i in zip(xs, wx):
                    tile = _on_model(model, src[b:b + 1, :, t0:t1, y0 * in_scale:y1 * in_scale,
                                                x0 * in_scale:x1 * in_scale])
                    out = fn(tile)
                    expected = (out_frames_of(t1 - t0), (y1 - y0) * out_scale, (x1 - x0) * out_scale)
                    if tuple(out.shape[2:]) != expected:
                        raise RuntimeError(f"CV-VAE {kind} tile returned {list(out.shape)}, expected [..., "
                                           f"{expected[0]}, {expected[1]}, {expected[2]}] (internal error)")
                    if drop_first:
                        out = out[:, :, 1:]
                    if window is None:
                        window = torch.zeros((1, out.shape[1], out.shape[2], h * out_scale, w * out_scale),
                                             dtype=acc_dtype, device=model.device)
                    region = window[:, :, :, y0 * out_scale:y1 * out_scale, x0 * out_scale:x1 * out_scale]
                    region += out.to(acc_dtype) * (wy_i[:, None] * wx_i[None, :])
                    del out, tile
                    progress.advance(1)
            start = (t0 // 4 if encode else 4 * t0) + (1 if drop_first else 0)
            emit(b, start, window.to(model.dtype))
            del window


# ---------------------------------------------------------------- auto


def _auto(model, src: torch.Tensor, kind: str, tiling: TilingConfig, progress: Progress,
          budget: Optional[int], emit: Emit) -> None:
    plan = auto_plan(model, src.shape, kind, tiling, free_memory_bytes(model.device) if budget is None else budget)
    while True:
        try:
            return _tiled(model, src, kind, plan, progress, emit)  # a retry emits every window again
        except Exception as error:  # noqa: BLE001 - re-raised unless it is an OOM
            if not is_out_of_memory(error):
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
        # Outside the except block: the traceback (and the failed attempt's tensors it holds)
        # is gone, so the retry starts with that memory free.
        release_cached_memory(model.device)
        smaller = shrink_plan(plan)
        if smaller is None:
            raise MemoryError(
                f"CV-VAE {kind} ran out of memory even with {AUTO_MIN_TILE_PX} px tiles and 4-frame chunks "
                f"({message}); free memory, use fp16/bf16, or decode fewer views at once")
        plan = smaller


def auto_plan(model, shape, kind: str, tiling: TilingConfig, budget: int) -> TilePlan:
    """Largest tile (up to ``tiling.tile_size`` or the whole frame) whose estimated peak fits ``budget``."""
    encode = kind == "encode"
    in_scale = 8 if encode else 1
    h, w = shape[3] // in_scale, shape[4] // in_scale
    chunk_frames = tiling.temporal_chunk or model.config.get("en_de_n_frames_a_time") or AUTO_DEFAULT_CHUNK
    chunk_frames = max(4, int(chunk_frames) // 4 * 4)
    video_frames = shape[2] if encode else pixel_frames(shape[2])
    frames = min(video_frames, chunk_frames + 1)
    channels = model.encoder_full_res_channels if encode else model.decoder_full_res_channels
    tile = max(h, w) if not tiling.tile_size else min(tiling.tile_size // 8, max(h, w))
    min_tile = AUTO_MIN_TILE_PX // 8
    while tile > min_tile:
        th, tw = min(tile, h), min(tile, w)
        if estimate_tile_bytes(channels, frames, th * 8, tw * 8, model.dtype) <= budget:
            break
        tile = max(min_tile, tile // 2)
    return TilePlan(tile, round(tile * tiling.tile_overlap), chunk_frames // 4)


def memory_estimate(model, shape, kind: str, tiling: TilingConfig) -> Tuple[int, int]:
    """Estimated peak bytes of one tile call: ``(the plan tiling starts with, its smallest retry)``.

    What to ask a memory manager to make room for before encoding or decoding ``shape`` (pixels
    ``[B,3,T,H,W]`` for encode, latents ``[B,z,T',h,w]`` for decode): ``auto`` starts from its
    largest plan (whole frames up to ``tile_size``) and can shrink to 64 px tiles of 4-frame chunks;
    the other modes use one fixed plan.
    """
    encode = kind == "encode"
    in_scale = 8 if encode else 1
    h, w = shape[3] // in_scale, shape[4] // in_scale
    video_frames = shape[2] if encode else pixel_frames(shape[2])
    channels = model.encoder_full_res_channels if encode else model.decoder_full_res_channels

    def tile_bytes(latent_tile: Optional[int], frames: Optional[int]) -> int:
        th, tw = (h, w) if latent_tile is None else (min(latent_tile, h), min(latent_tile, w))
        frames = video_frames if frames is None else min(frames, video_frames)
        return estimate_tile_bytes(channels, frames, th * 8, tw * 8, model.dtype)

    if tiling.mode == "auto":
        plan = auto_plan(model, shape, kind, tiling, budget=1 << 62)
        largest = tile_bytes(plan.latent_tile, 4 * plan.chunk_latent + 1)
        return largest, min(largest, tile_bytes(AUTO_MIN_TILE_PX // 8, 5))
    if tiling.mode == "manual":
        plan = manual_plan(tiling)
        frames = None if plan.chunk_latent is None else 4 * plan.chunk_latent + 1
        need = tile_bytes(plan.latent_tile, frames)
    elif tiling.mode == "official":
        settings = official_settings(model.config)
        frames = None if settings["frames_a_time"] is None else settings["frames_a_time"] + 1
        need = tile_bytes(settings["latent_tile"], frames)
    else:
        need = tile_bytes(None, None)
    return need, need


def shrink_plan(plan: TilePlan) -> Optional[TilePlan]:
    """Next smaller plan after an out-of-memory error: halve the tile, then the chunk; ``None`` at the floor."""
    min_tile = AUTO_MIN_TILE_PX // 8
    if plan.latent_tile is not None and plan.latent_tile > min_tile:
        tile = max(min_tile, plan.latent_tile // 2)
        ratio = plan.latent_overlap / plan.latent_tile
        return replace(plan, latent_tile=tile, latent_overlap=round(tile * ratio))
    if plan.chunk_latent is not None and plan.chunk_latent > 1:
        return replace(plan, chunk_latent=plan.chunk_latent // 2)
    return None


# ---------------------------------------------------------------- official


def official_settings(config: dict) -> dict:
    """Official chunk/tile numbers from a model config, validated so the output shape is right.

    Returns ``frames_a_time`` (pixel frames per encode window or None), ``pixel_tile`` and
    ``latent_tile`` (or None), and the encode/decode strides and overlaps.
    """
    frames_a_time = config.get("en_de_n_frames_a_time")
    if frames_a_time is not None and (frames_a_time <= 0 or frames_a_time % 4):
        raise ValueError(f"en_de_n_frames_a_time must be a positive multiple of 4, got {frames_a_time}")
    pixel_tile = config.get("tile_spatial_size")
    out = dict(frames_a_time=frames_a_time, pixel_tile=None, latent_tile=None)
    if pixel_tile is None:
        return out
    ratio = config.get("tile_overlap_ratio")
    if pixel_tile % 8 or pixel_tile < MIN_TILE_PX or ratio is None or not 0 <= ratio < 1:
        raise ValueError(f"official tiling needs tile_spatial_size a multiple of 8 (>= {MIN_TILE_PX}) and "
                         f"0 <= tile_overlap_ratio < 1, got {pixel_tile} and {ratio}")
    latent_tile = pixel_tile // 8
    enc_pixel_stride = round(pixel_tile * (1 - ratio))
    enc_latent_overlap = round(latent_tile * ratio)
    enc_latent_stride = latent_tile - enc_latent_overlap
    dec_latent_stride = round(latent_tile * (1 - ratio))
    dec_pixel_overlap = round(pixel_tile * ratio)
    dec_pixel_stride = pixel_tile - dec_pixel_overlap
    if enc_pixel_stride != 8 * enc_latent_stride or dec_pixel_stride != 8 * dec_latent_stride or enc_latent_stride < 1:
        raise ValueError(
            f"official tiling with tile_spatial_size={pixel_tile} and tile_overlap_ratio={ratio} has a pixel stride "
            f"({enc_pixel_stride} px encode, {dec_pixel_stride} px decode) that is not 8x its latent stride "
            f"({enc_latent_stride}, {dec_latent_stride}); upstream silently returns a smaller frame there. Pick a "
            f"tile size and ratio whose strides are multiples of 8 (e.g. 576 with 0.2222), or use mode 'manual'")
    out.update(pixel_tile=pixel_tile, latent_tile=latent_tile, ratio=ratio,
               enc_pixel_stride=enc_pixel_stride, enc_latent_overlap=enc_latent_overlap,
               enc_latent_stride=enc_latent_stride, dec_latent_stride=dec_latent_stride,
               dec_pixel_overlap=dec_pixel_overlap, dec_pixel_stride=dec_pixel_stride)
    return out


def _official_starts(size: int, tile: int, stride: int) -> List[int]:
    starts = []
    for start in range(0, size, stride):
        starts.append(start)
        if start + tile >= size:
            break
    return starts


def _official_blend(a: torch.Tensor, b: torch.Tensor, overlap: int, dim: int) -> None:
    """In place, as upstream: b's first ``overlap`` rows/cols ramp from a's last ones into b's."""
    if overlap <= 0:
        return
    shape = [1] * b.dim()
    shape[dim] = overlap
    weight = (torch.arange(overlap, dtype=torch.float32, device=b.device) / overlap).view(shape)
    head = b.narrow(dim, 0, overlap)
    head.copy_((1 - weight) * a.narrow(dim, a.shape[dim] - overlap, overlap) + weight * head)


def _official_spatial(fn, src: torch.Tensor, tile: int, stride: int, out_overlap: int, out_stride: int,
                      progress: Progress) -> torch.Tensor:
    """Upstream ``spatial_tiled_encode``/``spatial_tiled_decode``: tiles in ``src`` units, blended
    sequentially in place (top neighbour, then left), cropped to ``out_stride`` but the last."""
    rows = []
    for y in _official_starts(src.shape[3], tile, stride):
        cols = []
        for x in _official_starts(src.shape[4], tile, stride):
            cols.append(fn(src[:, :, :, y:y + tile, x:x + tile]))
            progress.advance(1)
        rows.append(cols)
    for i, cols in enumerate(rows):
        for j, t in enumerate(cols):
            if i > 0:
                _official_blend(rows[i - 1][j], t, out_overlap, dim=3)
            if j > 0:
                _official_blend(cols[j - 1], t, out_overlap, dim=4)
    lines = []
    for i, cols in enumerate(rows):
        cropped = []
        for j, t in enumerate(cols):
            if i < len(rows) - 1:
                t = t[:, :, :, :out_stride]
            if j < len(cols) - 1:
                t = t[:, :, :, :, :out_stride]
            cropped.append(t)
        lines.append(torch.cat(cropped, dim=4))
    return torch.cat(lines, dim=3)


def _official(model, src: torch.Tensor, kind: str, progress: Progress, emit: Emit) -> None:
    encode = kind == "encode"
    s = official_settings(model.config)
    tile_fn = model.encode_tile if encode else model.decode_tile

    def fn(block):
        return tile_fn(_on_model(model, block))
    step = None
    if s["frames_a_time"] is not None:
        step = s["frames_a_time"] if encode else s["frames_a_time"] // 4
    # Upstream always runs at least one round, with windows [n*step, (n+1)*step+1).
    windows = time_windows(src.shape[2], step)
    if s["pixel_tile"] is None:
        progress.start(len(windows))
        spatial = fn
    else:
        if encode:
            tile, stride, out_overlap, out_stride = (s["pixel_tile"], s["enc_pixel_stride"], s["enc_latent_overlap"],
                                                     s["enc_latent_stride"])
        else:
            tile, stride, out_overlap, out_stride = (s["latent_tile"], s["dec_latent_stride"], s["dec_pixel_overlap"],
                                                     s["dec_pixel_stride"])
        n_tiles = len(_official_starts(src.shape[3], tile, stride)) * len(_official_starts(src.shape[4], tile, stride))
        progress.start(len(windows) * n_tiles)

        def spatial(block):
            return _official_spatial(fn, block, tile, stride, out_overlap, out_stride, progress)

    start = 0
    for t0, t1, drop_first in windows:
        out = spatial(src[:, :, t0:t1])
        if s["pixel_tile"] is None:
            progress.advance(1)
        piece = out[:, :, 1:] if drop_first else out
        emit(0, start, piece)
        start += piece.shape[2]
        del out, piece
