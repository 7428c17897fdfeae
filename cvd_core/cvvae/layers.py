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
    """A 2-D convolution applied to every frame of a [B,C,T,H,W] tensor (the "half 3D" conv)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() != 5:
            return self._conv_forward(x, *self.weights_for(x))
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        out = self._conv_forward(frames, *self.weights_for(frames))
        # Contiguous [B,C,T,H,W]: 3-D convs on permuted strides fall back to a much slower kernel.
        return out.reshape(b, t, out.shape[1], out.shape[2], out.shape[3]).permute(0, 2, 1, 3, 4).contiguous()


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


_MKLDNN_OK = True


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding) -> torch.Tensor:
    """``F.conv3d`` that avoids PyTorch's slow reference CPU kernel.

    PyTorch picks its naive ``slow_conv3d`` for batch-1 CPU inputs whose N*C*T*H is small
    (tiny models, few frames): up to 6x slower than oneDNN. For inference on CPU we call the
    oneDNN kernel directly; anything else (GPU, autograd, fp16) takes the normal path.
    """
    global _MKLDNN_OK
    if (_MKLDNN_OK and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and torch.backends.mkldnn.is_available()):
        try:
            return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight, bias, list(padding), list(stride),
                                                     [1, 1, 1], 1)
        except (RuntimeError, AttributeError, NotImplementedError):
            _MKLDNN_OK = False  # this build lacks the op: use the public path from now on
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
            x = F.pad(x, (p, p, p, p, 2 * p, 0), mode="replicate")
        elif p:
            x = replicate_front(F.pad(x, (p, p, p, p, 0, 0)), 2 * p)
        return super().forward(x)


def param_count(module: nn.Module) -> int:
    """Number of parameters (for reports and the benchmark)."""
    return sum(math.prod(p.shape) for p in module.parameters())
