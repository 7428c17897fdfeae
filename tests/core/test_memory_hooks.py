"""The core's hooks for a memory manager (ComfyUI's model management lives in nodes/_managed.py):
a settable compute device, CV-VAE convs that read their weights through one method, CV-VAE tiling
sized from a given budget plus its memory estimate, LoRA factors and targets without merging, and
the feature-cache check on its own. Each hook must leave today's results unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cvd_core.cvvae import TilingConfig, decode_video, load_cvvae, memory_estimate, usable_bytes, write_tiny_cvvae
from cvd_core.cvvae.layers import CausalConv3d, Conv2dWithExtraDim, Conv3d
from cvd_core.cvvae.memory import CPU_FRACTION, CUDA_FRACTION
from cvd_core.dtypes import ParameterPlacement
from cvd_core.mcm import load_peft_adapter, lora_deltas, lora_factors, lora_targets, merge_lora_into_module
from tests.core.test_mcm_lora import SPATIAL, MOTION_DIFFUSERS, _tree, _write_adapter


class Placed(ParameterPlacement, nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, dtype=torch.float16))


def test_device_is_the_parameters_until_a_manager_sets_it():
    model = Placed()
    assert model.device == torch.device("cpu") and model.dtype == torch.float16
    model.device = "meta"  # e.g. ComfyUI's load() while part of the weights still streams from the CPU
    assert model.device == torch.device("meta") and model.weight.device.type == "cpu"
    model.device = None
    assert model.device == torch.device("cpu")


class Streamed:
    """A subclass that hands over other weights, as a low-VRAM manager does (here: doubled)."""

    def weights_for(self, x):
        return self.weight * 2, self.bias * 2


@pytest.mark.parametrize("cls,shape", [(Conv3d, (1, 3, 4, 6, 6)), (CausalConv3d, (1, 3, 4, 6, 6)),
                                       (Conv2dWithExtraDim, (1, 3, 4, 6, 6)), (Conv2dWithExtraDim, (2, 3, 6, 6))])
def test_cvvae_convs_compute_with_the_weights_they_are_handed(cls, shape):
    torch.manual_seed(0)
    conv = cls(3, 5, 3, padding=1)
    x = torch.randn(shape)
    weight, bias = conv.weights_for(x)
    assert weight is conv.weight and bias is conv.bias  # by default: its own parameters
    with torch.no_grad():
        plain = conv(x)
        conv.__class__ = type("StreamedConv", (Streamed, cls), {})
        doubled = conv(x)
    # conv(x; 2W, 2b) is exactly 2 conv(x; W, b) in binary floating point: the handed weights are used
    assert torch.equal(doubled, 2 * plain)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    return load_cvvae(str(write_tiny_cvvae(tmp_path_factory.mktemp("vae"), variant="z4")), dtype="fp32")


def test_cvvae_auto_tiling_takes_the_given_budget_instead_of_measuring(tiny_vae, monkeypatch):
    z = torch.randn(1, 4, 3, 8, 8)
    small = 1  # far below one tile: the smallest plan
    monkeypatch.setattr("cvd_core.cvvae.tiling.free_memory_bytes", lambda device: small)
    measured = decode_video(tiny_vae, z, TilingConfig("auto"))

    def no_probe(device):
        raise AssertionError("a given budget must not be replaced by a measurement")

    monkeypatch.setattr("cvd_core.cvvae.tiling.free_memory_bytes", no_probe)
    assert torch.equal(decode_video(tiny_vae, z, TilingConfig("auto"), memory_budget=small), measured)
    whole = decode_video(tiny_vae, z, TilingConfig("none"))
    assert torch.equal(decode_video(tiny_vae, z, TilingConfig("auto"), memory_budget=1 << 50), whole)


def test_cvvae_memory_estimate_orders_the_plans(tiny_vae):
    shape = (1, 4, 9, 32, 32)  # latents: 33 frames of 256 px (auto: 17-frame windows)
    untiled, least_untiled = memory_estimate(tiny_vae, shape, "decode", TilingConfig("none"))
    manual, least_manual = memory_estimate(tiny_vae, shape, "decode", TilingConfig("manual", 64, 0.25, 4))
    auto, least_auto = memory_estimate(tiny_vae, shape, "decode", TilingConfig("auto", temporal_chunk=16))
    assert untiled == least_untiled and manual == least_manual  # fixed plans: one figure
    assert untiled > auto >= least_auto and manual < untiled and least_auto <= manual
    assert usable_bytes(1000, torch.device("cpu")) == int(1000 * CPU_FRACTION)
    assert usable_bytes(1000, torch.device("cuda")) == int(1000 * CUDA_FRACTION)


def test_lora_factors_multiply_out_to_the_deltas_and_target_what_merge_merges(tmp_path):
    root = _tree({**SPATIAL, "down_blocks.0.missing_here": lambda: nn.Linear(4, 4)})
    _write_adapter(tmp_path / "a", root, list(SPATIAL) + ["down_blocks.0.missing_here"], rank=4, alpha=8)
    state_dict, config = load_peft_adapter(tmp_path / "a")
    factors, deltas = lora_factors(state_dict, config), lora_deltas(state_dict, config)
    assert set(factors) == set(deltas)
    for path, f in factors.items():
        assert torch.equal(f.delta(path), deltas[path]) and f.delta_shape == deltas[path].shape
        assert f.scale == 8 / 4 and f.rank == 4
    target_root = _tree(SPATIAL)  # without the extra module: it must be reported as missing by both
    targets, planned = lora_targets(target_root, {p: f.delta_shape for p, f in factors.items()})
    merged = merge_lora_into_module(target_root, deltas)
    assert sorted(targets) == sorted(merged.applied) == sorted(planned.applied) == sorted(SPATIAL)
    assert planned.skipped == merged.skipped and planned.skipped[0][1].startswith("missing")
    assert MOTION_DIFFUSERS not in targets


def test_feature_cache_check_raises_what_the_copy_raises():
    from cvd_core.cvd.network import CVDUNet
    from cvd_core.cvd.tiny import tiny_unet_config
    from cvd_core.feature_cache import FeatureCacheConfig

    unet = CVDUNet(tiny_unet_config(32, 32))
    for bad, error in (("not a config", TypeError), (FeatureCacheConfig(block_start=99), ValueError)):
        with pytest.raises(error) as checked:
            unet.check_feature_cache(bad)
        with pytest.raises(error) as copied:
            unet.with_feature_cache(bad)
        assert str(checked.value) == str(copied.value)
    with pytest.raises(ValueError, match="target"):
        unet.check_feature_cache(None, "everything")
    unet.check_feature_cache(FeatureCacheConfig(), "motion_modules")  # valid: no error, nothing set
    assert unet.feature_cache is None
