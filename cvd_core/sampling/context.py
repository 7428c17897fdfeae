"""Temporal context windows: which frames each denoiser call sees, and how the calls are fused.

A video longer than the motion modules' position encoding (32 frames; CVD is trained on 16) is
denoised in *windows* of ``length`` frames. A window is the same frame subset in every view; the
collaborative denoiser (``denoiser.py``) runs its pairs, CFG branches and regional rows on each
window and fuses the windows' predictions frame by frame with the fuse weights:
``eps[f] = sum_w a_w(f) * eps_w(f) / sum_w a_w(f)``. Consistency across windows comes only from
the overlap: frames that two windows share are pulled towards one prediction at every step.

Schedules (a pure function of ``(frames, step)``; written for this pack, matching the behaviour
of AnimateDiff-Evolved's and ComfyUI's context options without their code):
- ``standard_static``: windows start at 0, L-O, 2(L-O), ...; the last window is shifted back to
  end at the last frame, so every window has L frames. The same windows at every step.
- ``standard_uniform``: the hop is the same, but the windows' offset moves every step (by the
  ordered halving sequence 0, 1/2, 1/4, 3/4, ... of the length), so window seams never stay on
  one frame; with ``stride`` S > 1 it adds windows of every 2nd, 4th, ... 2^(S-1)-th frame for
  long-range motion. Windows never cross the end of the video (they are shifted inside).
- ``looped_uniform``: the same moving windows on a circle of frames (frame F-1 is followed by 0).
  ``closed_loop`` adds the windows that join the end to the start, so that every two cyclically
  adjacent frames share a window and the video loops; without it the circle is cut at the
  step's offset.
- ``batched``: consecutive windows without overlap (the last one may be shorter); cheapest, with
  visible seams.

Fuse weights over a window's positions ``i = 0..n-1``:
- ``flat``: 1 everywhere (a plain mean).
- ``pyramid``: ``min(i + 1, n - i)``: a window trusts its centre, where its frames have the most
  temporal context.
- ``overlap_linear``: 1 except a linear ramp ``(k + 1) / (O + 1)`` over the O frames at each
  end that another window can share (not at the video's first or last frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

SCHEDULES = ("standard_static", "standard_uniform", "looped_uniform", "batched")
FUSE = ("pyramid", "flat", "overlap_linear")

Window = Tuple[int, ...]


@dataclass(frozen=True)
class ContextOptions:
    """The context-window knobs (``CVD_ContextOptions``); ``freenoise`` is read by ``noise.py``."""

    length: int = 16
    overlap: int = 4
    schedule: str = "standard_static"
    fuse: str = "pyramid"
    stride: int = 1
    closed_loop: bool = False
    freenoise: bool = False

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"context_length must be >= 1, got {self.length}")
        if not 0 <= self.overlap < self.length:
            raise ValueError(f"context_overlap must be from 0 to context_length - 1 ({self.length - 1}), "
                             f"got {self.overlap}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.fuse not in FUSE:
            raise ValueError(f"fuse must be one of {', '.join(FUSE)}, got {self.fuse!r}")
        if self.stride < 1:
            raise ValueError(f"context_stride must be >= 1, got {self.stride}")

    def active(self, frames: int) -> bool:
        """Whether windows change anything: a video that fits one window is denoised whole."""
        return frames > self.length

    def windows(self, frames: int, step: int = 0) -> List[Window]:
        """The windows of ``step`` (frame indices in window order), covering every frame."""
        if not self.active(frames):
            return [tuple(range(frames))]
        if self.schedule == "standard_static":
            return _static(frames, self.length, self.overlap)
        if self.schedule == "batched":
            return [tuple(range(s, min(s + self.length, frames))) for s in range(0, frames, self.length)]
        looped = self.schedule == "looped_uniform"
        return _uniform(frames, self.length, self.overlap, self.stride, step, looped, self.closed_loop)

    def weights(self, window: Window, frames: int) -> torch.Tensor:
        """Fuse weights ``[len(window)]`` (float32, all > 0) of one window's positions."""
        return fuse_weights(self.fuse, len(window), self.overlap, window, frames,
                            self.schedule == "looped_uniform")

    def all_windows(self, frames: int, steps: int) -> List[Window]:
        """Every distinct window of a run of ``steps`` steps (for memory sizing and remote workers)."""
        seen = {}
        for step in range(max(1, steps)):
            for w in self.windows(frames, step):
                seen.setdefault(w, None)
        return list(seen)


def _static(frames: int, length: int, overlap: int) -> List[Window]:
    hop = length - overlap
    starts = list(range(0, frames - length, hop)) + [frames - length]
    return [tuple(range(s, s + length)) for s in starts]


def ordered_halving(step: int) -> float:
    """0, 1/2, 1/4, 3/4, 1/8, 5/8, ...: the bit-reversed fraction of ``step`` (offsets spread evenly)."""
    value, scale, n = 0.0, 0.5, int(step)
    while n:
        value += scale * (n & 1)
        n >>= 1
        scale /= 2
    return value


def _uniform(frames: int, length: int, overlap: int, stride: int, step: int, looped: bool,
             closed: bool) -> List[Window]:
    offset = int(round(frames * ordered_halving(step))) % frames
    out: List[Window] = []
    for level in range(stride):
        spacing = 1 << level
        span = (length - 1) * spacing + 1  # frames from a window's first to its last
        if span > frames:
            break
        hop = length * spacing - overlap  # windows of every level overlap by O of their frames
        # starts over one turn [offset, offset + F): the last window reaches offset + F (covered);
        # closing the loop keeps starting windows until one joins the end to the start
        end = offset + frames if (looped and closed) else offset + frames - overlap * spacing
        for start in range(offset, max(end, offset + 1), hop):
            if looped and not closed:  # the circle cut at the offset: a window ends before the cut
                start = min(start, offset + frames - span)
            for window in _placed(start, length, spacing, frames, looped, level == 0):
                if window not in out:
                    out.append(window)
    if looped and closed:  # without overlap the tiling leaves seams: a window across each closes it
        for f in range(frames):
            if not _joins(out, f, (f + 1) % frames):
                out.append(tuple((f + 1 - length // 2 + k) % frames for k in range(length)))
    return out


def _placed(start: int, length: int, spacing: int, frames: int, looped: bool, covering: bool) -> List[Window]:
    """A window's frames from ``start``: modulo F on a circle; on a line, a window that would run
    past the end is split into the window ending at the last frame and (level 0, which must cover
    every frame) the window starting at frame 0."""
    if looped:
        return [tuple((start + k * spacing) % frames for k in range(length))]
    start %= frames
    span = (length - 1) * spacing + 1
    if start + span <= frames:
        return [tuple(start + k * spacing for k in range(length))]
    ends = [tuple(frames - span + k * spacing for k in range(length))]
    return ends + ([tuple(range(length))] if covering else [])


def _joins(windows: Sequence[Window], a: int, b: int) -> bool:
    """Whether some window holds frame ``a`` directly followed by frame ``b``."""
    return any(w[k] == a and w[k + 1] == b for w in windows for k in range(len(w) - 1))


def fuse_weights(fuse: str, n: int, overlap: int, window: Sequence[int], frames: int, looped: bool) -> torch.Tensor:
    position = torch.arange(n, dtype=torch.float32)
    if fuse == "flat":
        return torch.ones(n)
    if fuse == "pyramid":
        return torch.minimum(position + 1, n - position)
    if fuse != "overlap_linear":
        raise ValueError(f"fuse must be one of {', '.join(FUSE)}, got {fuse!r}")
    weights = torch.ones(n)
    ramp = (torch.arange(overlap, dtype=torch.float32) + 1) / (overlap + 1)
    k = min(overlap, n)
    if looped or window[0] != 0:  # a window that starts the video has nothing to blend in from the left
        weights[:k] = ramp[:k]
    if looped or window[-1] != frames - 1:
        weights[n - k:] = torch.minimum(weights[n - k:], ramp[:k].flip(0))
    return weights


def frame_weights(options: ContextOptions, windows: Sequence[Window], frames: int) -> torch.Tensor:
    """``[F]`` sum of the fuse weights over the windows (the normaliser of the fusion)."""
    total = torch.zeros(frames)
    for w in windows:
        total.index_add_(0, torch.tensor(w, dtype=torch.long), options.weights(w, frames))
    return total
