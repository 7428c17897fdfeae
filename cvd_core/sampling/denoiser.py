"""The collaborative denoiser of one step: ``(x_t, timestep) -> per-view noise prediction``.

This is the one place that knows how CVD turns N views into a noise prediction (paper §3.3,
Alg. 1; official ``pipeline_animation_epi_advanced.py``): the step's view pairs
(``PairingPlan``), the CFG branches, the regional entity rows, and where the rows run (a
``RowExecutor``: one device, several, or ``torch.distributed`` ranks). Every loop calls it: the
pack's own loop (``collaborative.multiview_loop``: DDIM, MCM, recurrence) and ComfyUI's samplers
(the GUIDER in ``nodes/_core_sampling.py``). Nothing else pairs views or applies CFG.

Denoiser protocol
-----------------
``denoiser.predict_noise(latents, timestep, text, plucker, F_mats, partner)`` as in
``fixtures/cvd_backbone/README.md``: ``latents [B,C,F,h,w]``, ``timestep`` a 0-d int64 tensor,
``text [B,77,D]``, ``plucker [B,6,F,H,W]``, ``F_mats [B,F,3,3]`` (row b: F mapping a pixel of row
b's view to its epipolar line in row ``partner[b]``'s view), ``partner [B]`` int64; returns the raw
(pre-CFG) noise prediction ``[B,C,F,h,w]``. If it also takes ``row_kinds``, it gets the guidance
branch of every row (0 = conditional, 1 = unconditional; a feature cache needs it). One view has no
partner: ``F_mats=None, partner=None`` (plain CameraCtrl video).

Regional prompts (masked noise-prediction blending)
---------------------------------------------------
``regional`` is a list of ``(text_e, mask_e [V, 1, F, h, w])``. Every iteration also runs conditional
rows with ``text_e`` for the same pairs, averaged like the others, giving ``eps_e``; then
``eps_cond <- eps_cond * (1 - min(S, 1)) + sum_e (m_e / max(S, 1)) * eps_e`` with ``S = sum_e m_e``.
Outside every mask the prediction is exactly the plain one. Entities with empty masks are dropped.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..guards import NonFiniteError, first_non_finite, precision_hint
from ..progress import NullProgress, Progress
from .batching import CallPlan, auto_max_batch, rows_per_iteration
from .context import ContextOptions, Window
from .executor import Denoiser, Iteration, LocalExecutor, RowExecutor, RowInputs
from .pairing import STRATEGIES, Pair, pair_schedule, pairs_per_view
from .window_inputs import WindowCameras, WindowFundamentals

FundamentalSource = Union[Callable[[int, int], torch.Tensor], Mapping[Tuple[int, int], torch.Tensor]]


class _Fundamentals:
    """F(i→j) lookup with caching; a dict may hold either orientation (Fᵀ gives the other)."""

    def __init__(self, source: Optional[FundamentalSource], frames: int):
        self._source = source
        self._frames = frames
        self._cache: Dict[Tuple[int, int], torch.Tensor] = {}

    def _fetch(self, i: int, j: int) -> torch.Tensor:
        if callable(self._source):
            return torch.as_tensor(self._source(i, j))
        if (i, j) in self._source:
            return torch.as_tensor(self._source[(i, j)])
        if (j, i) in self._source:
            return torch.as_tensor(self._source[(j, i)]).transpose(-1, -2)
        raise KeyError(f"no fundamental matrices for views ({i}, {j}): the F_of dict needs the key "
                       f"({i}, {j}) or ({j}, {i})")

    def __call__(self, i: int, j: int) -> torch.Tensor:
        if (i, j) not in self._cache:
            f = self._fetch(i, j).to(torch.float32)
            if tuple(f.shape) != (self._frames, 3, 3):
                raise ValueError(f"F_of({i}, {j}) must be [{self._frames}, 3, 3] (one F per frame), "
                                 f"got {list(f.shape)}")
            self._cache[(i, j)] = f
        return self._cache[(i, j)]


def _per_view(name: str, t: Optional[torch.Tensor], n_views: int, ndim: int) -> Optional[torch.Tensor]:
    """Broadcast a one-for-all tensor ([1, ...]) to the views and check the leading size."""
    if t is None:
        return None
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (views first), got shape {list(t.shape)}")
    if t.shape[0] == 1 and n_views > 1:
        t = t.expand(n_views, *t.shape[1:])
    if t.shape[0] != n_views:
        raise ValueError(f"{name} has {t.shape[0]} entries but there are {n_views} views "
                         f"(give one per view, or one for all)")
    return t


Regional = Sequence[Tuple[torch.Tensor, torch.Tensor]]


def _common_tokens(texts: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
    """Repeat embeddings of different token counts (77·k) to their least common multiple.

    Repeating all tokens k times leaves cross-attention unchanged (each softmax weight is split
    into k equal parts over identical values), so rows of different prompt lengths can share a call.
    Embeddings that already share one length are returned as they are.
    """
    lengths = {int(t.shape[1]) for t in texts if t is not None}
    if len(lengths) <= 1:
        return list(texts)
    target = 1
    for n in lengths:
        target = target * n // math.gcd(target, n)
    return [None if t is None else t.repeat(1, target // t.shape[1], 1) for t in texts]


def _validate_regional(regional: Regional, latents: torch.Tensor, cond: torch.Tensor
                       ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Check ``(text [V or 1, L, D], mask [V or 1, 1, F, h, w])`` pairs; drop entities with empty masks."""
    n_views, _, frames, h, w = latents.shape
    kept = []
    for e, item in enumerate(regional):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"regional[{e}] must be a (text, mask) pair, got {type(item).__name__}")
        text = _per_view(f"regional[{e}] text", torch.as_tensor(item[0]), n_views, 3)
        if text.shape[-1] != cond.shape[-1]:
            raise ValueError(f"regional[{e}] text has width {text.shape[-1]} but cond has width {cond.shape[-1]} "
                             f"(encode every prompt with the same text encoder)")
        mask = _per_view(f"regional[{e}] mask", torch.as_tensor(item[1]), n_views, 5)
        if tuple(mask.shape[1:]) != (1, frames, h, w):
            raise ValueError(f"regional[{e}] mask must be [{n_views}, 1, {frames}, {h}, {w}] (views, 1, frames, "
                             f"latent height, latent width), got {list(mask.shape)}")
        mask = mask.to(latents.device, torch.float32)
        if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"regional[{e}] mask values must lie in [0, 1], got "
                             f"[{float(mask.min())}, {float(mask.max())}]")
        if float(mask.max()) > 0:  # an entity seen in no view and no frame cannot change anything
            kept.append((text, mask))
    return kept


def _blend_regional(cond: torch.Tensor, regional_eps: Sequence[torch.Tensor],
                    masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Masked blend of the conditional prediction with the entities' predictions (see module doc)."""
    total = torch.stack(list(masks)).sum(dim=0)
    out = cond * (1.0 - total.clamp(max=1.0))
    norm = total.clamp(min=1.0)  # overlapping masks: share the region instead of over-weighting it
    for eps_e, mask in zip(regional_eps, masks):
        out = out + (mask / norm) * eps_e
    return out


class PairingPlan:
    """Which view pairs one denoiser call averages over, for any (step, substep).

    ``substep`` numbers the calls within one step: the recurrence iteration in the pack's loop, or
    the model call within a step of a core sampler (heun calls twice). With ``partitions`` Q > 1
    (random pairing only) a call averages over Q independent matchings (official ``accumulate_step``).
    The plan depends only on ``(n_views, strategy, seed, partitions)``, so memory sizing, remote
    workers and the loops all read the same pairs.
    """

    def __init__(self, n_views: int, strategy: str = "random", seed: int = 0, partitions: int = 1):
        if strategy not in STRATEGIES:
            raise ValueError(f"pairing strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        if partitions > 1 and strategy != "random":
            raise ValueError(f"partitions > 1 needs strategy 'random' (the '{strategy}' pairing is the same "
                             f"for every partition), got partitions={partitions}")
        self.n_views, self.strategy, self.seed, self.partitions = int(n_views), strategy, int(seed), int(partitions)

    def pairs(self, step: int, substep: int = 0) -> List[Pair]:
        out: List[Pair] = []
        for q in range(self.partitions):
            out += pair_schedule(self.n_views, self.strategy, step, self.seed,
                                 substep=substep * self.partitions + q)
        return out

    def pairs_per_call(self) -> int:
        """Pairs of every call (the same at every step for each strategy)."""
        return len(self.pairs(0, 0))

    def possible_pairs(self) -> List[Pair]:
        """Every pair a call may use (remote workers get their F matrices up front)."""
        if self.n_views == 1:
            return []
        if self.strategy == "fixed":
            return sorted(set(self.pairs(0, 0)))
        return [(i, j) for i in range(self.n_views) for j in range(i + 1, self.n_views)]


@dataclass
class Prediction:
    """One call's result: ``eps`` after CFG and regional blending; ``cond``/``uncond`` when asked for."""

    eps: torch.Tensor
    cond: Optional[torch.Tensor] = None
    uncond: Optional[torch.Tensor] = None


def stop_if_not_finite(values: torch.Tensor, what: str, iteration: Iteration, model_dtype: torch.dtype) -> None:
    """Stop sampling at the first step whose values are NaN or infinite (they would only spread)."""
    index = first_non_finite(values)
    if index is not None:
        sub = f", recurrence iteration {iteration.substep + 1}" if iteration.substep else ""
        raise NonFiniteError(f"the {what} at step {iteration.step + 1} of {iteration.n_steps} (timestep "
                             f"{iteration.timestep}{sub}) is not finite (NaN or infinity, first at view {index[0]}), "
                             f"so sampling stopped at that step; {precision_hint(model_dtype)}")


class CollaborativeDenoiser:
    """The per-run inputs (texts, cameras, regional masks, executor) and the one-call prediction.

    Branches: 0 = unconditional, 1 = conditional, 2 + e = conditional with entity e's prompt.
    ``cond``/``uncond`` are ``[V or 1, L, D]`` (``uncond`` may be None when ``guidance_scale`` is 1),
    ``plucker [V or 1, 6, F, H, W]``, ``F_of(i, j) -> [F, 3, 3]`` or a dict (not needed for one view).
    ``max_batch`` rows per call (None = from free memory at ``session``); results never depend on it.
    ``progress`` gets ``advance(1)`` per denoiser call and ``check()`` before each (cancel).

    Context windows (``context``, ``context.py``): a clip longer than ``context.length`` frames is
    denoised window by window at every call, each window the same frames of every view with all
    pairs, branches and regional rows; the windows' raw predictions are fused per branch with the
    fuse weights *before* CFG and the regional blend (both are linear in the predictions and the
    weights are normalised per frame, so fusing after them gives the same up to rounding). Each
    window's Plücker maps come from ``cameras`` (``WindowCameras``: re-relativised poses); ``plucker``
    may then be None. A clip that fits one window takes the path without windows (bit-identical).
    """

    def __init__(self, denoiser, cond: torch.Tensor, uncond: Optional[torch.Tensor], plucker: Optional[torch.Tensor],
                 F_of: Optional[FundamentalSource], plan: PairingPlan, guidance_scale: float = 8.5,
                 max_batch: Optional[int] = None, regional=None, executor: Optional[RowExecutor] = None,
                 progress: Optional[Progress] = None, device: Optional[torch.device] = None,
                 context: Optional[ContextOptions] = None, cameras: Optional[WindowCameras] = None):
        n_views = plan.n_views
        if plucker is None and cameras is None:
            raise ValueError("give plucker maps [V, 6, F, H, W] or cameras (WindowCameras) to build them from")
        if n_views > 1 and F_of is None:
            raise ValueError("F_of (fundamental matrices per view pair) is required for 2 or more views")
        if not math.isfinite(float(guidance_scale)):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
        self.plan = plan
        self.guidance_scale = float(guidance_scale)
        self.use_cfg = self.guidance_scale != 1.0
        cond = _per_view("cond", cond, n_views, 3)
        uncond = _per_view("uncond", uncond, n_views, 3)
        if self.use_cfg and uncond is None:
            raise ValueError(f"guidance_scale {guidance_scale} needs uncond embeddings (or use guidance_scale 1)")
        self.plucker = _per_view("plucker", plucker, n_views, 5)
        self.context, self.cameras = context, cameras
        self.windowed = False
        self.F_of = F_of
        self._regional_input, self._cond = regional or [], cond
        self._uncond = uncond
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.executor = executor if executor is not None else LocalExecutor(denoiser, self.device)
        self.denoiser = denoiser
        self.max_batch = max_batch
        self.progress = progress or NullProgress()
        self.masks: List[torch.Tensor] = []
        self.rows: Optional[RowInputs] = None

    @property
    def n_views(self) -> int:
        return self.plan.n_views

    @property
    def model_dtype(self) -> torch.dtype:
        """The lowest precision of the local models (named by the non-finite guard's hint)."""
        return min((d.dtype for d in self.executor.denoisers), key=lambda dt: torch.finfo(dt).bits,
                   default=torch.float32)

    def bind(self, latents: torch.Tensor) -> None:
        """Check the inputs against the latents ``[V, C, F, h, w]`` and fix the row layout and max_batch."""
        if latents.dim() != 5 or latents.shape[0] != self.n_views:
            raise ValueError(f"latents must be [{self.n_views} views, C, frames, h, w], got {list(latents.shape)}")
        frames = latents.shape[2]
        self.windowed = self.context is not None and self.context.active(frames)
        if self.windowed and self.cameras is None:
            raise ValueError("context windows need the cameras (WindowCameras): each window's Plücker maps are "
                             "built from the poses re-relativised to the window's first frame")
        if self.cameras is not None and (self.cameras.n_views, self.cameras.n_frames) != (self.n_views, frames):
            raise ValueError(f"cameras have {self.cameras.n_views} views x {self.cameras.n_frames} frames but the "
                             f"latents {self.n_views} x {frames}")
        if self.plucker is None and not self.windowed:
            self.plucker = _per_view("plucker", self.cameras.plucker(range(frames)), self.n_views, 5)
        if self.plucker is not None and (self.plucker.shape[1] != 6 or self.plucker.shape[2] != frames):
            raise ValueError(f"plucker must be [views, 6, {frames}, H, W], got shape {list(self.plucker.shape)}")
        regional = _validate_regional(self._regional_input, latents, self._cond)
        self.masks = [mask for _, mask in regional]
        self.rows = RowInputs(_common_tokens([self._uncond, self._cond] + [text for text, _ in regional]),
                              None if self.windowed else self.plucker, _Fundamentals(self.F_of, frames),
                              cameras=self.cameras if self.windowed else None)
        self.branches = ((0, 1) if self.use_cfg else (1,)) + tuple(2 + e for e in range(len(regional)))
        if self.max_batch is None:
            widest = rows_per_iteration(self.plan.pairs_per_call(), len(self.branches))
            view_shape = (latents.shape[1], self.window_frames(frames)) + tuple(latents.shape[3:])
            self.max_batch = min(auto_max_batch(view_shape, widest, self.n_views, d.device, d.dtype)
                                 for d in self.executor.denoisers or [Denoiser(self.denoiser, latents.device)])
        self.max_batch = int(self.max_batch)

    def window_frames(self, frames: int) -> int:
        """Frames of the longest denoiser row (one window, or the whole clip): what memory is sized by."""
        return min(frames, self.context.length) if self.context is not None else frames

    def windows(self, frames: int, step: int) -> List[Window]:
        return self.context.windows(frames, step) if self.windowed else [tuple(range(frames))]

    @contextlib.contextmanager
    def session(self, latents: torch.Tensor, run_pairs: Optional[Sequence[Pair]] = None) -> Iterator["CollaborativeDenoiser"]:
        """Bind to the latents and open the executor's job for one run (``end`` even after an error)."""
        self.bind(latents)
        pairs = sorted(set(run_pairs)) if run_pairs is not None else self.plan.possible_pairs()
        self.executor.begin(self.rows, pairs, latents)
        failed = True
        try:
            yield self
            failed = False
        finally:
            self.executor.end(failed)

    def calls_for(self, pairs: Sequence[Pair], branches: Optional[Sequence[int]] = None) -> List[List[CallPlan]]:
        return self.executor.plan(pairs, self.branches if branches is None else branches, self.max_batch)

    def call_count(self, pairs: Sequence[Pair], frames: Optional[int] = None, step: int = 0) -> int:
        """Denoiser calls of one iteration over ``pairs`` (all windows of ``step`` when windowed)."""
        if not self.windowed or frames is None:
            return sum(len(part) for part in self.calls_for(pairs))
        return sum(sum(len(part) for part in self.calls_for(pairs, self._window_branches(w)))
                   for w in self.windows(frames, step))

    def predict(self, latents: torch.Tensor, iteration: Iteration, with_parts: bool = False) -> Prediction:
        """Per-view noise prediction at ``iteration`` (its step/substep pick the pairs): mean over each
        view's pairs (and windows), regional blend, then CFG. ``with_parts`` also returns the cond and
        uncond halves (ComfyUI's post-CFG functions read them)."""
        pairs = self.plan.pairs(iteration.step, iteration.substep)
        if self.windowed:
            sums, div = self._window_sums(latents, iteration, pairs)
        else:
            sums = {b: torch.zeros_like(latents) for b in self.branches}
            for plan, out in self.executor.run(self.calls_for(pairs), latents, iteration, self.progress):
                for n, r in enumerate(plan.rows):
                    sums[r.branch][r.view] += out[n]
            counts = pairs_per_view(self.n_views, pairs) if pairs else [1]
            one = torch.tensor(counts, dtype=torch.float32, device=latents.device).view(-1, 1, 1, 1, 1)
            div = {b: one for b in self.branches}
        cond = sums[1] / div[1]
        if self.masks:
            cond = _blend_regional(cond, [_fused(sums[2 + e], div[2 + e]) for e in range(len(self.masks))],
                                   self.masks)
        uncond = sums[0] / div[0] if 0 in self.branches else None
        eps = cond if uncond is None else uncond + self.guidance_scale * (cond - uncond)
        stop_if_not_finite(eps, "noise prediction", iteration, self.model_dtype)
        return Prediction(eps, cond if with_parts else None, uncond if with_parts else None)

    # -- context windows -------------------------------------------------------------------------

    def _window_branches(self, window: Window) -> Tuple[int, ...]:
        """The window's branches: an entity whose mask is empty in every view of the window adds no rows."""
        index = torch.as_tensor(list(window), dtype=torch.long)
        return tuple(b for b in self.branches
                     if b < 2 or float(self.masks[b - 2].index_select(2, index.to(self.masks[b - 2].device)).max()) > 0)

    def window_rows(self, window: Window) -> RowInputs:
        """The inputs every call of ``window`` reads: texts, the window's Plücker maps and F matrices."""
        return RowInputs(self.rows.texts, self.cameras.plucker(window),
                         WindowFundamentals(self.rows.fundamentals, window), window)

    def _window_sums(self, latents: torch.Tensor, iteration: Iteration, pairs: Sequence[Pair]):
        """Per-branch sums of every window's rows, each weighted by its fuse weights, and their normaliser
        ``div[b] [V, 1, F, 1, 1]`` (pair count per view x summed fuse weights per frame)."""
        frames = latents.shape[2]
        counts = torch.tensor(pairs_per_view(self.n_views, pairs) if pairs else [1], dtype=torch.float32)
        sums = {b: torch.zeros_like(latents) for b in self.branches}
        weight_sum = {b: torch.zeros(frames) for b in self.branches}
        for window in self.windows(frames, iteration.step):
            index = torch.as_tensor(list(window), dtype=torch.long)
            weights = self.context.weights(window, frames)
            a = weights.to(latents.device).view(1, -1, 1, 1)
            branches = self._window_branches(window)
            with self.executor.window(self.window_rows(window)):
                part = latents.index_select(2, index.to(latents.device))
                for plan, out in self.executor.run(self.calls_for(pairs, branches), part,
                                                   iteration.in_window(window), self.progress):
                    for n, r in enumerate(plan.rows):
                        sums[r.branch][r.view].index_add_(1, index.to(latents.device), out[n] * a)
            for b in branches:
                weight_sum[b].index_add_(0, index, weights)
        div = {b: (counts.view(-1, 1) * weight_sum[b].view(1, -1)).to(latents.device)
               .view(self.n_views, 1, frames, 1, 1) for b in self.branches}
        return sums, div


def _fused(total: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``total / weight``, 0 where no window ran the branch (an entity's mask is 0 there: its value is unused)."""
    return torch.where(weight > 0, total / weight.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(total))
