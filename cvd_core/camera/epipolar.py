"""Epipolar attention bias of CVD's cross-view synchronization modules (CVSMs).

A CVSM lets every token of a frame attend to the tokens of the *partner* view's frame with the same
time index. CVD does not mask hard: it adds a soft, non-positive bias to the attention logits that
is 0 near the query pixel's epipolar line in the partner frame and falls off linearly beyond a band.

Official formula (CollaborativeVideoDiffusion/CVD ``EpiEncoding.get_attn_map``), per query row r:

    l      = F_r · p_q                              (line in the partner frame, F-image pixels)
    d      = |l · p_k| / (‖l_ab‖ + 1e-6)            (key pixel's distance to that line)
    d_max  = max over all (query, key) pairs of the frame
    band   = pixel_band / (S // 2) · d_max
    bias   = -max(0, d - band) · decay_alpha / (band + 1e-6)

i.e. ``-max(0, (S/2)·d/d_max - pixel_band)·decay_alpha/pixel_band``: the band is a fixed *fraction*
of the frame's largest distance, and the bias lies in ``[-((S//2)/pixel_band - 1)·decay_alpha, 0]``
(``[-125, 0]`` at S = 256). Pixel centres of token (i, j) of an ``s``-wide map are
``(S/s)·j + (S/s - 1)/2`` (x) and ``(S/s)·i + (S/s - 1)/2`` (y).

Frames whose F is zero (the first frame: every trajectory starts at the same pose) have no
epipolar geometry; the official model replaces their lines by pseudo lines through the query pixel
itself, horizontal (``(0, -1, y_q)``) or, with ``epi_rand_slope_ff``, at a random angle.

This module depends on nothing else in ``cvd_core.camera`` (it takes F as given).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ["epipolar_attention_bias", "token_pixel_centres"]

# Guards copied in *value* from the official computation, so parity holds to float rounding.
_NORM_EPS = 1e-6
# Floor of the absolute-mode bias: keeps it finite in fp16 (min -65504) even for lines far outside
# the frame; at -1e4 the softmax weight is exactly 0 in every dtype anyway.
_ABSOLUTE_FLOOR = -1.0e4

SlopeLike = Union[None, float, torch.Tensor]


def _image_hw(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``image_size`` as (H, W): an int S means a square S×S F-image."""
    if isinstance(image_size, (int,)) and not isinstance(image_size, bool):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be an int S or a pair (H, W), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got (H, W) = ({h}, {w})")
    return h, w


def _halving_stride(size: int, feat: int) -> Optional[int]:
    """The power-of-two stride ``s`` with ``ceil(size / s) == feat`` (the UNet's round-up halving), or None.

    ``ceil(size / 2^l)`` is strictly decreasing in ``l`` until it reaches 1, so the smallest such
    ``s`` is the only one unless ``feat == 1`` (then every candidate cell covers the whole side,
    and the clipped-cell centre below does not depend on which one is taken).
    """
    s = 1
    while s <= 2 * size:
        if -(-size // s) == feat:
            return s
        s *= 2
    return None


def _axis_centres(size: int, feat: int, device) -> torch.Tensor:
    """Pixel centres of ``feat`` tokens along an image side of ``size`` pixels (float32 [feat])."""
    stride = _halving_stride(size, feat)
    if stride is None or size % stride == 0:
        # The official formula: ``feat`` equal cells of ``size / feat`` (= the stride) pixels, kept
        # literally so that every size the cells tile (every multiple of 64 px) is bit-identical to
        # before. A map that no halving gives (no such stride) keeps it too: equal cells.
        step = size / feat
        return torch.arange(feat, device=device, dtype=torch.float32) * step + (step - 1) / 2
    # The cells do not tile: a side not divisible by the stride (e.g. 5 tokens over 288 px at the
    # 1/64 level). The UNet and the pose encoder (ceil-mode pooling) both keep the stride and add a
    # border cell covering the leftover pixels, so token j is the cell [s·j, min(s·(j+1), size)):
    # its centre is that of its in-image pixels. Full cells get the official s·j + (s-1)/2.
    starts = torch.arange(feat, device=device, dtype=torch.float32) * stride
    ends = torch.clamp(starts + stride, max=float(size))
    return (starts + ends - 1) / 2


def token_pixel_centres(feat_h: int, feat_w: int, image_size: Union[int, Sequence[int]],
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """Homogeneous pixel centres ``[feat_h*feat_w, 3]`` (x, y, 1) of the tokens of a feature map.

    Token index is ``y*feat_w + x`` (row-major, as ``rearrange(... 'c h w -> (h w) c')``). When the
    feature map tiles the F-image, each token covers an ``(H/feat_h) × (W/feat_w)`` cell and its
    centre follows the official ``(S/feat)·idx + (S/feat - 1)/2`` per axis (pixel centres at
    integer coordinates). When a side does not tile (a latent side not divisible by 8, see
    docs/frame_sizes.md), the tokens are the UNet's stride-``2^l`` cells with a clipped border cell
    (see ``_axis_centres``).
    """
    h, w = _image_hw(image_size)
    xs = _axis_centres(w, feat_w, device)
    ys = _axis_centres(h, feat_h, device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    ones = torch.ones_like(grid_x)
    return torch.stack([grid_x, grid_y, ones], dim=-1).reshape(-1, 3)


def _pseudo_lines(coords: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """Lines ``[B, N, 3]`` through every query pixel itself, for frames without epipolar geometry.

    ``slope`` [B]: NaN means the official horizontal line ``(0, -1, y_q)``; a finite angle θ gives
    the official ``epi_rand_slope_ff`` line with normal ``(cos θ, sin θ)``:
    ``(cos θ, sin θ, -(cos θ·x_q + sin θ·y_q))`` (θ is the angle of the *normal*, so the line
    itself runs at θ + π/2; θ = π/2 is the horizontal line up to sign).
    """
    batch = slope.shape[0]
    n = coords.shape[0]
    x_q = coords[:, 0].expand(batch, n)
    y_q = coords[:, 1].expand(batch, n)
    horizontal = torch.stack([torch.zeros_like(y_q), -torch.ones_like(y_q), y_q], dim=-1)
    cos_t = torch.cos(slope.nan_to_num(0.0))[:, None].expand(batch, n)
    sin_t = torch.sin(slope.nan_to_num(0.0))[:, None].expand(batch, n)
    sloped = torch.stack([cos_t, sin_t, -(cos_t * x_q + sin_t * y_q)], dim=-1)
    return torch.where(torch.isnan(slope)[:, None, None], horizontal, sloped)


def _slope_per_row(first_frame_slope: SlopeLike, batch: int, device: torch.device) -> torch.Tensor:
    """The pseudo-line angle of every row as float32 [B], NaN meaning horizontal."""
    if first_frame_slope is None:
        return torch.full((batch,), float("nan"), device=device)
    slope = torch.as_tensor(first_frame_slope, dtype=torch.float32, device=device)
    if slope.dim() == 0:
        slope = slope.expand(batch)
    if slope.shape != (batch,):
        raise ValueError(f"first_frame_slope must be None, a float or a tensor [B={batch}] of angles "
                         f"in radians, got shape {tuple(slope.shape)}")
    return slope


def epipolar_attention_bias(F: torch.Tensor, feat_h: int, feat_w: int,
                            image_size: Union[int, Sequence[int]],
                            pixel_band: float = 3.0, decay_alpha: float = 3.0,
                            first_frame_slope: SlopeLike = None, mode: str = "relative",
                            pseudo_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Additive CVSM attention bias ``[B, feat_h*feat_w, feat_h*feat_w]`` (float32, on F's device).

    Args:
        F: ``[B, 3, 3]`` (or ``[3, 3]``) fundamental matrices, ``x_partnerᵀ F x_query = 0`` in
            pixels of the F-image: ``F x_q`` is the query pixel's epipolar line in the partner frame.
        feat_h, feat_w: the CVSM feature-map size. Rows are query tokens ``y*feat_w + x``, columns
            the partner frame's key tokens in the same order.
        image_size: the F-image size, an int S (``epi_position_encoding_F_mat_size``) or (H, W).
        pixel_band, decay_alpha: the official band and slope (3 and 3).
        first_frame_slope: pseudo-line angle for rows without geometry: None = horizontal line
            through the query pixel (official ``epi_rand_slope_ff: false``); a float θ or a tensor
            [B] of angles (radians) = the normal angle of the official random-slope line, so passing
            the angle ``torch.rand(1)·π`` the official code drew reproduces its bias.
        mode: ``"relative"`` (official): band = ``pixel_band/(S//2)·d_max``. For non-square images
            S = max(H, W), which equals the official value whenever H == W.
            ``"absolute"``: band = ``pixel_band`` pixels of the F-image and slope
            ``decay_alpha/pixel_band`` per pixel beyond it, independent of d_max (so it does not
            depend on the frame's extent, and works for any aspect); floored at -1e4 (fp16-safe).
        pseudo_rows: optional bool [B] choosing the rows that get pseudo lines. Default: rows whose
            F is exactly zero (identical poses). The official model picks them by position instead
            (frame 0 of every 16-frame video); the CVD backbone passes that choice here.

    No NaN/inf is produced for any finite F (zero F, lines at infinity, a rig with d_max = 0).
    """
    if mode not in ("relative", "absolute"):
        raise ValueError(f"mode must be 'relative' or 'absolute', got {mode!r}")
    if pixel_band <= 0 or decay_alpha < 0:
        raise ValueError(f"pixel_band must be > 0 and decay_alpha >= 0, got {pixel_band}, {decay_alpha}")
    if feat_h < 1 or feat_w < 1:
        raise ValueError(f"feat_h and feat_w must be >= 1, got {feat_h}x{feat_w}")
    if F.dim() == 2:
        F = F[None]
    if F.dim() != 3 or F.shape[-2:] != (3, 3):
        raise ValueError(f"F must be [B, 3, 3], got shape {tuple(F.shape)}")
    F = F.float()
    if not bool(torch.isfinite(F).all()):
        raise ValueError("F must be finite (NaN/inf in a fundamental matrix: check the camera rig)")
    batch = F.shape[0]
    h, w = _image_hw(image_size)

    coords = token_pixel_centres(feat_h, feat_w, (h, w), device=F.device)  # [N, 3]
    # Line of each query pixel [B, N, 3]. The point-line distances below cancel catastrophically
    # for nearly-degenerate rigs (float32 noise up to ~3e-4 on the bias); this contraction order
    # is the one that reproduces the parity fixture's float32 rounding (see the tests).
    lines = torch.einsum("bij,nj->bni", F, coords)

    if pseudo_rows is None:
        pseudo_rows = (F == 0).flatten(1).all(dim=1)
    pseudo_rows = torch.as_tensor(pseudo_rows, dtype=torch.bool, device=F.device).reshape(-1)
    if pseudo_rows.shape[0] != batch:
        raise ValueError(f"pseudo_rows must have B={batch} entries, got {pseudo_rows.shape[0]}")
    slope = _slope_per_row(first_frame_slope, batch, F.device)
    lines = torch.where(pseudo_rows[:, None, None], _pseudo_lines(coords, slope), lines)

    line_norm = lines[..., :2].square().sum(-1).sqrt()[..., None]  # [B, N, 1]
    dist = torch.matmul(lines, coords.t()).abs() / (line_norm + _NORM_EPS)  # [B, Nq, Nk]

    if mode == "relative":
        half = max(h, w) // 2
        d_max = dist.reshape(batch, -1).max(dim=-1)[0][:, None, None]
        band = pixel_band / half * d_max
        decay = decay_alpha / (band + _NORM_EPS)
        return -(dist - band).clip(min=0) * decay
    bias = -(dist - pixel_band).clip(min=0) * (decay_alpha / pixel_band)
    return bias.clamp(min=_ABSOLUTE_FLOOR)
