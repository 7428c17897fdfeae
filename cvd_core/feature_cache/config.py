"""Knobs of the RepVideo-style cross-layer feature cache, validated once.

The mechanism (RepVideo, Si et al. 2025, ``sat/transformer_gating.py``): before block ``i`` the
block's input ``h`` is blended with the mean of the raw outputs of the preceding blocks in the
same window, ``h <- g_i * mean(cache) + (1 - g_i) * h``. ``FeatureCacheConfig`` says how strong
the blend is, which blocks, which sampling steps and which batch rows it touches, and how the
windows are cut. ``FeatureLayout`` says how a model lays out its hidden states (which dim holds
channels, whether text tokens are prepended); it belongs to the model adapter, not to the user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

WINDOW_MODES = ("fixed", "sliding")
APPLY_TO = ("both", "cond", "uncond")
TOKEN_SCOPES = ("all", "video")

StrengthSpec = Union[float, Sequence[float]]


def _as_strength(strength) -> Union[float, Tuple[float, ...]]:
    """Normalise ``strength`` to a float or a tuple of floats (hashable, deep-copy friendly).

    Accepts a number, a sequence of numbers or a 1-D tensor of trained gates (anything with
    ``tolist``), so the official ``learnable_gating`` parameter can be passed as is.
    """
    if hasattr(strength, "tolist"):
        strength = strength.tolist()
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        values: Tuple[float, ...] = (float(strength),)
        single = True
    elif isinstance(strength, (list, tuple)):
        if len(strength) == 0:
            raise ValueError("strength list is empty: give one strength per block, or a single float")
        values = tuple(float(v) for v in strength)
        single = False
    else:
        raise TypeError(f"strength must be a float or a list of floats (one per block), got {type(strength).__name__}")
    for index, value in enumerate(values):
        if not math.isfinite(value):
            raise ValueError(f"strength must be finite, got {value} at position {index}")
    return values[0] if single else values


@dataclass(frozen=True)
class FeatureCacheConfig:
    """User-facing settings of the feature cache.

    - ``window`` (m >= 1): window length in block outputs.
    - ``mode``: ``"fixed"`` = the official stride: the output of the j-th cached block of a stage
      starts a new window when ``j % m == 0`` and is appended otherwise; ``"sliding"`` = the
      cache always holds the last ``m`` outputs of the stage.
    - ``strength`` (lambda): a float for every block, or a list with one value per block index
      (absolute index, so a list of trained gates reproduces the official convention exactly).
      The blend is ``lambda * mean(cache) + (1 - lambda) * h``; 0 leaves a block untouched.
      Blends whose window holds only the input itself are skipped for a single float (they
      change nothing but rounding) and computed for a list, as the official code does.
    - ``block_start`` / ``block_end``: inclusive range of blocks whose *input* is blended;
      ``block_end = -1`` means "through the last block". Windows start at ``block_start``.
    - ``start_percent`` / ``end_percent``: active part of the sampling schedule, as fractions
      (0 = first, noisiest step; 1 = the end), ComfyUI's convention.
    - ``apply_to``: ``"both"``, ``"cond"`` or ``"uncond"`` batch rows.
    - ``token_scope``: ``"all"`` tokens, or ``"video"`` tokens only (skips the text tokens a
      model prepends to its sequence; identical to ``"all"`` for models without such tokens).
    - ``preserve_norm``: rescale each blended token to the RMS it had before blending, so the
      blend steers direction without shrinking activations (averaging shortens vectors).
    """

    window: int = 6
    mode: str = "fixed"
    strength: StrengthSpec = 0.1
    block_start: int = 0
    block_end: int = -1
    start_percent: float = 0.0
    end_percent: float = 1.0
    apply_to: str = "both"
    token_scope: str = "all"
    preserve_norm: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer >= 1 (block outputs per window), got {self.window!r}")
        if self.mode not in WINDOW_MODES:
            raise ValueError(f"mode must be one of {WINDOW_MODES}, got {self.mode!r}")
        object.__setattr__(self, "strength", _as_strength(self.strength))
        if not isinstance(self.block_start, int) or self.block_start < 0:
            raise ValueError(f"block_start must be an integer >= 0, got {self.block_start!r}")
        if not isinstance(self.block_end, int) or (self.block_end != -1 and self.block_end < self.block_start):
            raise ValueError(f"block_end must be -1 (through the last block) or >= block_start "
                             f"({self.block_start}), got {self.block_end!r}")
        start, end = float(self.start_percent), float(self.end_percent)
        if not (0.0 <= start <= end <= 1.0):
            raise ValueError(f"timestep range must satisfy 0 <= start_percent <= end_percent <= 1, "
                             f"got start_percent={self.start_percent}, end_percent={self.end_percent}")
        object.__setattr__(self, "start_percent", start)
        object.__setattr__(self, "end_percent", end)
        if self.apply_to not in APPLY_TO:
            raise ValueError(f"apply_to must be one of {APPLY_TO}, got {self.apply_to!r}")
        if self.token_scope not in TOKEN_SCOPES:
            raise ValueError(f"token_scope must be one of {TOKEN_SCOPES}, got {self.token_scope!r}")
        object.__setattr__(self, "preserve_norm", bool(self.preserve_norm))

    # -- per-block queries -------------------------------------------------------------------

    def block_in_range(self, block_index: int) -> bool:
        """Whether the input of ``block_index`` lies in ``[block_start, block_end]``."""
        return block_index >= self.block_start and (self.block_end == -1 or block_index <= self.block_end)

    def strength_for(self, block_index: int) -> float:
        """Blend strength for the input of ``block_index`` (0.0 outside the block range)."""
        if not self.block_in_range(block_index):
            return 0.0
        if isinstance(self.strength, float):
            return self.strength
        if block_index >= len(self.strength):
            raise ValueError(f"strength list has {len(self.strength)} entries but block {block_index} is in the "
                             f"block range: give one strength per block, a single float, or set block_end "
                             f"<= {len(self.strength) - 1}")
        return self.strength[block_index]

    def validate_for(self, num_blocks: int) -> None:
        """Check the config against a model with ``num_blocks`` blocks (raises ``ValueError``)."""
        if self.block_start >= num_blocks:
            raise ValueError(f"block_start {self.block_start} is past the last block ({num_blocks - 1})")
        if self.block_end >= num_blocks:
            raise ValueError(f"block_end {self.block_end} is past the last block ({num_blocks - 1}); use -1 for the last")
        if isinstance(self.strength, tuple):
            last = num_blocks - 1 if self.block_end == -1 else self.block_end
            if last >= len(self.strength):
                raise ValueError(f"strength list has {len(self.strength)} entries but blocks up to {last} are in "
                                 f"range: give one strength per block ({num_blocks}) or a single float")

    @property
    def never_blends(self) -> bool:
        """True when no block can change (every strength is 0): callers skip all work."""
        if isinstance(self.strength, float):
            return self.strength == 0.0
        return all(self.strength_for(i) == 0.0 for i in range(len(self.strength)) if self.block_in_range(i))

    @property
    def full_schedule(self) -> bool:
        """True when the timestep range covers the whole schedule (no step test needed)."""
        return self.start_percent <= 0.0 and self.end_percent >= 1.0

    def active_at(self, step_fraction: float) -> bool:
        """Whether a step at ``step_fraction`` (0 = first/noisiest, 1 = end) is in the range.

        Both ends are inclusive, like ComfyUI's percent ranges.
        """
        return self.start_percent <= float(step_fraction) <= self.end_percent


@dataclass(frozen=True)
class FeatureLayout:
    """How a model lays out hidden states, supplied by the model adapter.

    - ``channel_dim``: the feature dim of a token (1 for UNet maps ``[B, C, ...]``, -1 for
      sequences ``[B, N, C]``); ``preserve_norm`` measures each token's RMS along it.
    - ``token_dim``: the sequence dim (1 for ``[B, N, C]``); used only with ``text_tokens``.
    - ``text_tokens``: how many text tokens the model prepends along ``token_dim`` (226 for
      CogVideoX); ``token_scope="video"`` leaves those untouched. 0 for UNets, whose text
      lives in the cross-attention context, not in the hidden state.
    """

    channel_dim: int = 1
    token_dim: int = 1
    text_tokens: int = 0

    def __post_init__(self) -> None:
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens must be >= 0, got {self.text_tokens}")


UNET_LAYOUT = FeatureLayout(channel_dim=1)
"""Layout of SD-family UNet hidden states ``[B, C, H, W]`` (or ``[B, C, T, H, W]``)."""

SEQUENCE_LAYOUT = FeatureLayout(channel_dim=-1, token_dim=1)
"""Layout of transformer hidden states ``[B, N, C]`` without prepended text tokens."""
