"""Feature cache mechanism: config, per-forward state, and the generic block-loop wrapper."""

from __future__ import annotations

import pytest
import torch

from cvd_core.feature_cache import (
    SEQUENCE_LAYOUT,
    UNET_LAYOUT,
    FeatureCacheConfig,
    FeatureCacheState,
    FeatureLayout,
    SigmaRange,
    combine_rows,
    fraction_from_timestep,
    rows_for_apply_to,
    run_blocks_with_cache,
)


class AddBlock:
    """Block ``h -> h + delta`` that remembers the inputs it saw."""

    def __init__(self, delta: float):
        self.delta = delta
        self.inputs = []

    def __call__(self, h):
        self.inputs.append(h.clone())
        return h + self.delta


class MixBlock:
    """Non-linear block ``h -> tanh(h @ W) + h`` on ``[B, N, C]`` that remembers its inputs."""

    def __init__(self, channels: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, generator=gen) / channels ** 0.5
        self.inputs = []

    def __call__(self, h):
        self.inputs.append(h.clone())
        return torch.tanh(h @ self.weight.to(h.dtype)) + h  # in h's dtype: invariance tests run in float64


def plain_loop(blocks, h):
    for block in blocks:
        h = block(h)
    return h


def official_loop(blocks, h, gates, window):
    """The official RepVideo convention, transcribed from its description (spec for the tests)."""
    cache = [h]
    for i, block in enumerate(blocks):
        mean = torch.mean(torch.stack(cache, dim=0), dim=0) if len(cache) > 1 else cache[0]
        h = gates[i] * mean + (1 - gates[i]) * h
        h = block(h)
        cache = [h] if i % window == 0 else cache + [h]
    return h


def random_hidden(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- identity cases ------------------------------------------------------------------------------

def test_strength_zero_is_bit_identical():
    blocks = [MixBlock(8, seed) for seed in range(5)]
    h = random_hidden((2, 6, 8))
    cfg = FeatureCacheConfig(strength=0.0, window=2)
    assert torch.equal(run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT), plain_loop(blocks, h))
    state = FeatureCacheState(cfg, layout=SEQUENCE_LAYOUT)
    state.record_output(0, h)
    assert state.blend_input(1, h) is h


def test_zero_gates_in_a_list_are_bit_identical():
    blocks = [MixBlock(8, seed) for seed in range(4)]
    h = random_hidden((1, 5, 8))
    cfg = FeatureCacheConfig(strength=[0.0, 0.0, 0.0, 0.0], window=3)
    assert torch.equal(run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT), plain_loop(blocks, h))


def test_excluded_step_range_is_bit_identical():
    blocks = [MixBlock(8, seed) for seed in range(5)]
    h = random_hidden((2, 6, 8))
    cfg = FeatureCacheConfig(strength=0.3, window=3, start_percent=0.5, end_percent=1.0)
    plain = plain_loop(blocks, h)
    assert torch.equal(run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT, step_fraction=0.2), plain)
    inside = run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT, step_fraction=0.6)
    assert not torch.allclose(inside, plain)
    with pytest.raises(ValueError, match="step_fraction"):
        run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT)


# -- official convention -------------------------------------------------------------------------

def test_hand_computed_three_layers_with_window_reset():
    # x = 1; gates 0.5, 0.5, 0.25; blocks add 1, 2, 4; window 2.
    # L0: cache [x] -> h = 1 -> o0 = 2; 0 % 2 == 0 resets: cache [2] (x dropped).
    # L1: mean 2, h = 2 -> o1 = 4; cache [2, 4].
    # L2: mean 3, h = 0.25*3 + 0.75*4 = 3.75 -> o2 = 7.75.
    # Without the reset, L1 would see mean(1, 2) and L1's input would be 1.75.
    blocks = [AddBlock(1.0), AddBlock(2.0), AddBlock(4.0)]
    cfg = FeatureCacheConfig(window=2, mode="fixed", strength=[0.5, 0.5, 0.25])
    out = run_blocks_with_cache(blocks, torch.ones(1, 2, 3), cfg, layout=SEQUENCE_LAYOUT)
    assert torch.equal(out, torch.full((1, 2, 3), 7.75))
    assert [float(b.inputs[0][0, 0, 0]) for b in blocks] == [1.0, 2.0, 3.75]


def test_trained_gates_reproduce_official_loop_exactly():
    layers, channels, window = 13, 8, 6
    gates = torch.rand(layers, generator=torch.Generator().manual_seed(3))  # like learnable_gating
    h = random_hidden((2, 7, channels), seed=1)
    ours = run_blocks_with_cache([MixBlock(channels, s) for s in range(layers)], h,
                                 FeatureCacheConfig(window=window, strength=gates), layout=SEQUENCE_LAYOUT)
    reference = official_loop([MixBlock(channels, s) for s in range(layers)], h, gates, window)
    assert torch.equal(ours, reference)


def test_sliding_mode_hand_computed():
    # Window 2, gate 0.5; blocks add 1, 2, 4, 8; x = 1.
    # L0: h 1 -> o0 2 ; cache [2]. L1: h 2 -> o1 4 ; cache [2, 4].
    # L2: mean 3, h 0.5*3 + 0.5*4 = 3.5 -> o2 7.5 ; sliding cache [4, 7.5] (fixed would reset to [7.5]).
    # L3: mean 5.75, h 0.5*5.75 + 0.5*7.5 = 6.625 -> o3 14.625.
    sliding = [AddBlock(1.0), AddBlock(2.0), AddBlock(4.0), AddBlock(8.0)]
    out = run_blocks_with_cache(sliding, torch.ones(1, 1, 2),
                                FeatureCacheConfig(window=2, mode="sliding", strength=0.5), layout=SEQUENCE_LAYOUT)
    assert [float(b.inputs[0].flatten()[0]) for b in sliding] == [1.0, 2.0, 3.5, 6.625]
    assert torch.equal(out, torch.full((1, 1, 2), 14.625))
    fixed = [AddBlock(1.0), AddBlock(2.0), AddBlock(4.0), AddBlock(8.0)]
    run_blocks_with_cache(fixed, torch.ones(1, 1, 2),
                          FeatureCacheConfig(window=2, mode="fixed", strength=0.5), layout=SEQUENCE_LAYOUT)
    assert float(fixed[3].inputs[0].flatten()[0]) == 7.5  # reset: only o2 in the window


# -- state isolation -----------------------------------------------------------------------------

def test_two_identical_calls_give_identical_outputs():
    blocks = [MixBlock(8, seed) for seed in range(6)]
    h = random_hidden((2, 4, 8))
    cfg = FeatureCacheConfig(window=3, strength=0.4, mode="sliding", preserve_norm=True)
    first = run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT)
    second = run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT)
    assert torch.equal(first, second)


def test_inactive_rows_are_untouched_and_rows_never_mix():
    blocks = [MixBlock(8, seed) for seed in range(5)]
    # float64: a batch of 2 and a batch of 1 take different matmul kernels, whose float32 rounding differs
    # between CPUs; in float64 it is ~1e-16 relative, so any leak between rows shows far above the bound
    h = random_hidden((2, 4, 8)).double()
    cfg = FeatureCacheConfig(window=3, strength=0.4)
    out = run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT, active_rows=[False, True])
    assert torch.equal(out[0], plain_loop(blocks, h[:1])[0])
    alone = run_blocks_with_cache(blocks, h[1:], cfg, layout=SEQUENCE_LAYOUT)
    torch.testing.assert_close(out[1], alone[0], rtol=0, atol=1e-12 * float(alone.abs().max()))
    assert not torch.allclose(out[1], plain_loop(blocks, h[1:])[0])


def test_row_selection_keeps_the_input_layout_and_stays_differentiable():
    """Inactive rows must come back in h's memory layout (the next kernels round by layout)."""
    cfg = FeatureCacheConfig(window=3, strength=0.4)
    h = random_hidden((2, 3, 4, 5)).permute(0, 2, 1, 3)  # a non-contiguous view, like a rearranged UNet map
    state = FeatureCacheState(cfg, layout=UNET_LAYOUT, active_rows=[True, False])
    state.record_output(0, random_hidden((2, 4, 3, 5), seed=1))
    out = state.blend_input(1, h)
    assert out.stride() == h.stride()
    assert torch.equal(out[1], h[1]) and not torch.equal(out[0], h[0])
    leaf = h.detach().clone().requires_grad_(True)
    trained = FeatureCacheState(cfg, layout=UNET_LAYOUT, active_rows=[True, False])
    trained.record_output(0, random_hidden((2, 3, 4, 5), seed=1))
    trained.blend_input(1, leaf).sum().backward()  # training with the cache: gradients flow
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_blend_with_a_stage_key_ignores_another_stages_window():
    cfg = FeatureCacheConfig(window=3, strength=0.5, preserve_norm=False)
    state = FeatureCacheState(cfg, layout=SEQUENCE_LAYOUT)
    previous = random_hidden((1, 4, 8), seed=1)
    state.record_output(0, previous, stage="down")
    h = random_hidden((1, 4, 8), seed=2)
    assert state.blend_input(1, h, stage="up") is h  # same shape, other stage: nothing to blend with
    state.record_output(1, h, stage="up")
    later = random_hidden((1, 4, 8), seed=3)
    torch.testing.assert_close(state.blend_input(2, later, stage="up"), 0.5 * h + 0.5 * later, rtol=0, atol=0)


def test_rows_for_apply_to_follows_comfy_chunks():
    # ComfyUI: cond_or_uncond lists the kind of each equal chunk, 0 = cond, 1 = uncond.
    assert rows_for_apply_to("cond", [1, 0], 4) == [False, False, True, True]
    assert rows_for_apply_to("uncond", [1, 0], 4) == [True, True, False, False]
    assert rows_for_apply_to("both", None, 4) is None
    assert rows_for_apply_to("uncond", [0], 3) == [False, False, False]
    with pytest.raises(ValueError, match="cond_or_uncond"):
        rows_for_apply_to("cond", None, 2)
    with pytest.raises(ValueError, match="equal"):
        rows_for_apply_to("cond", [0, 1], 3)
    assert combine_rows([True, False], None) == [True, False]
    assert combine_rows([True, True], [False, True]) == [False, True]


# -- knobs ---------------------------------------------------------------------------------------

def test_preserve_norm_keeps_each_token_rms():
    blocks = [MixBlock(16, seed) for seed in range(4)]
    h = random_hidden((2, 5, 16))
    cfg = FeatureCacheConfig(window=4, strength=0.6, preserve_norm=True)
    run_blocks_with_cache(blocks, h, cfg, layout=SEQUENCE_LAYOUT)
    raw_outputs = [blocks[i](blocks[i].inputs[0]) for i in range(3)]  # what each block produced
    for i in (2, 3):  # inputs with a non-trivial window
        blended, raw = blocks[i].inputs[0], raw_outputs[i - 1]
        assert not torch.allclose(blended, raw)
        torch.testing.assert_close(blended.pow(2).mean(-1).sqrt(), raw.pow(2).mean(-1).sqrt(), rtol=1e-5, atol=1e-6)


def test_preserve_norm_on_unet_layout_uses_channel_dim():
    state = FeatureCacheState(FeatureCacheConfig(strength=0.5, preserve_norm=True), layout=UNET_LAYOUT)
    a, b = random_hidden((1, 4, 3, 3), 1), random_hidden((1, 4, 3, 3), 2)
    state.record_output(0, a)
    state.record_output(1, b)
    blended = state.blend_input(2, b)
    torch.testing.assert_close(blended.pow(2).mean(1).sqrt(), b.pow(2).mean(1).sqrt(), rtol=1e-5, atol=1e-6)


def test_token_scope_video_leaves_text_tokens():
    layout = FeatureLayout(channel_dim=-1, token_dim=1, text_tokens=3)
    h = random_hidden((2, 9, 8))
    video = [MixBlock(8, s) for s in range(4)]
    run_blocks_with_cache(video, h, FeatureCacheConfig(window=4, strength=0.5, token_scope="video"), layout=layout)
    raw_prev = video[1](video[1].inputs[0])  # raw output of block 1 = unblended input of block 2
    assert torch.equal(video[2].inputs[0][:, :3], raw_prev[:, :3])
    assert not torch.allclose(video[2].inputs[0][:, 3:], raw_prev[:, 3:])
    everything = [MixBlock(8, s) for s in range(4)]
    run_blocks_with_cache(everything, h, FeatureCacheConfig(window=4, strength=0.5, token_scope="all"), layout=layout)
    assert not torch.allclose(everything[2].inputs[0][:, :3], everything[1](everything[1].inputs[0])[:, :3])


def test_block_range_limits_blends_and_starts_windows():
    blocks = [AddBlock(float(2 ** i)) for i in range(6)]  # adds 1, 2, 4, 8, 16, 32
    cfg = FeatureCacheConfig(window=6, strength=0.5, block_start=2, block_end=4)
    run_blocks_with_cache(blocks, torch.zeros(1, 1, 1), cfg, layout=SEQUENCE_LAYOUT)
    seen = [float(b.inputs[0].flatten()[0]) for b in blocks]
    # Inputs 0..2 untouched (0, 1, 3); block 3 sees mean of o2 only (the window starts at 2): 7;
    # block 4 sees mean(o2=7, o3=15) = 11 -> 0.5*11 + 0.5*15 = 13; block 5 is outside: 13+16 = 29.
    assert seen == [0.0, 1.0, 3.0, 7.0, 13.0, 29.0]


def test_stage_keys_keep_windows_apart():
    blocks = [AddBlock(float(2 ** i)) for i in range(4)]
    cfg = FeatureCacheConfig(window=6, strength=0.5)
    run_blocks_with_cache(blocks, torch.zeros(1, 1, 1), cfg, layout=SEQUENCE_LAYOUT, stage_of=lambda i: i // 2)
    seen = [float(b.inputs[0].flatten()[0]) for b in blocks]
    # Stage 0 = outputs of blocks 0, 1; block 2's input = mean(o0=1, o1=3) blend -> 2.5;
    # o2 = 6.5 opens stage 1, so block 3 sees only o2: 6.5.
    assert seen == [0.0, 1.0, 2.5, 6.5]


def test_shape_change_opens_a_new_window():
    state = FeatureCacheState(FeatureCacheConfig(window=6, strength=0.5), layout=UNET_LAYOUT)
    state.record_output(0, torch.full((1, 2, 4, 4), 1.0))
    state.record_output(1, torch.full((1, 2, 4, 4), 3.0))
    small = torch.full((1, 2, 2, 2), 5.0)
    state.record_output(2, small)
    assert torch.equal(state.blend_input(3, small), small)
    state.record_output(3, torch.full((1, 2, 2, 2), 7.0))
    assert torch.equal(state.blend_input(4, torch.full((1, 2, 2, 2), 7.0)), torch.full((1, 2, 2, 2), 6.5))


# -- config and schedule helpers -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"window": 0}, "window"),
    ({"mode": "rolling"}, "mode"),
    ({"strength": []}, "empty"),
    ({"strength": float("nan")}, "finite"),
    ({"block_start": 3, "block_end": 2}, "block_end"),
    ({"start_percent": 0.7, "end_percent": 0.2}, "start_percent"),
    ({"apply_to": "negative"}, "apply_to"),
    ({"token_scope": "text"}, "token_scope"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureCacheConfig(**kwargs)


def test_strength_list_must_cover_the_block_range():
    cfg = FeatureCacheConfig(strength=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one strength per block"):
        cfg.validate_for(5)
    with pytest.raises(ValueError, match="strength list has 3 entries"):
        cfg.strength_for(4)
    FeatureCacheConfig(strength=[0.1, 0.2, 0.3], block_end=2).validate_for(5)


def test_schedule_helpers():
    assert fraction_from_timestep(999) == 0.0
    assert fraction_from_timestep(0) == 1.0
    cfg = FeatureCacheConfig(start_percent=0.0, end_percent=0.4)
    assert cfg.active_at(0.0) and cfg.active_at(0.4) and not cfg.active_at(0.41)
    sigma_range = SigmaRange.from_config(cfg, percent_to_sigma=lambda p: 10.0 * (1.0 - p))
    assert sigma_range.sigma_start is None and sigma_range.sigma_end == pytest.approx(6.0)
    assert sigma_range.contains(14.6) and sigma_range.contains(6.0) and not sigma_range.contains(5.9)
    assert SigmaRange.from_config(FeatureCacheConfig()).unbounded
    with pytest.raises(ValueError, match="percent_to_sigma"):
        SigmaRange.from_config(cfg)


def test_no_op_blends_are_skipped_for_a_single_strength_only():
    h = random_hidden((1, 3, 4))
    single = FeatureCacheState(FeatureCacheConfig(strength=0.3), layout=SEQUENCE_LAYOUT)
    assert single.blend_input(0, h) is h  # empty window
    single.record_output(0, h)
    assert single.blend_input(1, h) is h  # the window holds only h
    assert single.blended_blocks == []
    gates = FeatureCacheState(FeatureCacheConfig(strength=[0.3, 0.3]), layout=SEQUENCE_LAYOUT)
    gates.record_output(0, h)
    out = gates.blend_input(1, h)
    gate = torch.tensor(0.3)  # a float32 gate parameter, as in the official model
    assert out is not h and torch.equal(out, gate * h + (1 - gate) * h)
    assert gates.blended_blocks == [1]
