"""The collaborative N-view sampler (CVD paper §3.3, Alg. 1; official
``pipeline_animation_epi_advanced.py::__call__``).

At every denoising step the views are grouped into pairs (``pairing.pair_schedule``), every pair
runs through the denoiser with its CVSMs attending across the pair, and each view's noise
prediction is the average over the pairs it took part in. With ``recurrence`` R > 1 each step
(except the last) is repeated R times, re-noising in between; with ``partitions`` Q > 1 (random
pairing only) each iteration averages over Q independent matchings (the official
``accumulate_step``).

Denoiser protocol
-----------------
``denoiser.predict_noise(latents, timestep, text, plucker, F_mats, partner)`` as in
``fixtures/cvd_backbone/README.md``: ``latents [B,C,F,h,w]``, ``timestep`` a 0-d int64 tensor,
``text [B,77,D]``, ``plucker [B,6,F,H,W]``, ``F_mats [B,F,3,3]`` (row b: F mapping a pixel of row
b's view to its epipolar line in row ``partner[b]``'s view), ``partner [B]`` int64; returns the raw
(pre-CFG) noise prediction ``[B,C,F,h,w]``.

If ``predict_noise`` also takes a ``row_kinds`` keyword, the sampler passes the guidance branch of
every row (0 = conditional, including regional entity rows; 1 = unconditional), which a feature
cache restricted to one branch needs; denoisers without it are called as above.

For a single view (N = 1) there is no partner: the sampler passes ``F_mats=None`` and
``partner=None``, which tells the denoiser to skip the CVSMs (plain CameraCtrl video). If the
denoiser has ``dtype``/``device`` attributes, inputs are moved there (the F matrices in float32
whatever the model dtype: camera geometry is never computed in half precision); the sampler itself
keeps the latents in float32.

Regional prompts (scene director, masked noise-prediction blending)
-------------------------------------------------------------------
``regional`` is a list of ``(text_e, mask_e)``: a prompt embedding for entity e and its soft mask
``[V, 1, F, h, w]`` in [0, 1] at latent size. Besides the normal conditional rows, every iteration
runs conditional rows with ``text_e`` for the same pairs (same partners and F matrices, so the
cross-view attention still pairs the views), averaged over the pairs like the others, giving
``eps_e``. The conditional prediction is then blended before CFG:
``eps_cond <- eps_cond * (1 - min(S, 1)) + sum_e (m_e / max(S, 1)) * eps_e`` with ``S = sum_e m_e``
(masks from a projected layout are disjoint after occlusion; where they overlap, the weights are
normalised). Outside every mask the prediction is exactly the plain one. Cost: (1 + E) times the
conditional rows per iteration (E = entities whose mask is not empty; empty ones are skipped).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..guards import NonFiniteError, first_non_finite, precision_hint, require_finite
from ..progress import Progress, ensure_progress
from . import noise as noise_streams
from .batching import CallPlan, auto_max_batch, rows_per_iteration
from .executor import Denoiser, Iteration, LocalExecutor, RowExecutor, RowInputs
from .pairing import MAX_VIEWS, Pair, pair_schedule, pairs_per_view
from .scheduler_base import DiscreteScheduler

FundamentalSource = Union[Callable[[int, int], torch.Tensor], Mapping[Tuple[int, int], torch.Tensor]]
PreviewCallback = Callable[[int, int, torch.Tensor], None]


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


def _validate(latents: torch.Tensor, plucker: torch.Tensor, F_of, strategy: str, recurrence: int,
              partitions: int) -> None:
    if latents.dim() != 5:
        raise ValueError(f"latents must be [views, C, frames, h, w], got shape {list(latents.shape)}")
    n_views, frames = latents.shape[0], latents.shape[2]
    if not 1 <= n_views <= MAX_VIEWS:
        raise ValueError(f"views must be from 1 to {MAX_VIEWS}, got {n_views}")
    if plucker.dim() != 5 or plucker.shape[1] != 6 or plucker.shape[2] != frames:
        raise ValueError(f"plucker must be [views, 6, {frames}, H, W], got shape {list(plucker.shape)}")
    if n_views > 1 and F_of is None:
        raise ValueError("F_of (fundamental matrices per view pair) is required for 2 or more views")
    if recurrence < 1:
        raise ValueError(f"recurrence must be >= 1, got {recurrence}")
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    require_finite(latents, "the start latents", axes=("view", "channel", "frame"),
                   hint="give finite latents (a NaN start can only give NaN videos)")
    if partitions > 1 and strategy != "random":
        raise ValueError(f"partitions > 1 needs strategy 'random' (the '{strategy}' pairing is the same "
                         f"for every partition), got partitions={partitions}")


def _iteration_pairs(n_views: int, strategy: str, step: int, seed: int, recurrence_index: int,
                     partitions: int) -> List[Pair]:
    pairs: List[Pair] = []
    for q in range(partitions):
        pairs += pair_schedule(n_views, strategy, step, seed, substep=recurrence_index * partitions + q)
    return pairs


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


class _Runner:
    """Holds the per-run inputs and turns one iteration's calls into the per-view noise prediction.

    Branches: 0 = unconditional, 1 = conditional, 2 + e = conditional with entity e's prompt.
    Where the calls run is the executor's business (``executor.py``).
    """

    def __init__(self, executor: RowExecutor, latents, cond, uncond, plucker, fundamentals, guidance_scale,
                 use_cfg, max_batch, progress, regional=()):
        self.executor = executor
        self.rows = RowInputs(_common_tokens([uncond, cond] + [text for text, _ in regional]), plucker,
                              fundamentals)
        self.masks = [mask for _, mask in regional]
        self.guidance_scale = guidance_scale
        self.branches = ((0, 1) if use_cfg else (1,)) + tuple(2 + e for e in range(len(regional)))
        self.max_batch = max_batch
        self.progress = progress
        self.n_views = latents.shape[0]

    def calls_for(self, pairs: Sequence[Pair]) -> List[List[CallPlan]]:
        return self.executor.plan(pairs, self.branches, self.max_batch)

    def predict_eps(self, latents: torch.Tensor, iteration: Iteration, pairs: Sequence[Pair]) -> torch.Tensor:
        """Per-view noise prediction: mean over the view's pairs, then CFG."""
        sums = {b: torch.zeros_like(latents) for b in self.branches}
        for plan, out in self.executor.run(self.calls_for(pairs), latents, iteration, self.progress):
            for n, r in enumerate(plan.rows):
                sums[r.branch][r.view] += out[n]
        counts = pairs_per_view(self.n_views, pairs) if pairs else [1]
        div = torch.tensor(counts, dtype=torch.float32, device=latents.device).view(-1, 1, 1, 1, 1)
        cond = sums[1] / div
        if self.masks:
            cond = _blend_regional(cond, [sums[2 + e] / div for e in range(len(self.masks))], self.masks)
        if 0 not in self.branches:
            return cond
        uncond = sums[0] / div
        return uncond + self.guidance_scale * (cond - uncond)


def _stop_if_not_finite(values: torch.Tensor, what: str, step: int, n_steps: int, timestep: int,
                       model_dtype: torch.dtype) -> None:
    """Stop sampling at the first step whose values are NaN or infinite (they would only spread)."""
    index = first_non_finite(values)
    if index is not None:
        raise NonFiniteError(f"the {what} at step {step + 1} of {n_steps} (timestep {int(timestep)}) is not finite "
                             f"(NaN or infinity, first at view {index[0]}), so sampling stopped at that step; "
                             f"{precision_hint(model_dtype)}")


@torch.no_grad()
def sample_multiview(denoiser, latents_init: torch.Tensor, cond: torch.Tensor,
                     uncond: Optional[torch.Tensor], plucker: torch.Tensor,
                     F_of: Optional[FundamentalSource], scheduler: DiscreteScheduler,
                     guidance_scale: float = 8.5, strategy: str = "random", recurrence: int = 1,
                     max_batch: Optional[int] = None, seed: int = 0,
                     progress: Optional[Progress] = None,
                     preview_callback: Optional[PreviewCallback] = None,
                     partitions: int = 1, regional: Optional[Regional] = None,
                     executor: Optional[RowExecutor] = None) -> torch.Tensor:
    """Denoise N views together; returns the final latents ``[V, C, F, h, w]`` (float32).

    - ``latents_init``: x_T (e.g. ``noise.initial_noise``, or ``scheduler.add_noise`` for a
      partial denoise). ``cond``/``uncond``: text embeddings ``[V or 1, 77, D]``; ``uncond`` may
      be None when ``guidance_scale == 1`` (no unconditional rows are run then).
    - ``plucker [V, 6, F, H, W]``; ``F_of(i, j) -> [F, 3, 3]`` or a dict keyed by ``(i, j)``
      (either orientation); not needed for one view.
    - ``strategy``: ``random``/``all_pairs``/``fixed`` (see ``pairing``); ``recurrence`` R >= 1
      iterations per step (1 at the last step); ``partitions`` Q random matchings per iteration.
    - ``max_batch``: rows per denoiser call (>= 2, or 1 for a single view); None = from free
      memory. The result does not depend on it.
    - ``seed``: pairing and all noise drawn during sampling (recurrence, MCM re-noise).
    - ``progress``: ``start(total)`` with total = number of denoiser calls, ``advance(1)`` after
      each call; an exception raised there (cancel) propagates.
    - ``preview_callback(step_index, n_steps, x0_view0 [C, F, h, w])`` after every step.
    - ``regional``: optional per-entity prompts, a list of ``(text [V or 1, L, D], mask
      [V or 1, 1, F, h, w])`` with mask values in [0, 1] at latent size; each entity's prompt
      steers the conditional prediction inside its mask (masked noise-prediction blending, see the
      module doc). Costs one more set of conditional rows per entity; None or [] = off.
    - ``executor``: where the denoiser calls run (``executor.RowExecutor``; ``cvd_core.parallel``
      has several devices and ``torch.distributed`` ranks). None = every call on ``denoiser``, in
      order (``LocalExecutor``); ``denoiser`` is then the only model used, otherwise it is ignored.

    Raises ``NonFiniteError`` (a ``ValueError``) at the first step whose noise prediction or updated
    latents hold NaN or infinity, naming the step (half precision overflow is the usual cause).
    """
    _validate(latents_init, plucker, F_of, strategy, recurrence, partitions)
    if not math.isfinite(float(guidance_scale)):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
    n_views, _, frames = latents_init.shape[:3]
    use_cfg = float(guidance_scale) != 1.0
    if getattr(scheduler, "guidance_distilled", False) and use_cfg:
        warnings.warn(f"this scheduler's model has distilled guidance (MCM): guidance_scale should be 1, "
                      f"got {guidance_scale}; it doubles the work and over-saturates", stacklevel=2)
    cond = _per_view("cond", cond, n_views, 3)
    uncond = _per_view("uncond", uncond, n_views, 3)
    if use_cfg and uncond is None:
        raise ValueError(f"guidance_scale {guidance_scale} needs uncond embeddings (or use guidance_scale 1)")
    plucker = _per_view("plucker", plucker, n_views, 5)
    regional = _validate_regional(regional or [], latents_init, cond)
    progress = ensure_progress(progress)
    latents = latents_init.to(torch.float32).clone()
    view_shape = tuple(latents.shape[1:])

    n_steps = len(scheduler.timesteps)
    schedule = [[_iteration_pairs(n_views, strategy, i, seed, r, partitions)
                 for r in range(recurrence if i != n_steps - 1 else 1)] for i in range(n_steps)]
    n_branches = (2 if use_cfg else 1) + len(regional)
    if executor is None:
        executor = LocalExecutor(denoiser, latents.device)
    if max_batch is None:
        widest = max(rows_per_iteration(len(p), n_branches) for step in schedule for p in step)
        max_batch = min(auto_max_batch(view_shape, widest, n_views, d.device, d.dtype)
                        for d in executor.denoisers or [Denoiser(denoiser, latents.device)])
    runner = _Runner(executor, latents, cond, uncond, plucker, _Fundamentals(F_of, frames),
                     float(guidance_scale), use_cfg, int(max_batch), progress, regional)
    # the precision named by the non-finite guard's hint: the lowest of the local models
    model_dtype = min((d.dtype for d in executor.denoisers), key=lambda dt: torch.finfo(dt).bits,
                      default=torch.float32)
    failed = True
    executor.begin(runner.rows, sorted({pair for step in schedule for p in step for pair in p}), latents)
    try:
        progress.start(sum(len(part) for step in schedule for p in step for part in runner.calls_for(p)))
        for i, t in enumerate(scheduler.timesteps):
            iterations = schedule[i]
            for r, pairs in enumerate(iterations):
                eps = runner.predict_eps(latents, Iteration(i, n_steps, r, int(t)), pairs)
                _stop_if_not_finite(eps, "noise prediction", i, n_steps, t, model_dtype)
                step_noise = None
                if scheduler.step_needs_noise(i):
                    step_noise = noise_streams.multiview_noise(seed, noise_streams.STEP, i, r, n_views,
                                                               view_shape, latents.device)
                out = scheduler.step(eps, i, latents, step_noise)
                latents = out.prev_sample
                _stop_if_not_finite(latents, "latents after the update", i, n_steps, t, model_dtype)
                if r != len(iterations) - 1:
                    renoise = noise_streams.multiview_noise(seed, noise_streams.RECURRENCE, i, r, n_views,
                                                            view_shape, latents.device)
                    latents = scheduler.renoise(latents, i, renoise)
            if preview_callback is not None:
                preview_callback(i, n_steps, out.pred_original_sample[0])
        failed = False
    finally:
        executor.end(failed)
    return latents
