"""Which batch rows and which sampling steps the feature cache touches.

Two questions are answered here, outside the blending code, so that every adapter decides them
the same way:

- *rows*: classifier-free guidance runs the conditional and unconditional passes either in one
  batch (ComfyUI lists the kind of each equal batch chunk in ``transformer_options
  ["cond_or_uncond"]``: 0 = cond, 1 = uncond) or in separate calls; ``apply_to`` picks rows.
- *steps*: the user gives ``start_percent``/``end_percent`` as fractions of the schedule. Our
  own samplers know their step fraction; ComfyUI's UNet only sees the current sigma, so the
  fractions are turned into a sigma interval once with the model's ``percent_to_sigma``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from .config import FeatureCacheConfig

COND = 0
UNCOND = 1


def rows_for_apply_to(apply_to: str, cond_or_uncond: Optional[Sequence[int]], batch_size: int) -> Optional[List[bool]]:
    """Per-row mask of the rows ``apply_to`` selects, or ``None`` meaning "every row".

    ``cond_or_uncond`` lists the kind of each of the equal batch chunks (ComfyUI's convention,
    0 = cond, 1 = uncond). It may be ``None`` only when ``apply_to == "both"``.
    """
    if apply_to == "both":
        return None
    if apply_to not in ("cond", "uncond"):
        raise ValueError(f"apply_to must be 'both', 'cond' or 'uncond', got {apply_to!r}")
    if not cond_or_uncond:
        raise ValueError(f"apply_to={apply_to!r} needs to know which batch rows are cond and which uncond "
                         "(transformer_options['cond_or_uncond'] is missing); use apply_to='both' or pass the rows")
    chunks = len(cond_or_uncond)
    if batch_size % chunks != 0:
        raise ValueError(f"batch of {batch_size} rows cannot be split into {chunks} equal cond/uncond chunks")
    wanted = COND if apply_to == "cond" else UNCOND
    rows_per_chunk = batch_size // chunks
    return [int(kind) == wanted for kind in cond_or_uncond for _ in range(rows_per_chunk)]


def fraction_from_timestep(timestep: float, num_train_timesteps: int = 1000) -> float:
    """Schedule fraction of a discrete DDPM timestep, matching ComfyUI's ``percent_to_sigma``.

    ComfyUI maps percent ``p`` to the sigma of timestep ``(1 - p) * (T - 1)``, so timestep 999
    is fraction 0 (start) and timestep 0 is fraction 1 (end). Our DDIM samplers (CVD: 1000
    training steps, ``steps_offset 1``) use this to test ``start_percent``/``end_percent``.
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    return 1.0 - float(timestep) / float(num_train_timesteps - 1)


@dataclass(frozen=True)
class SigmaRange:
    """The sigma interval ``[sigma_end, sigma_start]`` in which the cache is active.

    Sigmas fall as sampling proceeds, so ``start_percent`` gives the upper bound. ``None``
    bounds mean "unbounded" (the whole schedule). Plain floats only, so the object survives
    ``copy.deepcopy`` (ComfyUI deep-copies ``model_options`` on every ``clone``).
    """

    sigma_start: Optional[float] = None
    sigma_end: Optional[float] = None

    @classmethod
    def from_config(cls, cfg: FeatureCacheConfig,
                    percent_to_sigma: Optional[Callable[[float], float]] = None) -> "SigmaRange":
        """Resolve the config's percent range with a model's ``percent_to_sigma``.

        ``percent_to_sigma`` is ComfyUI's ``model_sampling.percent_to_sigma`` (or any
        equivalent); it may be omitted only when the range is the whole schedule.
        """
        if cfg.full_schedule:
            return cls()
        if percent_to_sigma is None:
            raise ValueError(f"timestep range {cfg.start_percent}..{cfg.end_percent} needs the model's "
                             "percent_to_sigma to find the matching sigmas; pass percent_to_sigma or use 0..1")
        upper = None if cfg.start_percent <= 0.0 else float(percent_to_sigma(cfg.start_percent))
        lower = None if cfg.end_percent >= 1.0 else float(percent_to_sigma(cfg.end_percent))
        return cls(sigma_start=upper, sigma_end=lower)

    def contains(self, sigma: float) -> bool:
        """Whether ``sigma`` lies in the interval (both ends inclusive)."""
        if self.sigma_start is not None and sigma > self.sigma_start:
            return False
        if self.sigma_end is not None and sigma < self.sigma_end:
            return False
        return True

    @property
    def unbounded(self) -> bool:
        """True when every sigma is inside."""
        return self.sigma_start is None and self.sigma_end is None


def combine_rows(first: Optional[List[bool]], second: Optional[List[bool]]) -> Optional[List[bool]]:
    """Row-wise AND of two row masks, where ``None`` means "every row"."""
    if first is None:
        return second
    if second is None:
        return first
    if len(first) != len(second):
        raise ValueError(f"row masks disagree on the batch size: {len(first)} vs {len(second)}")
    return [a and b for a, b in zip(first, second)]
