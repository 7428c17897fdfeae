"""Sampler and MCM node functions called directly (no server) with the tiny CVD model.

Sizes are minimal (frames 2, 16x16 pixels, width-32 UNet) so that every denoiser call is cheap.
"""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from cvd_core.camera import make_preset_rig
from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from nodes._comfy import NodeInputError
from nodes._schema import run_checked
from nodes.mcm import LORA_CVD, SCHEDULER, core_model_patches, merged_copy, schedule_sigmas
from nodes.sampling import SAMPLER
from nodes.vae import DECODE, TO_IMAGE_LATENTS
from tests._shared import shared_fixture

TEXT = 32  # the tiny model's cross-attention width
SIZE, FRAMES = 64, 2  # 64 px: the pose encoder halves 8x8-unshuffled maps three times


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_tiny_cvd_files(tmp_path_factory.mktemp("cvd"), seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_files):
    return load_cvd_model(**tiny_files, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def tiny_model64(tiny_files):
    """For max_batch invariance: in float32 differently sized batches round differently from CPU to CPU
    (1e-5, amplified by cfg); a float64 model makes each row's prediction the same to ~1e-16, so the
    sampler's float32 latents come out equal, and any difference is a real one (> 1e-2 for a bug)."""
    return load_cvd_model(**tiny_files, dtype=torch.float64, device="cpu")


def _assert_same(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


def _rig(views, frames=FRAMES, size=SIZE):
    return make_preset_rig("circle", views, frames, size, size)


def _cond(seed, width=TEXT, tokens=77, batch=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, width, generator=g), {"pooled_output": None}]]


def _sample(model, views=2, **overrides):
    kwargs = dict(cvd_model=model, cameras=_rig(views), positive=_cond(1), negative=_cond(2), seed=7, steps=1,
                  cfg=8.5, scheduler="ddim", strategy="random", recurrence=1, max_batch=0, denoise=1.0)
    kwargs.update(overrides)
    latent, = run_checked(SAMPLER, kwargs).values  # the node's run path: input checks, then run
    return latent


def test_output_latent_convention(tiny_model):
    latent = _sample(tiny_model, views=2)
    assert latent["samples"].shape == (2, 4, FRAMES, SIZE // 8, SIZE // 8)
    assert latent["views"] == 2 and latent["cvd_temporal_compression"] == 1 and latent["cvd_frames"] == FRAMES
    assert latent["cvd_latent_scale"] == pytest.approx(0.18215) and latent["cvd_latent_shift"] == 0.0
    assert torch.isfinite(latent["samples"]).all()
    image_latents, = TO_IMAGE_LATENTS.run(latent=latent).values  # one SD image latent per frame
    assert image_latents["samples"].shape == (2 * FRAMES, 4, SIZE // 8, SIZE // 8)


def test_same_seed_same_latent_and_seed_matters(tiny_model):
    a = _sample(tiny_model, views=3, steps=2)["samples"]
    b = _sample(tiny_model, views=3, steps=2)["samples"]
    c = _sample(tiny_model, views=3, steps=2, seed=8)["samples"]
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("views", [3])  # odd: one view has two partners
def test_max_batch_invariance_through_the_node(tiny_model64, views):
    auto = _sample(tiny_model64, views=views, max_batch=0, steps=2)["samples"]
    tight = _sample(tiny_model64, views=views, max_batch=2, steps=2)["samples"]
    odd = _sample(tiny_model64, views=views, max_batch=5, steps=2)["samples"]
    # Same rows, same noise, same accumulation order: a different seed differs by > 1e-2.
    _assert_same(tight, auto)
    _assert_same(odd, auto)


def test_one_view_is_plain_cameractrl(tiny_model):
    latent = _sample(tiny_model, views=1, max_batch=1)
    assert latent["samples"].shape[0] == 1 and torch.isfinite(latent["samples"]).all()


def test_predict_noise_without_partner_skips_the_cvsms(tiny_model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=g)
    text = torch.randn(1, 77, TEXT, generator=g)
    plucker = torch.randn(1, 6, FRAMES, SIZE, SIZE, generator=g)
    eps = tiny_model.predict_noise(x, torch.tensor(500), text, plucker)  # F_mats, partner omitted
    tiny_model.unet.with_cvsm = False
    try:
        plain = tiny_model.predict_noise(x, torch.tensor(500), text, plucker)
    finally:
        tiny_model.unet.with_cvsm = True
    torch.testing.assert_close(eps, plain)
    with pytest.raises(ValueError, match="go together"):
        tiny_model.predict_noise(x, torch.tensor(500), text, plucker, F_mats=torch.zeros(1, FRAMES, 3, 3))


def test_per_view_prompts_as_a_list_equal_a_batch_and_change_the_result(tiny_model):
    same = _sample(tiny_model, views=2, cfg=1.0)["samples"]
    per_view = _sample(tiny_model, views=2, cfg=1.0, positive=_cond(1) + _cond(3))["samples"]
    batch = [[torch.cat([_cond(1)[0][0], _cond(3)[0][0]]), {}]]
    torch.testing.assert_close(per_view, _sample(tiny_model, views=2, cfg=1.0, positive=batch)["samples"])
    assert (per_view - same).abs().max() > 1e-4


def test_long_prompts_of_different_lengths_are_repeated_to_a_common_length(tiny_model):
    latent = _sample(tiny_model, views=2, positive=_cond(1, tokens=154), negative=_cond(2, tokens=77))
    assert torch.isfinite(latent["samples"]).all()


def test_conditioning_width_mismatch_names_both_widths(tiny_model):
    with pytest.raises(NodeInputError, match=r"width 768.*width 32"):
        _sample(tiny_model, positive=_cond(1, width=768))


def test_wrong_number_of_per_view_prompts(tiny_model):
    with pytest.raises(NodeInputError, match="holds 2 conditionings but the cameras have 3 views"):
        _sample(tiny_model, views=3, positive=_cond(1) + _cond(2))


def test_too_many_frames_names_the_limit(tiny_model):
    with pytest.raises(NodeInputError, match=r"frames must be at most \d+ \(the motion modules.*got 40"):
        SAMPLER.run(cvd_model=tiny_model, cameras=_rig(2, frames=40), positive=_cond(1), negative=_cond(2), seed=0,
                    steps=1, cfg=1.0, scheduler="ddim", strategy="random", recurrence=1, max_batch=0, denoise=1.0)


def test_size_must_be_a_multiple_of_8():
    from cvd_core.camera import CameraError
    with pytest.raises(CameraError, match="multiple of 8"):
        _rig(2, size=20)


def test_denoise_below_one_needs_a_latent_and_uses_it(tiny_model):
    with pytest.raises(NodeInputError, match="denoise must be 1 without a latent to start from"):
        _sample(tiny_model, denoise=0.5)
    start = _sample(tiny_model, views=2, cfg=1.0)
    a = _sample(tiny_model, views=2, cfg=1.0, steps=2, latent=start, denoise=0.5)["samples"]
    zero = dict(start, samples=torch.zeros_like(start["samples"]))
    b = _sample(tiny_model, views=2, cfg=1.0, steps=2, latent=zero, denoise=0.5)["samples"]
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(NodeInputError, match="latent must be a 5-D video latent"):
        _sample(tiny_model, views=3, steps=2, latent=start, denoise=0.5)


def test_mcm_with_sigmas_matches_mcm_with_steps(tiny_model):
    sigmas, = SCHEDULER.run(steps=2, beta_schedule="auto", denoise=1.0).values
    from_sigmas = _sample(tiny_model, scheduler="mcm", cfg=1.0, sigmas=sigmas)["samples"]
    from_steps = _sample(tiny_model, scheduler="mcm", cfg=1.0, steps=2)["samples"]
    torch.testing.assert_close(from_sigmas, from_steps)
    with pytest.raises(NodeInputError, match="scheduler must be mcm when sigmas"):
        _sample(tiny_model, scheduler="ddim", sigmas=sigmas)


def test_progress_counts_denoiser_calls_and_cancel_stops(tiny_model, monkeypatch):
    import nodes.sampling as sampling
    from cvd_core.progress import CallbackProgress

    seen = []

    class Cancelled(Exception):
        pass

    def update(done, total):
        seen.append((done, total))
        if done == 2:
            raise Cancelled()

    monkeypatch.setattr(sampling, "progress_bar", lambda unique_id=None: CallbackProgress(update))
    with pytest.raises(Cancelled):
        _sample(tiny_model, views=4, max_batch=2, steps=3, cfg=1.0)
    # 4 views, random pairing: 2 pairs per step, max_batch 2 -> 2 calls per step, 3 steps
    assert seen[-1] == (2, 6)


def test_cvvae_decode_refuses_per_frame_latents(tiny_model):
    latent = _sample(tiny_model, views=1, max_batch=1)
    with pytest.raises(NodeInputError, match="one latent frame per video frame"):
        DECODE.run(cvvae=object(), latent=latent, tiling="auto", tile_size=0, tile_overlap=0.25, temporal_chunk=0)


# ------------------------------------------------------------------------------ MCM nodes

@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_mcm_scheduler_sigmas_equal_the_reference(steps):
    reference = json.loads(shared_fixture("mcm/reference_timesteps.json").read_text())["bases"]
    for base, entry in reference.items():
        schedule = entry["scheduler_config"]["beta_schedule"]
        expected = entry["by_steps"][str(steps)]["sigmas_kdiff"]
        sigmas, = SCHEDULER.run(steps=steps, beta_schedule=schedule, denoise=1.0).values
        assert sigmas.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6), base
        if schedule == "linear":  # auto without a model = AnimateDiff/CVD's linear schedule
            auto, = SCHEDULER.run(steps=steps, beta_schedule="auto", denoise=1.0).values
            assert torch.equal(auto, sigmas)


def test_mcm_scheduler_uses_the_models_own_sigma_table():
    class Sampling:  # ComfyUI ModelSamplingDiscrete stand-in: a table of sigma(t) = t / 100 + 0.01
        sigmas = torch.arange(1000, dtype=torch.float32) / 100 + 0.01

        def sigma(self, timestep):
            return self.sigmas[timestep.long()]

    class Model:
        class model:
            model_sampling = Sampling()

    sigmas, _ = schedule_sigmas(4, "auto", 1.0, Model())
    assert sigmas.tolist() == pytest.approx([10.0, 7.6, 5.0, 2.6, 0.0])
    linear, _ = schedule_sigmas(4, "linear", 1.0, Model())  # an explicit schedule ignores the model
    assert float(linear[0]) == pytest.approx(25.14612, abs=1e-4)


def _peft_adapter(folder, model, rank=2, seed=0):
    """A tiny PEFT adapter in MCM's layout for two spatial layers and one motion-module layer."""
    root = model.unet.unet
    g = torch.Generator().manual_seed(seed)
    targets = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
               "down_blocks.0.resnets.0.conv1",
               "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q",  # diffusers motion naming
               "down_blocks.0.attentions.0.not_a_layer"]
    state = {}
    for path in targets:
        module_path = path.replace("motion_modules.0.transformer_blocks", "motion_modules.0.temporal_transformer."
                                   "transformer_blocks").replace("attn1.to_q", "attention_blocks.0.to_q") \
            if "motion" in path else path
        try:
            weight = root.get_submodule(module_path).weight
        except AttributeError:
            weight = torch.zeros(8, 8)
        a_shape = (rank, *weight.shape[1:]) if weight.dim() == 4 else (rank, weight.shape[1])
        b_shape = (weight.shape[0], rank, 1, 1) if weight.dim() == 4 else (weight.shape[0], rank)
        state[f"base_model.model.{path}.lora_A.weight"] = torch.randn(a_shape, generator=g)
        state[f"base_model.model.{path}.lora_B.weight"] = torch.randn(b_shape, generator=g)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": rank, "target_modules": []}))
    return folder


def test_lora_merge_on_a_copy_leaves_the_input_untouched(tiny_model, tmp_path, monkeypatch):
    folder = _peft_adapter(tmp_path / "mcm" / "tiny-mcm", tiny_model)
    import nodes.mcm as mcm
    monkeypatch.setattr(mcm, "resolve_model_entry", lambda kind, name: str(tmp_path / "mcm" / name))
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    merged, text = LORA_CVD.run(cvd_model=tiny_model, lora_name="tiny-mcm", strength=1.0).values
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "merged into 3 modules, skipped 1" in text and "not_a_layer" in text
    merged_sd = merged.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], merged_sd[k]))
    assert changed == ["unet.unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                       "unet.unet.down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
                       "attention_blocks.0.to_q.weight",
                       "unet.unet.down_blocks.0.resnets.0.conv1.weight"]
    # unpatched parameters are shared, not copied
    assert merged.unet.unet.conv_in.weight is tiny_model.unet.unet.conv_in.weight
    assert folder.exists()


def test_lora_merge_with_nothing_matching_is_an_error(tiny_model, tmp_path, monkeypatch):
    folder = tmp_path / "bad"
    folder.mkdir()
    save_file({"base_model.model.foo.bar.lora_A.weight": torch.zeros(2, 4),
               "base_model.model.foo.bar.lora_B.weight": torch.zeros(4, 2)}, str(folder / "adapter_model.safetensors"))
    import nodes.mcm as mcm
    monkeypatch.setattr(mcm, "resolve_model_entry", lambda kind, name: str(folder))
    with pytest.raises(NodeInputError, match="no layer of 'bad' matched"):
        LORA_CVD.run(cvd_model=tiny_model, lora_name="bad", strength=1.0)


def test_core_model_patches_map_diffusers_paths_to_ldm_keys():
    deltas = {"down_blocks.0.attentions.0.proj_in": torch.ones(4, 4),  # linear delta -> 1x1 conv weight
              "down_blocks.0.resnets.0.conv1": torch.ones(4, 4, 3, 3),
              "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q": torch.ones(4, 4)}
    mapping = {"down_blocks.0.attentions.0.proj_in.weight": "input_blocks.1.1.proj_in.weight",
               "down_blocks.0.resnets.0.conv1.weight": "input_blocks.1.0.in_layers.2.weight"}
    shapes = {"diffusion_model.input_blocks.1.1.proj_in.weight": torch.Size([4, 4, 1, 1]),
              "diffusion_model.input_blocks.1.0.in_layers.2.weight": torch.Size([4, 4, 3, 3])}
    patches, report = core_model_patches(deltas, mapping, shapes)
    assert set(patches) == set(shapes)
    assert patches["diffusion_model.input_blocks.1.1.proj_in.weight"][0].shape == (4, 4, 1, 1)
    assert report.skipped[0][1].startswith("motion module")


def test_merged_copy_is_deterministic(tiny_model, tmp_path):
    from cvd_core.mcm import load_peft_adapter, lora_deltas
    folder = _peft_adapter(tmp_path / "a", tiny_model)
    deltas = lora_deltas(*load_peft_adapter(folder))
    one, _ = merged_copy(tiny_model, deltas, 0.5)
    two, _ = merged_copy(tiny_model, deltas, 0.5)
    key = "unet.unet.down_blocks.0.resnets.0.conv1.weight"
    assert torch.equal(one.state_dict()[key], two.state_dict()[key])
    expected = tiny_model.state_dict()[key] + 0.5 * deltas["down_blocks.0.resnets.0.conv1"]
    torch.testing.assert_close(one.state_dict()[key], expected)


# ------------------------------------------------------------------------------ regional prompts (layout)

def _layout(views=2, frames=FRAMES, size=SIZE, mask_size=None):
    from cvd_core.scene import decompose_prompt, project_layout
    plan = decompose_prompt("a red car drives past a tree in a park", frames=frames)
    return project_layout(plan, _rig(views, frames=frames, size=size), mask_size or size, mask_size or size)


def test_entity_prompts_change_the_result_only_inside_their_masks(tiny_model):
    layout = _layout()
    assert layout.entity_ids == ["car", "tree"]
    entity_prompts = _cond(11) + _cond(12)
    common = dict(views=2, max_batch=2)  # same call sizes for the plain rows -> bitwise comparable
    plain = _sample(tiny_model, **common)["samples"]
    regional = _sample(tiny_model, layout=layout, entity_prompts=entity_prompts, **common)["samples"]
    union = sum(layout.masks[e] for e in layout.entity_ids).view(2, FRAMES, 1, SIZE, SIZE)
    # a latent pixel is outside when no image pixel of its 8x8 cell is covered (area resize)
    outside = (torch.nn.functional.avg_pool2d(union.flatten(0, 1), 8) == 0).view(2, FRAMES, 1, SIZE // 8, SIZE // 8)
    outside = outside.permute(0, 2, 1, 3, 4).expand_as(plain)
    assert 0 < int(outside[:, 0].sum()) < outside[:, 0].numel()
    assert (regional - plain)[outside].abs().max() <= 1e-6  # one step: x_0 is element-wise in eps
    assert (regional - plain)[~outside].abs().mean() > 1e-3
    # each entity's own prompt matters (swap the prompts: a different result inside)
    swapped = _sample(tiny_model, layout=layout, entity_prompts=_cond(12) + _cond(11), **common)["samples"]
    assert (swapped - regional)[~outside].abs().max() > 1e-3


def test_regional_max_batch_invariance_and_latent_size_layout(tiny_model, tiny_model64):
    kw = dict(views=2, cfg=1.0, layout=_layout(), entity_prompts=_cond(11) + _cond(12))
    auto = _sample(tiny_model64, max_batch=0, **kw)["samples"]
    tight = _sample(tiny_model64, max_batch=2, **kw)["samples"]
    _assert_same(tight, auto)
    small = _sample(tiny_model, max_batch=2, **dict(kw, layout=_layout(mask_size=SIZE // 8)))["samples"]
    assert torch.isfinite(small).all()


def test_regional_errors_name_the_rule(tiny_model):
    layout = _layout()
    with pytest.raises(NodeInputError, match=r"entity_prompts holds 1 conditionings but the layout has 2 entities "
                                             r"\(car, tree\)"):
        _sample(tiny_model, layout=layout, entity_prompts=_cond(11))
    with pytest.raises(NodeInputError, match="entity_prompts must be connected too"):
        _sample(tiny_model, layout=layout)
    with pytest.raises(NodeInputError, match="layout must be connected too"):
        _sample(tiny_model, entity_prompts=_cond(11))
    with pytest.raises(NodeInputError, match=r"differ in views 2 vs 3"):
        _sample(tiny_model, views=3, layout=layout, entity_prompts=_cond(11) + _cond(12))
    with pytest.raises(NodeInputError, match=r"differ in size 32x32 vs 64x64"):
        _sample(tiny_model, layout=_layout(mask_size=32), entity_prompts=_cond(11) + _cond(12))
    with pytest.raises(NodeInputError, match=r"entity_prompts has text width 768"):
        _sample(tiny_model, layout=layout, entity_prompts=_cond(11, width=768) + _cond(12, width=768))
    with pytest.raises(NodeInputError, match="layout must be a CVD_LAYOUT"):
        _sample(tiny_model, layout="not a layout", entity_prompts=_cond(11))


# ------------------------------------------------------------------------------ sampling previews

class _StubPreviewer:
    def __init__(self, fail=False):
        self.fail = fail
        self.seen = []

    def decode_latent_to_preview_image(self, preview_format, x0):
        if self.fail:
            raise RuntimeError("decoder broke")
        self.seen.append(x0.clone())
        return ("JPEG", f"image {len(self.seen)}", 512)


def _stub_comfy_previews(monkeypatch, previewer):
    """``comfy.latent_formats`` and ``latent_preview`` as ComfyUI has them, with ``previewer`` (None = off)."""
    import sys
    import types

    formats = types.ModuleType("comfy.latent_formats")
    formats.SD15 = lambda: "sd15 format"
    comfy = types.ModuleType("comfy")
    comfy.latent_formats = formats
    preview = types.ModuleType("latent_preview")
    preview.get_previewer = lambda device, latent_format: previewer if latent_format == "sd15 format" else None
    for name, module in (("comfy", comfy), ("comfy.latent_formats", formats), ("latent_preview", preview)):
        monkeypatch.setitem(sys.modules, name, module)


class _PreviewProgress:
    def __init__(self):
        from cvd_core.progress import CallbackProgress

        self.inner = CallbackProgress(lambda done, total: None)
        self.previews = []

    def start(self, total):
        self.inner.start(total)

    def advance(self, n=1):
        self.inner.advance(n)

    def check(self):
        pass

    def show_preview(self, preview):
        self.previews.append((self.inner.done, preview))


def test_sampler_sends_a_frame_grid_of_view_0_every_step(tiny_model, monkeypatch):
    import nodes.sampling as sampling

    previewer, progress = _StubPreviewer(), _PreviewProgress()
    _stub_comfy_previews(monkeypatch, previewer)
    monkeypatch.setattr(sampling, "progress_bar", lambda unique_id=None: progress)
    latent = _sample(tiny_model, views=2, steps=3, cfg=1.0)
    assert [image for _, (_, image, _) in progress.previews] == ["image 1", "image 2", "image 3"]
    assert [done for done, _ in progress.previews] == [1, 2, 3]  # sent with the bar's position after each step
    channels, frames, h, w = latent["samples"].shape[1:]
    columns = math.ceil(math.sqrt(frames))
    assert previewer.seen[-1].shape == (1, channels, math.ceil(frames / columns) * h, columns * w)


def test_previews_off_or_failing_never_stop_sampling(tiny_model, monkeypatch, caplog):
    import nodes.sampling as sampling
    from nodes._comfy import sd15_latent_preview

    _stub_comfy_previews(monkeypatch, None)  # --preview-method none
    assert sd15_latent_preview(_PreviewProgress()) is None
    from cvd_core.progress import NullProgress
    assert sd15_latent_preview(NullProgress()) is None  # outside ComfyUI

    broken, progress = _StubPreviewer(fail=True), _PreviewProgress()
    _stub_comfy_previews(monkeypatch, broken)
    monkeypatch.setattr(sampling, "progress_bar", lambda unique_id=None: progress)
    with caplog.at_level("WARNING"):
        plain = _sample(tiny_model, views=2, steps=2, cfg=1.0)
    assert progress.previews == []
    assert sum("sampling preview failed" in r.message for r in caplog.records) == 1  # logged once per run
    monkeypatch.setattr(sampling, "progress_bar", lambda unique_id=None: _PreviewProgress())
    _stub_comfy_previews(monkeypatch, _StubPreviewer())
    assert torch.equal(_sample(tiny_model, views=2, steps=2, cfg=1.0)["samples"], plain["samples"])


def test_out_of_memory_says_what_to_lower_and_stays_an_out_of_memory_error(tiny_model, monkeypatch):
    import nodes.sampling as sampling

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr(sampling, "multiview_loop", exhausted)
    with pytest.raises(torch.OutOfMemoryError) as caught:  # the type ComfyUI recognizes (it then unloads models)
        _sample(tiny_model, views=3, max_batch=4)
    message = str(caught.value)
    assert "4 of 8 denoiser rows per call" in message  # 3 views: 2 pairs x 2 views x 2 guidance branches and "Tried to allocate 2.00 GiB" in message
    assert all(hint in message for hint in ("max_batch", "fp16", "--lowvram"))
    assert caught.value.__context__ is None  # raised outside the except block: the failed call's frames are gone
