"""Which views are paired at each denoising step of the collaborative sampler.

CVD is trained on *pairs* of videos: its cross-view synchronization modules (CVSMs) let a view
attend to exactly one partner. To sample N views, every step groups the views into pairs, runs each
pair through the denoiser and averages, per view, the noise predictions of the pairs it took part
in (paper §3.3, Alg. 1; official ``pipeline_animation_epi_advanced.py``).

Strategies
----------
``random``
    A fresh random perfect matching at every step (and every recurrence sub-step): the released
    code's behaviour. The official code only handles even N; for odd N the view left over after
    the matching gets a second pair with a randomly chosen other view, so that one view takes part
    in two pairs and the sampler divides its sum by 2.
``all_pairs``
    Every unordered pair every step, N(N-1)/2 pairs (the paper's "exhaustive" variant).
``fixed``
    One random matching drawn from the seed alone and reused at every step.

N = 1 has no pairs (``[]``): the sampler then runs the single view as a plain CameraCtrl video,
calling the denoiser with ``partner=None`` (no cross-view attention at all; see
``cvd_core.sampling.collaborative``). Pairing a view with itself would make the CVSMs attend to
the view's own tokens, which the model was never trained on.

Determinism: the result depends only on ``(n_views, strategy, step, seed, substep)``. The random
stream is derived with ``numpy.random.SeedSequence``, whose algorithm is fixed by NumPy's
documentation, and the shuffle is our own Fisher-Yates over its 32-bit words, so schedules do not
change between NumPy or torch versions. ``substep`` numbers the matchings drawn within one step:
the sampler uses ``substep = r * partitions + q`` for recurrence iteration ``r`` and partition
``q`` (the official code draws a new matching for each of them).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

Pair = Tuple[int, int]

STRATEGIES = ("random", "all_pairs", "fixed")
MAX_VIEWS = 16

# Distinct stream tags so that the pairing stream never coincides with a noise stream that is
# derived from the same user seed elsewhere.
_TAG_RANDOM = 0x5041_4952  # "PAIR"
_TAG_FIXED = 0x4649_5844  # "FIXD"


def _check_args(n_views: int, strategy: str, step: int, substep: int) -> None:
    if not isinstance(n_views, (int, np.integer)) or not 1 <= int(n_views) <= MAX_VIEWS:
        raise ValueError(f"n_views must be an integer from 1 to {MAX_VIEWS}, got {n_views!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"pairing strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if int(step) < 0 or int(substep) < 0:
        raise ValueError(f"step and substep must be >= 0, got step={step}, substep={substep}")


def _seed_words(seed: int) -> List[int]:
    """Split any Python int seed (ComfyUI seeds go up to 2**64 - 1) into SeedSequence words."""
    seed = int(seed) & ((1 << 64) - 1)  # negative seeds wrap like an unsigned 64-bit value
    return [seed & 0xFFFF_FFFF, seed >> 32]


def _random_words(entropy: Sequence[int], count: int) -> np.ndarray:
    return np.random.SeedSequence(list(entropy)).generate_state(count, dtype=np.uint32)


def _shuffled(n: int, words: np.ndarray) -> List[int]:
    """Fisher-Yates shuffle of range(n) driven by the given 32-bit words (one per swap).

    The modulo bias is below n / 2**32 (< 4e-9 for n <= 16), negligible for pairing.
    """
    order = list(range(n))
    for k, i in enumerate(range(n - 1, 0, -1)):
        j = int(words[k]) % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def _matching(n_views: int, entropy: Sequence[int]) -> List[Pair]:
    """A random perfect matching; for odd N the left-over view gets a second, random partner."""
    words = _random_words(entropy, n_views + 1)
    order = _shuffled(n_views, words)
    pairs = [(order[2 * k], order[2 * k + 1]) for k in range(n_views // 2)]
    if n_views % 2 == 1 and n_views > 1:
        leftover = order[-1]
        partner = order[int(words[n_views]) % (n_views - 1)]  # any view except the left-over one
        pairs.append((leftover, partner))
    return sorted((min(a, b), max(a, b)) for a, b in pairs)


def pair_schedule(n_views: int, strategy: str = "random", step: int = 0, seed: int = 0,
                  substep: int = 0) -> List[Pair]:
    """The view pairs ``(i, j)`` (``i < j``, sorted) the sampler runs at ``step`` (0-based).

    Every view appears in at least one pair (for N >= 2). ``random``: a perfect matching, fresh
    per ``(seed, step, substep)``; odd N adds one pair for the left-over view, so exactly one view
    appears twice. ``all_pairs``: all N(N-1)/2 pairs. ``fixed``: one matching per ``seed``, the same
    at every step. N = 1 returns ``[]`` (the view is sampled alone, without cross-view attention).
    """
    _check_args(n_views, strategy, step, substep)
    n_views = int(n_views)
    if n_views == 1:
        return []
    if strategy == "all_pairs":
        return [(i, j) for i in range(n_views) for j in range(i + 1, n_views)]
    if strategy == "fixed":
        return _matching(n_views, [_TAG_FIXED, n_views, *_seed_words(seed)])
    return _matching(n_views, [_TAG_RANDOM, n_views, *_seed_words(seed), int(step), int(substep)])


def pairs_per_view(n_views: int, pairs: Sequence[Pair]) -> List[int]:
    """How many pairs each view takes part in (the divisor of its averaged noise prediction)."""
    counts = [0] * n_views
    for i, j in pairs:
        counts[i] += 1
        counts[j] += 1
    return counts
