"""Properties of the per-step view pairing (cvd_core.sampling.pair_schedule)."""

from collections import Counter

import pytest

from cvd_core.sampling import pair_schedule, pairs_per_view


def _counts(n, pairs):
    return pairs_per_view(n, pairs)


@pytest.mark.parametrize("n", range(2, 17))
@pytest.mark.parametrize("strategy", ["random", "fixed"])
def test_matching_covers_every_view(n, strategy):
    for step in range(6):
        pairs = pair_schedule(n, strategy, step, seed=123)
        counts = _counts(n, pairs)
        assert all(i != j for i, j in pairs)
        assert all(0 <= i < j < n for i, j in pairs)
        if n % 2 == 0:
            assert len(pairs) == n // 2 and counts == [1] * n  # a perfect matching
        else:
            # one view (the left-over one) gets a second partner, every other view exactly one pair
            assert len(pairs) == (n + 1) // 2
            assert sorted(counts) == [1] * (n - 1) + [2]
        assert len(set(pairs)) == len(pairs)


@pytest.mark.parametrize("n", range(1, 17))
def test_all_pairs(n):
    pairs = pair_schedule(n, "all_pairs", step=3, seed=9)
    assert len(pairs) == n * (n - 1) // 2
    assert set(pairs) == {(i, j) for i in range(n) for j in range(i + 1, n)}
    if n > 1:
        assert _counts(n, pairs) == [n - 1] * n


def test_single_view_has_no_pairs():
    for strategy in ("random", "all_pairs", "fixed"):
        assert pair_schedule(1, strategy, 0, 0) == []


def test_deterministic_from_seed_step_substep():
    for n in (2, 5, 8, 16):
        for step in range(4):
            assert pair_schedule(n, "random", step, 77) == pair_schedule(n, "random", step, 77)
    # different steps / seeds / substeps give different matchings (many views: collisions are rare)
    a = [tuple(pair_schedule(16, "random", s, 77)) for s in range(20)]
    assert len(set(a)) == 20
    assert pair_schedule(16, "random", 0, 77) != pair_schedule(16, "random", 0, 78)
    assert pair_schedule(16, "random", 0, 77, substep=1) != pair_schedule(16, "random", 0, 77, substep=0)
    # huge and negative seeds are accepted (ComfyUI seeds are unsigned 64-bit)
    assert pair_schedule(6, "random", 0, 2 ** 64 - 1) == pair_schedule(6, "random", 0, -1)


def test_fixed_is_the_same_every_step_but_depends_on_seed():
    ref = pair_schedule(10, "fixed", 0, seed=5)
    assert all(pair_schedule(10, "fixed", s, seed=5) == ref for s in range(1, 10))
    assert any(pair_schedule(10, "fixed", 0, seed=s) != ref for s in range(6, 12))


def test_random_matchings_are_roughly_uniform():
    # 4 views have exactly 3 perfect matchings; each should come up about a third of the time.
    seen = Counter(tuple(pair_schedule(4, "random", step, seed=1)) for step in range(600))
    assert set(seen) == {((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))}
    assert all(150 < c < 250 for c in seen.values()), seen
    # odd N: the doubled view is not always the same one
    doubled = Counter(_counts(5, pair_schedule(5, "random", s, 2)).index(2) for s in range(200))
    assert len(doubled) == 5


@pytest.mark.parametrize("bad", [0, 17, -1])
def test_view_count_limits(bad):
    with pytest.raises(ValueError, match="n_views must be an integer from 1 to 16"):
        pair_schedule(bad, "random", 0, 0)


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="random, all_pairs, fixed"):
        pair_schedule(4, "exhaustive", 0, 0)
