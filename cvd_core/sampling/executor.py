"""Who runs the denoiser calls of one sampling iteration: the row executor.

``sample_multiview`` decides *what* a step computes (pairs, CFG branches, regional rows, the
averaging and the scheduler update); a ``RowExecutor`` decides *where* the step's rows run. It
plans the iteration's rows into calls, one list of calls per participant (a device, a replica,
a remote rank), runs them and hands the raw outputs back **in a fixed order**: participant by
participant, call by call. Because ``plan_calls_split`` gives each participant a contiguous run
of the iteration's pairs, that order visits every view's rows in pair order, so the sampler adds
the same terms in the same order whatever the executor (only the rounding of differently sized
batches can differ).

``LocalExecutor`` is the default: every call on one denoiser, in order, exactly the loop the
sampler always had (bit-identical results). ``cvd_core.parallel`` adds executors over several
devices (threads) and over ``torch.distributed`` ranks.

Progress and cancellation stay on the calling thread: an executor calls ``progress.check()``
before it starts work and ``progress.advance(1)`` once per finished call; an exception raised
there (the user cancelled) propagates out of ``run``.
"""

from __future__ import annotations

import inspect
import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..progress import Progress
from .batching import CallPlan, plan_calls
from .pairing import Pair
from .window_inputs import pseudo_frames

ROW_COND, ROW_UNCOND = 0, 1  # row kinds as ComfyUI numbers them (cond_or_uncond)


def _accepts_keyword(function, name: str) -> bool:
    """Whether ``function`` can be called with the keyword ``name`` (False if it cannot be inspected)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.kind == p.VAR_KEYWORD
               for p in parameters)


class Denoiser:
    """A denoiser (``predict_noise`` object or plain callable) with its device, dtype and keywords."""

    def __init__(self, denoiser, default_device: torch.device):
        self.module = denoiser
        self.predict = getattr(denoiser, "predict_noise", denoiser)
        self.pass_row_kinds = _accepts_keyword(self.predict, "row_kinds")
        self.pass_pseudo_frames = _accepts_keyword(self.predict, "pseudo_frames")
        self.device = torch.device(getattr(denoiser, "device", default_device))
        dtype = getattr(denoiser, "dtype", None)
        self.dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32

    def __repr__(self) -> str:
        return f"Denoiser({type(self.module).__name__} on {self.device}, {self.dtype})"


FundamentalLookup = Callable[[int, int], torch.Tensor]


class RowInputs:
    """The per-run inputs every call reads: text per branch, Plücker maps, F matrices.

    ``texts[b]`` is ``[V, L, D]`` for branch b (0 = uncond, 1 = cond, 2 + e = entity e; an unused
    branch may be None); ``plucker [V, 6, F, H, W]``; ``fundamentals(i, j) -> [F, 3, 3]``.
    ``window``: the clip frames of a context window these inputs are cut to (``window_inputs``),
    None for the whole clip. In a window the calls pass ``pseudo_frames`` (the frames that get
    first-frame pseudo lines) to denoisers that take it.
    """

    def __init__(self, texts: Sequence[Optional[torch.Tensor]], plucker: torch.Tensor,
                 fundamentals: FundamentalLookup, window: Optional[Sequence[int]] = None, cameras=None):
        self.cameras = cameras  # WindowCameras of a windowed run (remote ranks build the windows' maps from them)
        self.texts = tuple(texts)
        self.plucker = plucker
        self.fundamentals = fundamentals
        self.window = None if window is None else tuple(int(f) for f in window)

    def call(self, denoiser: Denoiser, plan: CallPlan, latents: torch.Tensor, t: int) -> torch.Tensor:
        """One denoiser call: the raw output ``[rows, C, F, h, w]`` on the denoiser's device and dtype."""
        dev, dt = denoiser.device, denoiser.dtype
        views = [r.view for r in plan.rows]
        x = latents[views].to(dev, dt)
        text = torch.stack([self.texts[r.branch][r.view] for r in plan.rows]).to(dev, dt)
        pl = self.plucker[views].to(dev, dt)
        if plan.partner is None:
            f_mats, partner = None, None
        else:
            # F stays float32 whatever the model dtype: its entries span ~1e-7..1 (pixel units), so
            # fp16 flushes them to subnormals/zero and moves the epipolar bias by up to ~4 (bf16: ~0.8).
            f_mats = torch.stack([self.fundamentals(r.view, plan.rows[p].view)
                                  for r, p in zip(plan.rows, plan.partner)]).to(dev, torch.float32)
            partner = torch.tensor(plan.partner, dtype=torch.long, device=dev)
        timestep = torch.tensor(t, dtype=torch.long, device=dev)
        extra = {"row_kinds": [ROW_UNCOND if r.branch == 0 else ROW_COND for r in plan.rows]} \
            if denoiser.pass_row_kinds else {}
        if self.window is not None and f_mats is not None and denoiser.pass_pseudo_frames:
            extra["pseudo_frames"] = pseudo_frames(self.window, f_mats).to(dev)
        out = denoiser.predict(x, timestep, text, pl, f_mats, partner, **extra)
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(f"denoiser returned shape {list(out.shape)} for input {list(x.shape)}")
        return out


@dataclass(frozen=True)
class Iteration:
    """Where an iteration sits in the run (for error messages and remote ranks)."""

    step: int  # 0-based step index
    n_steps: int
    substep: int  # recurrence iteration within the step
    timestep: int
    window: Optional[Tuple[int, ...]] = None  # the clip frames of a context window (None: all)

    def in_window(self, window: Sequence[int]) -> "Iteration":
        return replace(self, window=tuple(int(f) for f in window))

    def describe(self) -> str:
        sub = f", recurrence iteration {self.substep + 1}" if self.substep else ""
        win = f", window of frames {self.window[0]}..{self.window[-1]}" if self.window else ""
        return f"step {self.step + 1}/{self.n_steps} (timestep {self.timestep}{sub}{win})"


Outputs = Iterator[Tuple[CallPlan, torch.Tensor]]


class RowExecutor:
    """Base class: plan an iteration's rows over ``parts`` participants and run the calls.

    ``run`` yields ``(plan, output)`` with outputs as float32 on the latents' device, in the order
    of ``plan`` (participant-major). ``begin``/``end`` bracket one sampling run (a remote executor
    sends the run's inputs in ``begin``); ``end(failed)`` must release everything even after an error.
    """

    parts = 1

    def plan(self, pairs: Sequence[Pair], branches: Sequence[int], max_batch: int) -> List[List[CallPlan]]:
        raise NotImplementedError

    def begin(self, rows: RowInputs, run_pairs: Sequence[Pair], latents: torch.Tensor) -> None:
        self.rows = rows

    @contextlib.contextmanager
    def window(self, rows: RowInputs):
        """The calls of ``run`` inside this block read a context window's inputs (``rows``); the latents
        given to ``run`` are then the window's frames."""
        whole, self.rows = self.rows, rows
        try:
            yield self
        finally:
            self.rows = whole

    def run(self, plans: List[List[CallPlan]], latents: torch.Tensor, iteration: Iteration,
            progress: Progress) -> Outputs:
        raise NotImplementedError

    def end(self, failed: bool) -> None:
        pass

    @property
    def denoisers(self) -> List[Denoiser]:
        """The local denoisers (for the memory estimate of ``max_batch = None``)."""
        return []


class LocalExecutor(RowExecutor):
    """Every call on one denoiser, one after the other: the sampler's original loop."""

    def __init__(self, denoiser, default_device: torch.device):
        self.denoiser = denoiser if isinstance(denoiser, Denoiser) else Denoiser(denoiser, default_device)

    @property
    def denoisers(self) -> List[Denoiser]:
        return [self.denoiser]

    def plan(self, pairs, branches, max_batch):
        return [plan_calls(pairs, branches, max_batch)]

    def run(self, plans, latents, iteration, progress):
        for plan in plans[0]:
            progress.check()
            out = self.rows.call(self.denoiser, plan, latents, iteration.timestep)
            yield plan, out.to(latents.device, torch.float32)
            progress.advance(1)  # may raise: the user cancelled


def describe_plans(plans: List[List[CallPlan]]) -> Dict[str, List[int]]:
    """Rows per participant and calls per participant (for logs and tests)."""
    return {"rows": [sum(len(c.rows) for c in part) for part in plans], "calls": [len(part) for part in plans]}
