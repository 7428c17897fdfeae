"""Small building blocks shared by both CV-VAE variants.

The official code pads in fp32 and round-trips bf16 through fp16 for some pads; padding and
nearest upsampling are exact in every dtype, so we do them in the tensor's own dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Fused attention kernels have grid limits on the batch axis (the official code splits at
# 32768 for the same reason), and the CPU math path materialises batch x L x L scores.
_MAX_ATTN_BATCH = 32768
_MAX_SCORE_ELEMENTS = 1 << 27


def replicate_front(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Repeat the first frame ``frames`` times in front (causal time padding of [B,C,T,H,W])."""
    if frames == 0:
        return x
    first = x[:, :, :1].expand(-1, -1, frames, -1, -1)
    return torch.cat([first, x], dim=2)


def replicate_both_ends(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Repeat the first and last frame ``frames`` times (non-causal time padding)."""
    if frames == 0:
        return x
    first = x[:, :, :1].expand(-1, -1, frames, -1, -1)
    last = x[:, :, -1:].expand(-1, -1, frames, -1, -1)
    return torch.cat([first, x, last], dim=2)


def depth_to_time(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``b (n c) t h w -> b c (t n) h w``: the time upsampler's channel groups become frames."""
    if factor == 1:
        return x
    b, nc, t, h, w = x.shape
    c = nc // factor
    x = x.reshape(b, factor, c, t, h, w).permute(0, 2, 3, 1, 4, 5)
    return x.reshape(b, c, t * factor, h, w)


class WeightSource:
    """Convs whose forward reads its weights through ``weights_for(x)``.

    By default that is ``(self.weight, self.bias)``; a memory manager that keeps weights on another
    device (ComfyUI's low-VRAM streaming) overrides it in a subclass to hand over copies on ``x``'s
    device instead, without touching the convolution itself.
    """

    def weights_for(self, x: torch.Tensor):
        return self.weight, self.bias


class Conv2dWithExtraDim(WeightSource, nn.Conv2d):
    """A 2-D convolution applied to every frame of a [B,C,T,H,W] tensor (the "half 3D" conv).

    On the CPU it runs as a 1 x k x k 3-D convolution of the 5-D tensor itself (the same sums), which
    saves the two full-size copies of the per-frame form (frames to the batch axis and back).
    Elsewhere it runs per frame (cuDNN's 2-D kernels are its best ones).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() != 5:
            return self._conv_forward(x, *self.weights_for(x))
        if x.device.type == "cpu" and self.padding_mode == "zeros" and self.groups == 1 and x.dtype in _MKLDNN_DTYPES:
            weight, bias = self.weights_for(x)
            return conv3d(x, weight.unsqueeze(2), bias, (1, *self.stride), (0, *self.padding))
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        out = self._conv_forward(frames, *self.weights_for(frames))
        # Contiguous [B,C,T,H,W]: 3-D convs on permuted strides fall back to a much slower kernel.
        return out.reshape(b, t, out.shape[1], out.shape[2], out.shape[3]).permute(0, 2, 1, 3, 4).contiguous()


def silu_(x: torch.Tensor) -> torch.Tensor:
    """SiLU in place (on a fresh normalisation output: one memory pass and no new tensor)."""
    return F.silu(x, inplace=True)


def _phase_kernels(weight: torch.Tensor):
    """The four 3x2x2 kernels of a 3x3x3 kernel applied after nearest x2 in H and W (see below)."""
    rows = ((weight[..., 0:1, :], weight[..., 1:2, :] + weight[..., 2:3, :]),   # output row 2i: source i-1, i
            (weight[..., 0:1, :] + weight[..., 1:2, :], weight[..., 2:3, :]))   # output row 2i+1: source i, i+1
    kernels = {}
    for a, (top, bottom) in enumerate(rows):
        by_rows = torch.cat([top, bottom], dim=3)
        cols = ((by_rows[..., 0:1], by_rows[..., 1:2] + by_rows[..., 2:3]),
                (by_rows[..., 0:1] + by_rows[..., 1:2], by_rows[..., 2:3]))
        for b, (left, right) in enumerate(cols):
            kernels[(a, b)] = torch.cat([left, right], dim=4).contiguous()
    return kernels


def nearest2x_conv3d(x: torch.Tensor, weight: torch.Tensor, bias, time_pad, spatial_mode: str = "zeros",
                     depth_to_time_factor: int = 1) -> torch.Tensor:
    """``conv3d(pad(nearest x2 in H, W of x))`` for a 3x3x3 kernel, without building the upsampled input.

    Nearest x2 repeats each pixel in a 2x2 block, so a 3x3 spatial window of the upsampled image sees
    only 2x2 distinct source pixels: output row 2i reads source rows (i-1, i) with kernel rows
    (w0, w1 + w2), row 2i+1 reads (i, i+1) with (w0 + w1, w2); columns likewise. Each of the four
    output phases is therefore a 3x2x2 convolution of the source, padded once: 48 instead of 108
    multiply-adds per source pixel and channel pair (2.25x fewer), and neither the 4x upsampled tensor
    nor its padded copy is made. Zero or replicate padding of the upsampled image is the same padding
    of the source. ``time_pad`` = (front, back) frames of replicate padding.

    With ``depth_to_time_factor`` n the output channels (n·C) are written straight into n frames each
    (``b (n c) t h w -> b c (t n) h w``, the time upsampler's layout). Returns a contiguous
    [B, C, n·T', 2H, 2W] (T' = T + front + back - 2).
    """
    b, _, t, h, w = x.shape
    front, back = time_pad
    if spatial_mode == "replicate":
        xp = F.pad(x, (1, 1, 1, 1, front, back), mode="replicate")
    else:
        xp = F.pad(x, (1, 1, 1, 1, 0, 0))
        if front or back:
            xp = torch.cat([xp[:, :, :1].expand(-1, -1, front, -1, -1), xp,
                            xp[:, :, -1:].expand(-1, -1, back, -1, -1)], dim=2)
    kernels = _phase_kernels(weight)  # a few weight-sized adds per call: nothing next to the convolutions
    n = depth_to_time_factor
    channels = weight.shape[0] // n
    frames = t + front + back - 2
    out = torch.empty((b, channels, frames, n, h, 2, w, 2), dtype=x.dtype, device=x.device)
    for (a, c), kernel in kernels.items():
        phase = conv3d(xp, kernel, bias, (1, 1, 1), (0, 0, 0))  # [B, n·C, T', H+1, W+1]
        phase = phase[:, :, :, a:a + h, c:c + w].reshape(b, n, channels, frames, h, w)
        out[:, :, :, :, :, a, :, c] = phase.permute(0, 2, 3, 1, 4, 5)
    return out.view(b, channels, frames * n, 2 * h, 2 * w)



def single_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax(q k^T / sqrt(C)) v for [N, L, C] inputs, one head, in bounded-size batches."""
    n, length, _ = q.shape
    per_item = max(1, length * length)
    step = max(1, min(_MAX_ATTN_BATCH, _MAX_SCORE_ELEMENTS // per_item))
    if step >= n:
        return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
    outs = []
    for start in range(0, n, step):
        sl = slice(start, start + step)
        outs.append(F.scaled_dot_product_attention(q[sl].unsqueeze(1), k[sl].unsqueeze(1), v[sl].unsqueeze(1)).squeeze(1))
    return torch.cat(outs, dim=0)


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """[B,C,T,H,W] -> [B*T,C,H,W] (per-frame processing)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[B*T,C,H,W] -> [B,C,T,H,W]."""
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).permute(0, 2, 1, 3, 4)


def _mkldnn_dtypes() -> set:
    """Dtypes oneDNN convolves natively on this CPU (bf16 needs AVX512-BF16/AMX or AVX-NE-CONVERT)."""
    if not torch.backends.mkldnn.is_available():
        return set()
    dtypes = {torch.float32}
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            dtypes.add(torch.bfloat16)
    except (AttributeError, RuntimeError):
        pass
    return dtypes


_MKLDNN_DTYPES = _mkldnn_dtypes()


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding) -> torch.Tensor:
    """``F.conv3d`` that avoids PyTorch's slow reference CPU kernel.

    PyTorch picks its naive ``slow_conv3d`` for batch-1 CPU inputs whose N*C*T*H is small
    (tiny models, few frames): up to 6x slower than oneDNN. For inference on CPU we call the
    oneDNN kernel directly, in the dtypes this CPU supports natively (a bf16 or fp16 call on a CPU
    without them would fail there); anything else (GPU, autograd, other dtypes) takes the normal path.
    """
    if (x.device.type == "cpu" and x.dtype in _MKLDNN_DTYPES
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        try:
            return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight, bias, list(padding), list(stride),
                                                     [1, 1, 1], 1)
        except (RuntimeError, AttributeError, NotImplementedError):
            _MKLDNN_DTYPES.discard(x.dtype)  # this build refuses it: the public path for this dtype from now on
    return F.conv3d(x, weight, bias, stride, padding)


class Conv3d(WeightSource, nn.Conv3d):
    """``nn.Conv3d`` (same parameters) whose forward uses :func:`conv3d`; zero or replicate padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        padding = self.padding
        if self.padding_mode != "zeros":
            p = self.padding
            x = F.pad(x, (p[2], p[2], p[1], p[1], p[0], p[0]), mode=self.padding_mode)
            padding = (0, 0, 0)
        weight, bias = self.weights_for(x)
        return conv3d(x, weight, bias, self.stride, padding)


class CausalConv3d(Conv3d):
    """3-D conv whose output frame t only sees input frames <= t.

    The first frame is repeated ``2*padding`` times in front; H and W are padded by ``padding``
    with zeros (``spatial_padding = "zeros"``, CV-VAE z=4) or by repeating the edge
    (``"replicate"``, the SD3 variant): the two official models differ only there.
    """

    spatial_padding = "zeros"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride=1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0)
        self.custom_padding = int(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        p = self.custom_padding
        if p and self.spatial_padding == "replicate":
            return super().forward(F.pad(x, (p, p, p, p, 2 * p, 0), mode="replicate"))
        if p:
            # One copy (the repeated first frames in front); the zero border is the conv's own padding.
            return conv3d(replicate_front(x, 2 * p), *self.weights_for(x), self.stride, (0, p, p))
        return super().forward(x)


def param_count(module: nn.Module) -> int:
    """Number of parameters (for reports and the benchmark)."""
    return sum(math.prod(p.shape) for p in module.parameters())
