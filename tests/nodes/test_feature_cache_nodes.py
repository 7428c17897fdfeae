"""Feature-cache enhancer nodes called directly (no server): the CVD backbone with tiny random weights,
and the core-MODEL node against a stand-in ``ModelPatcher`` (the real one runs in the integration test)."""

from __future__ import annotations

import copy

import pytest
import torch

import cvd_core.cvd.network as network
from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from cvd_core.feature_cache import INPUT_PATCH_NAME, OUTPUT_PATCH_NAME, FeatureCacheConfig, FeatureCacheState
from nodes._comfy import NodeInputError
from nodes._schema import build_v1, run_checked
from nodes.feature_cache import ENHANCER, ENHANCER_CVD, KNOBS, knob_values

FRAMES, LATENT = 2, 8
EARLY_T = 900  # schedule fraction 0.1: inside the default 0..0.6 range

PUBLIC_KNOBS = ["strength", "window", "window_mode", "block_start", "block_end", "start_percent", "end_percent",
                "apply_to", "token_scope", "preserve_norm"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    paths = write_tiny_cvd_files(tmp_path_factory.mktemp("cvd"), seed=0)
    return load_cvd_model(**paths, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, FRAMES, LATENT, LATENT, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    plucker = torch.randn(2, 6, FRAMES, 8 * LATENT, 8 * LATENT, generator=g)
    f_mats = 1e-3 * torch.randn(2, FRAMES, 3, 3, generator=g)
    return latents, text, plucker, f_mats, torch.tensor([1, 0])


def _predict(model, inputs, t=EARLY_T):
    latents, text, plucker, f_mats, partner = inputs
    return model.predict_noise(latents, t, text, plucker, f_mats, partner)


@pytest.fixture(scope="module")
def plain(model, inputs):
    return _predict(model, inputs)


def _enhanced(model, cache_target="layers", **overrides):
    patched, = run_checked(ENHANCER_CVD, dict(model=model, cache_target=cache_target, **knob_values(**overrides))).values
    return patched


# ------------------------------------------------------------------------------ schema

def test_both_nodes_share_the_public_widget_order():
    assert list(KNOBS) == PUBLIC_KNOBS
    for schema, socket, extra in ((ENHANCER, "MODEL", []), (ENHANCER_CVD, "CVD_MODEL", ["cache_target"])):
        assert [i.name for i in schema.inputs] == ["model"] + PUBLIC_KNOBS + extra
        assert schema.inputs[0].type == socket and [o.type for o in schema.outputs] == [socket]
        assert schema.category == "CVD/enhance"
        defaults = {i.name: i.default for i in schema.inputs[1:len(PUBLIC_KNOBS) + 1]}
        assert defaults == dict(strength=0.1, window=6, window_mode="fixed", block_start=7, block_end=19,
                                start_percent=0.0, end_percent=0.6, apply_to="both", token_scope="all",
                                preserve_norm=True)


def test_validators_name_the_rule():
    for schema in (ENHANCER, ENHANCER_CVD):
        v1 = build_v1(schema)
        assert v1.VALIDATE_INPUTS(block_start=7, block_end=19, start_percent=0.0, end_percent=0.6) is True
        assert v1.VALIDATE_INPUTS(block_start=9, block_end=8, start_percent=0.0, end_percent=0.6) == (
            f"{schema.display_name}: block_end must be -1 (through the last block) or at least block_start (9), got 8")
        assert "start_percent must not exceed end_percent (0.6), got 0.7" in v1.VALIDATE_INPUTS(
            block_start=7, block_end=19, start_percent=0.7, end_percent=0.6)
        assert v1.VALIDATE_INPUTS(block_start=7, block_end=None, start_percent=0.0, end_percent=0.6) is True  # linked


# ------------------------------------------------------------------------------ CVD_MODEL

def test_cvd_enhancer_leaves_the_input_model_untouched_and_shares_weights(model):
    patched = _enhanced(model, strength=0.3)
    assert model.unet.feature_cache is None
    assert isinstance(patched.unet.feature_cache, FeatureCacheConfig) and patched.unet.feature_cache.strength == 0.3
    assert patched is not model and patched.unet is not model.unet
    assert patched.unet.unet is model.unet.unet and patched.pose_encoder is model.pose_encoder  # no weight copy
    assert dict(patched.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert all(a is b for a, b in zip(patched.parameters(), model.parameters()))
    again = _enhanced(patched, strength=0.0)  # re-patching a patched model replaces its setting
    assert again.unet.feature_cache.strength == 0.0 and patched.unet.feature_cache.strength == 0.3


def test_cvd_strength_zero_is_identical_and_positive_strength_changes(model, inputs, plain):
    assert torch.equal(_predict(_enhanced(model, strength=0.0, end_percent=1.0), inputs), plain)
    changed = _predict(_enhanced(model, strength=0.3), inputs)
    assert torch.isfinite(changed).all()
    assert (changed - plain).abs().max() > 1e-4
    assert torch.equal(_predict(model, inputs), plain)  # the original still gives the unpatched output


def test_cvd_state_does_not_leak_between_calls(model, inputs):
    patched = _enhanced(model, strength=0.3, window_mode="sliding")
    first = _predict(patched, inputs)
    other = list(inputs)
    other[0] = inputs[0].flip(-1)
    _predict(patched, tuple(other))  # a different call in between
    assert torch.equal(_predict(patched, inputs), first)


def test_cvd_timestep_range_excludes_steps(model, inputs, plain):
    late_only = _enhanced(model, strength=0.3, start_percent=0.5, end_percent=1.0)
    assert torch.equal(_predict(late_only, inputs, t=EARLY_T), plain)  # fraction 0.1 is outside 0.5..1


@pytest.fixture(scope="module")
def cfg_inputs():
    """A guidance batch in the sampler's layout: rows (view 0 uncond, view 0 cond, view 1 uncond, view 1 cond),
    partners keep the branch; row_kinds 1 = uncond, 0 = cond."""
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, FRAMES, LATENT, LATENT, generator=g).repeat_interleave(2, dim=0)
    text = torch.randn(4, 77, 32, generator=g)
    plucker = torch.randn(2, 6, FRAMES, 8 * LATENT, 8 * LATENT, generator=g).repeat_interleave(2, dim=0)
    f_mats = (1e-3 * torch.randn(2, FRAMES, 3, 3, generator=g)).repeat_interleave(2, dim=0)
    return latents, text, plucker, f_mats, torch.tensor([2, 3, 0, 1]), [1, 0, 1, 0]


def _predict_cfg(model, cfg_inputs):
    latents, text, plucker, f_mats, partner, kinds = cfg_inputs
    return model.predict_noise(latents, EARLY_T, text, plucker, f_mats, partner, row_kinds=kinds)


@pytest.mark.parametrize("apply_to,blended_rows", [("cond", [1, 3]), ("uncond", [0, 2]), ("both", [0, 1, 2, 3])])
def test_cvd_apply_to_blends_only_its_guidance_branch(model, cfg_inputs, apply_to, blended_rows):
    plain = _predict_cfg(model, cfg_inputs)
    out = _predict_cfg(_enhanced(model, strength=0.3, apply_to=apply_to), cfg_inputs)
    for row in range(4):
        if row in blended_rows:
            assert (out[row] - plain[row]).abs().max() > 1e-4, f"row {row} should be blended"
        else:
            assert torch.equal(out[row], plain[row]), f"row {row} must stay bit-identical"


def test_cvd_apply_to_one_branch_needs_the_row_kinds(model, inputs):
    with pytest.raises(ValueError, match="needs to know which batch rows are conditional"):
        _predict(_enhanced(model, strength=0.3, apply_to="cond"), inputs)
    latents, text, plucker, f_mats, partner = inputs
    with pytest.raises(ValueError, match="row_kinds must give one guidance branch per batch row \\(2 values"):
        model.predict_noise(latents, EARLY_T, text, plucker, f_mats, partner, row_kinds=[0, 2])


def _sample(model, guidance_scale):
    from cvd_core.sampling import DDIMScheduler, sample_multiview

    g = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 4, FRAMES, LATENT, LATENT, generator=g)
    cond, uncond = torch.randn(2, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    plucker = torch.randn(2, 6, FRAMES, 8 * LATENT, 8 * LATENT, generator=g)
    f_mat = 1e-3 * torch.randn(FRAMES, 3, 3, generator=g)
    return sample_multiview(model, latents, cond, uncond, plucker, {(0, 1): f_mat},
                            DDIMScheduler(num_inference_steps=2), guidance_scale=guidance_scale, seed=0)


def test_cvd_sampler_tells_the_cache_which_rows_are_uncond(model):
    """Without guidance no uncond rows run, so an uncond-only cache changes nothing; a cond-only one does."""
    plain = _sample(model, guidance_scale=1.0)
    assert torch.equal(_sample(_enhanced(model, strength=0.3, end_percent=1.0, apply_to="uncond"), 1.0), plain)
    cond_only = _sample(_enhanced(model, strength=0.3, end_percent=1.0, apply_to="cond"), 1.0)
    assert (cond_only - plain).abs().max() > 1e-4
    guided = _sample(model, guidance_scale=7.5)
    for apply_to in ("cond", "uncond"):
        assert (_sample(_enhanced(model, strength=0.3, end_percent=1.0, apply_to=apply_to), 7.5)
                - guided).abs().max() > 1e-4


def _blended_blocks(patched, inputs, monkeypatch):
    states = []

    class Recording(FeatureCacheState):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            states.append(self)

    monkeypatch.setattr(network, "FeatureCacheState", Recording)
    _predict(patched, inputs)
    assert len(states) == 1
    return states[0].blended_blocks


def test_cvd_blends_the_same_blocks_as_the_comfyui_patches(model, inputs, monkeypatch):
    """Default range 7-19 on the SD1.5 layout: windows {7,8} {9,10,11} | {12,13,14} {15,16,17} {18,19}; a
    block is blended when its window holds more than its own input."""
    expected = [9, 11, 12, 14, 15, 17, 18]
    assert _blended_blocks(_enhanced(model), inputs, monkeypatch) == expected
    assert _comfyui_protocol_blends(FeatureCacheConfig(**_core_kwargs())) == expected


def test_motion_module_windows_stay_inside_one_block(model, inputs, monkeypatch):
    """Range 7-19: down block 2 = layers 7, 8; down 3 = 10, 11; up 0 = 13-15; up 1 = 16-18; up 2 starts at 19.
    A layer's motion module is blended when an earlier layer of its block left an output."""
    patched = _enhanced(model, cache_target="motion_modules")
    assert _blended_blocks(patched, inputs, monkeypatch) == [8, 11, 14, 15, 17, 18]


def test_motion_module_blend_is_the_official_formula(model, inputs):
    """Layer 8's motion-module input = 0.3 x (layer 7's motion-module output) + 0.7 x (its own input)."""
    patched = _enhanced(model, strength=0.3, preserve_norm=False, cache_target="motion_modules")
    block = patched.unet.unet.down_blocks[2]
    seen = {}

    def keep(name, value):  # hooks must return None, or they replace the module's output
        seen.setdefault(name, value[0] if isinstance(value, tuple) else value)

    hooks = [block.motion_modules[0].register_forward_hook(lambda m, a, out: keep("out7", out)),
             block.motion_modules[1].register_forward_pre_hook(lambda m, a: keep("in8", a)),
             block.attentions[1].register_forward_hook(lambda m, a, out: keep("attn8", out))]
    try:
        _predict(patched, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    own = seen["attn8"].reshape(2, FRAMES, *seen["attn8"].shape[1:]).transpose(1, 2)  # (b f) c h w -> b c f h w
    torch.testing.assert_close(seen["in8"], 0.3 * seen["out7"] + 0.7 * own, rtol=0, atol=1e-6)


def test_motion_module_target_differs_from_layer_target(model, inputs, plain):
    layers = _predict(_enhanced(model, strength=0.3), inputs)
    motion = _predict(_enhanced(model, strength=0.3, cache_target="motion_modules"), inputs)
    assert (motion - plain).abs().max() > 1e-4 and (motion - layers).abs().max() > 1e-4
    assert torch.equal(_predict(_enhanced(model, strength=0.0, cache_target="motion_modules"), inputs), plain)
    with pytest.raises(NodeInputError, match="target must be one of"):
        _enhanced(model, cache_target="attention")


def _core_kwargs():
    knobs = knob_values()
    return dict(window=knobs["window"], mode=knobs["window_mode"], strength=knobs["strength"],
                block_start=knobs["block_start"], block_end=knobs["block_end"], preserve_norm=True)


def _comfyui_protocol_blends(cfg):
    """Replay ComfyUI's SD1.5 block-patch calls (shapes of an 8x8 latent) and return the blended blocks."""
    from cvd_core.feature_cache import make_unet_patches

    patches = make_unet_patches(cfg)
    down_sizes = [8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1]  # output size of input blocks 0-11
    up_sizes = [1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8]  # input size of output blocks 1-11 (block 0: the middle, 1)
    options = {}
    for index, size in enumerate(down_sizes):
        options["block"] = ("input", index)
        patches[INPUT_PATCH_NAME](torch.randn(1, 4, size, size), options)
    for index, size in enumerate([1] + up_sizes):
        options["block"] = ("output", index)
        patches[OUTPUT_PATCH_NAME](torch.randn(1, 4, size, size), torch.randn(1, 4, size, size), options)
    forward = next(v for k, v in options.items() if k != "block")
    return forward.state.blended_blocks


def test_cvd_rejects_what_it_cannot_do(model):
    with pytest.raises(NodeInputError, match="block_start 30 is past the model's last block \\(24\\)"):
        _enhanced(model, block_start=30, block_end=-1)
    with pytest.raises(NodeInputError, match="expected a CVD_MODEL"):
        ENHANCER_CVD.run(model=object(), **knob_values())
    assert _enhanced(model, block_end=40).unet.feature_cache.block_end == -1  # past the end = the last block


# ------------------------------------------------------------------------------ core MODEL (stand-in patcher)

class _Sampling:
    @staticmethod
    def percent_to_sigma(percent):
        return 14.6 * (1.0 - percent) + 0.03


class _BaseModel:
    def __init__(self, blocks=(12, 12)):
        self.diffusion_model = type("UNetModel", (), {"input_blocks": [None] * blocks[0], "middle_block": None,
                                                     "output_blocks": [None] * blocks[1]})()
        self.model_sampling = _Sampling()


class _Patcher:
    """What the node uses of ComfyUI's ``ModelPatcher``: clone (deep-copied options) and set_model_patch."""

    def __init__(self, base):
        self.model = base
        self.model_options = {"transformer_options": {}}

    def clone(self):
        other = _Patcher(self.model)
        other.model_options = copy.deepcopy(self.model_options)
        return other

    def set_model_patch(self, patch, name):
        patches = self.model_options["transformer_options"].setdefault("patches", {})
        patches[name] = patches.get(name, []) + [patch]


def test_core_enhancer_patches_a_clone_only():
    original = _Patcher(_BaseModel())
    patched, = ENHANCER.run(model=original, **knob_values(strength=0.2)).values
    assert original.model_options == {"transformer_options": {}}
    assert set(patched.model_options["transformer_options"]["patches"]) == {INPUT_PATCH_NAME, OUTPUT_PATCH_NAME}
    cache = patched.model_options["transformer_options"]["patches"][INPUT_PATCH_NAME][0].cache
    assert cache.cfg.strength == 0.2 and cache.cfg.block_end == 19
    assert cache.sigma_range.sigma_start is None and cache.sigma_range.sigma_end == pytest.approx(14.6 * 0.4 + 0.03)
    again, = ENHANCER.run(model=patched, **knob_values()).values  # chaining keeps separate states
    assert len(again.model_options["transformer_options"]["patches"][INPUT_PATCH_NAME]) == 2
    assert len(patched.model_options["transformer_options"]["patches"][INPUT_PATCH_NAME]) == 1


def test_core_enhancer_fits_the_block_range_to_the_model():
    sdxl = _Patcher(_BaseModel(blocks=(9, 9)))  # 19 blocks: the default block_end 19 means 'the last'
    patched, = ENHANCER.run(model=sdxl, **knob_values()).values
    assert patched.model_options["transformer_options"]["patches"][INPUT_PATCH_NAME][0].cache.cfg.block_end == -1
    with pytest.raises(NodeInputError, match="block_start 19 is past the model's last block \\(18\\)"):
        ENHANCER.run(model=sdxl, **knob_values(block_start=19))


def test_core_enhancer_refuses_non_unet_models():
    flux = _Patcher(_BaseModel())
    flux.model.diffusion_model = type("Flux", (), {})()
    with pytest.raises(NodeInputError, match="patches SD-family UNets.*network is Flux"):
        ENHANCER.run(model=flux, **knob_values())
