"""UNet block patches driven by a tiny SD1.5-shaped fake of ComfyUI's ``UNetModel`` forward."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from cvd_core.feature_cache import INPUT_PATCH_NAME, OUTPUT_PATCH_NAME, FeatureCacheConfig, make_unet_patches

C = 4  # model_channels (320 in SD1.5); channel mult (1, 2, 4, 4), 2 res blocks per level
SD15_INPUT_BLOCKS = 12
MIDDLE = 12  # global index of the middle block; output block j is 13 + j
# Windows the adapter must form (global index of the block whose output is cached), per SD1.5.
SD15_WINDOWS = [[0, 1, 2], [3], [4, 5], [6], [7, 8], [9, 10, 11],
                [12, 13, 14], [15, 16, 17], [18], [19, 20], [21], [22, 23]]


def _res(cin, cout, seed):
    """A deterministic non-linear 1x1 'resnet' block from ``cin`` to ``cout`` channels."""
    weight = (torch.randn(cout, cin, generator=torch.Generator().manual_seed(seed)) / cin ** 0.5)[:, :, None, None]
    skip = torch.eye(cout, cin)[:, :, None, None]

    def block(x):  # in the input's dtype, so equivalence tests can run in float64
        return torch.tanh(F.conv2d(x, weight.to(x.dtype))) + F.conv2d(x, skip.to(x.dtype))
    return block


def _down(seed):
    return lambda x: F.avg_pool2d(x, 2)


def _then_up(block):
    return lambda x: F.interpolate(block(x), scale_factor=2.0, mode="nearest")


class FakeSD15UNet:
    """SD1.5 block layout at toy size, with ComfyUI's patch call order (openaimodel.py)."""

    def __init__(self):
        mult = [C, 2 * C, 4 * C, 4 * C]
        self.input_blocks = [_res(4, C, 0), _res(C, C, 1), _res(C, C, 2), _down(3),
                             _res(C, 2 * C, 4), _res(2 * C, 2 * C, 5), _down(6),
                             _res(2 * C, 4 * C, 7), _res(4 * C, 4 * C, 8), _down(9),
                             _res(4 * C, 4 * C, 10), _res(4 * C, 4 * C, 11)]
        self.middle_block = _res(4 * C, 4 * C, 12)
        skips = [C, C, C, C, 2 * C, 2 * C, 2 * C, 4 * C, 4 * C, 4 * C, 4 * C, 4 * C][::-1]
        outs, ch, seed = [], 4 * C, 13
        for level in (3, 2, 1, 0):
            for i in range(3):
                block = _res(ch + skips[len(outs)], mult[level], seed)
                ch, seed = mult[level], seed + 1
                outs.append(_then_up(block) if (i == 2 and level > 0) else block)
        self.output_blocks = outs
        self.inputs, self.outputs = {}, {}  # main-path input / raw output per global block index

    def _run(self, index, block, h, main):
        self.inputs[index] = main.clone()
        out = block(h)
        self.outputs[index] = out.clone()
        return out

    def forward(self, x, transformer_options):
        patches = transformer_options.get("patches", {})
        hs, h = [], x
        for id, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", id)
            h = self._run(id, module, h, h)
            for p in patches.get("input_block_patch", []):
                h = p(h, transformer_options)
            hs.append(h)
            for p in patches.get("input_block_patch_after_skip", []):
                h = p(h, transformer_options)
        transformer_options["block"] = ("middle", 0)
        h = self._run(MIDDLE, self.middle_block, h, h)
        for id, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", id)
            hsp = hs.pop()
            for p in patches.get("output_block_patch", []):
                h, hsp = p(h, hsp, transformer_options)
            h = self._run(MIDDLE + 1 + id, module, torch.cat([h, hsp], dim=1), h)
        return h


def run(unet, x, patches=None, **options):
    transformer_options = dict(options)
    if patches:
        transformer_options["patches"] = {name: [fn] for name, fn in patches.items()}
    return unet.forward(x, transformer_options)


class ReferenceWindows:
    """Independent statement of the expected blends: explicit SD1.5 windows, fixed mode."""

    def __init__(self, strength, window):
        self.strength, self.window, self.outputs = strength, window, {}
        self.group_of = {b: group for group in SD15_WINDOWS for b in group}

    def blend(self, producer, h):
        self.outputs[producer] = h
        group = self.group_of[producer]
        position = group.index(producer)
        start = position - position % self.window
        members = [self.outputs[b] for b in group[start:position + 1]]
        mean = members[0] if len(members) == 1 else torch.mean(torch.stack(members), dim=0)
        return self.strength * mean + (1 - self.strength) * h

    def patches(self):
        def after_skip(h, to):
            return self.blend(to["block"][1], h)

        def before_output(h, hsp, to):
            return self.blend(MIDDLE + to["block"][1], h), hsp
        return {INPUT_PATCH_NAME: after_skip, OUTPUT_PATCH_NAME: before_output}


def latent(batch=1, seed=0):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_patch_names_and_signatures_match_comfy():
    patches = make_unet_patches(FeatureCacheConfig())
    assert set(patches) == {"input_block_patch_after_skip", "output_block_patch"}


@pytest.mark.parametrize("window", [6, 2])
def test_blends_follow_sd15_stage_windows(window):
    cfg = FeatureCacheConfig(window=window, strength=0.25)
    # float64: the two implementations order the blend's arithmetic differently, which in float32 rounds
    # to a few ulps of the features' scale (machine-dependent); in float64 a wrong window is still ~1e-1
    x = latent().double()
    patched = FakeSD15UNet()
    out = run(patched, x, make_unet_patches(cfg))
    reference = FakeSD15UNet()
    expected = run(reference, x, ReferenceWindows(0.25, window).patches())
    for b in range(25):
        scale = float(reference.inputs[b].abs().max())
        torch.testing.assert_close(patched.inputs[b], reference.inputs[b], rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
    assert not torch.allclose(out, run(FakeSD15UNet(), x))


def test_no_blend_across_stage_boundaries():
    unet = FakeSD15UNet()
    run(unet, latent(), make_unet_patches(FeatureCacheConfig(window=6, strength=0.5)))
    o, i = unet.outputs, unet.inputs
    # Middle block input: mean of the last encoder stage only (same shape as the decoder's).
    torch.testing.assert_close(i[MIDDLE], 0.5 * torch.stack([o[9], o[10], o[11]]).mean(0) + 0.5 * o[11])
    # First decoder input: the middle output alone, although in9..in11 have the same shape.
    torch.testing.assert_close(i[MIDDLE + 1], o[MIDDLE])
    # After a channel change (640 level) and after an upsample the window restarts.
    torch.testing.assert_close(i[4], o[3])
    torch.testing.assert_close(i[5], o[4])
    torch.testing.assert_close(i[16], o[15])
    torch.testing.assert_close(i[17], 0.5 * torch.stack([o[15], o[16]]).mean(0) + 0.5 * o[16])


def test_skips_are_not_blended():
    seen = []
    patches = make_unet_patches(FeatureCacheConfig(window=6, strength=0.5))
    spy = {OUTPUT_PATCH_NAME: lambda h, hsp, to: (seen.append(hsp) or (h, hsp))}
    unet = FakeSD15UNet()
    transformer_options = {"patches": {INPUT_PATCH_NAME: [patches[INPUT_PATCH_NAME]],
                                       OUTPUT_PATCH_NAME: [patches[OUTPUT_PATCH_NAME], spy[OUTPUT_PATCH_NAME]]}}
    unet.forward(latent(), transformer_options)
    for j, hsp in enumerate(seen):
        assert torch.equal(hsp, unet.outputs[11 - j])  # raw input-block output, as pushed


def test_strength_zero_returns_the_same_tensors():
    patches = make_unet_patches(FeatureCacheConfig(strength=0.0))
    h, hsp = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    to = {"block": ("input", 0), "cond_or_uncond": [0]}
    assert patches[INPUT_PATCH_NAME](h, to) is h
    to["block"] = ("output", 0)
    out_h, out_hsp = patches[OUTPUT_PATCH_NAME](h, hsp, to)
    assert out_h is h and out_hsp is hsp
    x = latent()
    assert torch.equal(run(FakeSD15UNet(), x, patches), run(FakeSD15UNet(), x))


def test_excluded_sigma_range_is_bit_identical():
    cfg = FeatureCacheConfig(strength=0.5, start_percent=0.0, end_percent=0.3)
    patches = make_unet_patches(cfg, percent_to_sigma=lambda p: 10.0 * (1.0 - p))  # end at sigma 7
    x = latent()
    plain = run(FakeSD15UNet(), x)
    assert torch.equal(run(FakeSD15UNet(), x, patches, sigmas=torch.tensor([2.0])), plain)
    assert not torch.allclose(run(FakeSD15UNet(), x, patches, sigmas=torch.tensor([9.0])), plain)
    with pytest.raises(ValueError, match="sigmas"):
        run(FakeSD15UNet(), x, patches)
    with pytest.raises(ValueError, match="percent_to_sigma"):
        make_unet_patches(cfg)


def test_apply_to_cond_leaves_uncond_rows_bit_identical():
    x = latent(batch=2)
    patches = make_unet_patches(FeatureCacheConfig(window=6, strength=0.5, apply_to="cond"))
    out = run(FakeSD15UNet(), x, patches, cond_or_uncond=[1, 0])  # row 0 uncond, row 1 cond
    plain = run(FakeSD15UNet(), x)
    assert torch.equal(out[0], plain[0])
    assert not torch.allclose(out[1], plain[1])
    # Batch 2 vs batch 1: differently blocked convolutions round differently per CPU in float32; compare
    # in float64, where that rounding is ~1e-16 relative (see test_cfg_halves_never_see_each_other).
    out64 = run(FakeSD15UNet(), x.double(), patches, cond_or_uncond=[1, 0])
    cond_alone = run(FakeSD15UNet(), x[1:].double(), patches, cond_or_uncond=[0])
    torch.testing.assert_close(out64[1], cond_alone[0], rtol=0, atol=1e-12 * float(cond_alone.abs().max()))
    uncond_call = run(FakeSD15UNet(), x[:1], patches, cond_or_uncond=[1])
    assert torch.equal(uncond_call, run(FakeSD15UNet(), x[:1]))


def test_cfg_halves_never_see_each_other():
    # Batch 2 vs two batches of 1 run differently blocked convolutions, whose float32 rounding differs
    # between CPUs (1.7e-6 on AVX-512, 9.5e-7 here, at a scale of 3); in float64 it is ~1e-16 relative
    # anywhere, while halves that see each other's features differ by the blend itself (~strength).
    x = latent(batch=2, seed=5).double()
    patches = make_unet_patches(FeatureCacheConfig(window=3, strength=0.5, mode="sliding"))
    joint = run(FakeSD15UNet(), x, patches, cond_or_uncond=[1, 0])
    uncond = run(FakeSD15UNet(), x[:1], patches, cond_or_uncond=[1])
    cond = run(FakeSD15UNet(), x[1:], patches, cond_or_uncond=[0])
    separate = torch.cat([uncond, cond])
    torch.testing.assert_close(joint, separate, rtol=0, atol=1e-12 * float(separate.abs().max()))


def test_state_resets_each_forward_even_with_a_reused_dict():
    x = latent()
    cfg = FeatureCacheConfig(window=6, strength=0.3, end_percent=0.5)
    patches = make_unet_patches(cfg, percent_to_sigma=lambda p: 10.0 * (1.0 - p))  # active for sigma >= 5
    transformer_options = {"patches": {name: [fn] for name, fn in patches.items()}}
    results = []
    for sigma in (8.0, 2.0, 8.0):  # same dict every time: each forward must rebuild its state
        transformer_options["sigmas"] = torch.tensor([sigma])
        results.append(FakeSD15UNet().forward(x, transformer_options))
    fresh = [run(FakeSD15UNet(), x, patches, sigmas=torch.tensor([s])) for s in (8.0, 2.0)]
    assert torch.equal(results[0], fresh[0]) and torch.equal(results[2], fresh[0])
    assert torch.equal(results[1], fresh[1]) and torch.equal(results[1], run(FakeSD15UNet(), x))


def test_deepcopied_patches_behave_the_same():
    # ModelPatcher.clone deep-copies model_options, patches included.
    patches = make_unet_patches(FeatureCacheConfig(window=4, strength=[0.2] * 25, preserve_norm=True))
    copied = copy.deepcopy(patches)
    x = latent()
    assert torch.equal(run(FakeSD15UNet(), x, patches), run(FakeSD15UNet(), x, copied))


def test_chained_enhancers_keep_separate_states():
    first = make_unet_patches(FeatureCacheConfig(strength=0.2))
    second = make_unet_patches(FeatureCacheConfig(strength=0.2, mode="sliding", window=2))
    transformer_options = {"patches": {name: [first[name], second[name]] for name in first}}
    FakeSD15UNet().forward(latent(), transformer_options)
    states = [k for k in transformer_options if k.startswith("cvd_feature_cache/")]
    assert len(states) == 2


class SlowFakeUNet(FakeSD15UNet):
    """Yields the GIL inside every block so two forwards interleave."""

    def _run(self, index, block, h, main):
        time.sleep(0.0005)
        return super()._run(index, block, h, main)


def test_concurrent_forwards_match_sequential_ones():
    patches = make_unet_patches(FeatureCacheConfig(window=3, strength=0.4, mode="sliding"))
    inputs = [latent(seed=s) for s in range(4)]
    expected = [run(FakeSD15UNet(), x, patches) for x in inputs]
    results = [None] * len(inputs)

    def worker(k):
        results[k] = run(SlowFakeUNet(), inputs[k], patches)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert torch.equal(got, want)


def test_sd15_block_index_matches_comfy_numbering():
    from cvd_core.feature_cache import sd15_block_index
    assert [sd15_block_index("down", b, l) for b in range(4) for l in range(2)] == [1, 2, 4, 5, 7, 8, 10, 11]
    assert [sd15_block_index("downsample", b) for b in range(3)] == [3, 6, 9]
    assert sd15_block_index("conv_in") == 0 and sd15_block_index("mid") == MIDDLE
    assert [sd15_block_index("up", b, l) for b in range(4) for l in range(3)] == list(range(13, 25))
    with pytest.raises(ValueError, match="no SD1.5 UNet layer"):
        sd15_block_index("down", 3, 2)
