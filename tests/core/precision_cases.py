"""Every core path computed in fp32 and in a half precision on one device (tiny random weights).

``test_half_precision.py`` asserts that each half-precision result lies within a bound of the fp32
result on the same device; ``docs/precision.md`` says how the bounds were derived. This module is
also the measuring tool behind them:

    python -m tests.core.precision_cases [--device cpu] [--dtypes bf16 fp16] [--seeds 0 1 2]

prints, per path and dtype, the relative error ``max|half - fp32| / max|fp32|`` and that error in
units of the dtype's unit roundoff u (bf16 2^-8, fp16 2^-11).

Each case is a function ``(setup, dtype) -> tensor`` (the output, as float32 on the CPU) over a
``Setup`` that holds the models built once per device (fp32 weights; a case casts a copy).
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}
DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16}

VIEWS, FRAMES, SIZE = 2, 2, 64  # 2 views x 2 frames (frame 0: pseudo lines) x 64x64 px (8x8 latents)
VAE_FRAMES, VAE_SIZE = 5, 32  # small: bf16 runs by conversion on CPUs without AVX512-BF16


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|out - ref| / max|ref|`` (inf when ``out`` is not finite)."""
    out, ref = out.double(), ref.double()
    if not bool(torch.isfinite(out).all()):
        return math.inf
    return float((out - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


@dataclass
class Setup:
    """Models and inputs of all cases on one device, built lazily (fp32)."""

    device: torch.device
    seed: int = 0
    _cache: Dict[str, object] = field(default_factory=dict)
    _tmp: Optional[tempfile.TemporaryDirectory] = None

    def cached(self, key: str, build: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def folder(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cvd_precision_")
        return Path(self._tmp.name)

    # -- CV-VAE ------------------------------------------------------------------------------

    def vae(self, variant: str):
        def build():
            from cvd_core.cvvae import build_model
            from cvd_core.cvvae.tiny import TINY_CONFIGS, _tiny_state

            config = {k: v for k, v in TINY_CONFIGS[variant].items() if not k.startswith("_")}
            model = build_model(variant, config)
            model.load_state_dict(_tiny_state(variant, self.seed), strict=True)
            return model.to(self.device).eval().requires_grad_(False)
        return self.cached(f"vae_{variant}", build)

    def vae_pixels(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(100 + self.seed)
        # a smooth video (as real frames are) plus a little texture, in [-1, 1]
        t = torch.linspace(0, 1, VAE_FRAMES)[:, None, None]
        y = torch.linspace(-1, 1, VAE_SIZE)[None, :, None]
        x = torch.linspace(-1, 1, VAE_SIZE)[None, None, :]
        shape = (VAE_FRAMES, VAE_SIZE, VAE_SIZE)
        base = torch.stack([torch.sin(3 * x + 2 * t).expand(shape), torch.cos(2 * y - t).expand(shape),
                            torch.sin(2 * (x + y)).expand(shape)])
        noisy = 0.8 * base + 0.1 * torch.randn(3, VAE_FRAMES, VAE_SIZE, VAE_SIZE, generator=g)
        return noisy.clamp(-1, 1)[None]

    def vae_latents(self, variant: str) -> torch.Tensor:
        def build():
            from cvd_core.cvvae import TilingConfig, encode_video

            post = encode_video(self.vae(variant), self.vae_pixels(), TilingConfig("none"))
            return post.mode().float()
        return self.cached(f"vae_latents_{variant}", build)

    # -- CVD ---------------------------------------------------------------------------------

    def cvd_files(self) -> dict:
        def build():
            from cvd_core.cvd import write_tiny_cvd_files

            return write_tiny_cvd_files(self.folder() / "cvd", seed=self.seed)
        return self.cached("cvd_files", build)

    def cvd(self):
        def build():
            from cvd_core.cvd import load_cvd_model

            return load_cvd_model(**self.cvd_files(), dtype=torch.float32, device=self.device)
        return self.cached("cvd", build)

    def rig_inputs(self) -> dict:
        def build():
            from cvd_core.camera import make_preset_rig, pair_fundamentals, plucker_embedding

            rig = make_preset_rig("circle", VIEWS, FRAMES, SIZE, SIZE)
            plucker = plucker_embedding(rig.K, rig.c2w, SIZE, SIZE).permute(0, 2, 1, 3, 4).float().contiguous()
            g = torch.Generator().manual_seed(200 + self.seed)
            latents = torch.randn(VIEWS, 4, FRAMES, SIZE // 8, SIZE // 8, generator=g)
            cond, uncond, entity = (torch.randn(1, 77, 32, generator=g) for _ in range(3))
            fundamentals = {(i, j): pair_fundamentals(rig, i, j).float()
                            for i in range(VIEWS) for j in range(VIEWS) if i != j}
            return dict(rig=rig, plucker=plucker, latents=latents, cond=cond, uncond=uncond, entity=entity,
                        fundamentals=fundamentals)
        return self.cached("rig_inputs", build)

    def unet_batch(self) -> dict:
        """One CFG denoiser call of the 2 views (rows 2·view + branch), as the sampler makes it."""
        r = self.rig_inputs()
        text = torch.cat([r["uncond"], r["cond"]]).repeat(VIEWS, 1, 1)
        F = torch.stack([r["fundamentals"][(v, 1 - v)] for v in range(VIEWS) for _ in (0, 1)])
        partner = torch.tensor([2 * (1 - v) + b for v in range(VIEWS) for b in (0, 1)])
        return dict(latents=r["latents"].repeat_interleave(2, 0), timestep=torch.tensor(481), text=text,
                    plucker=r["plucker"].repeat_interleave(2, 0), F_mats=F, partner=partner)


def _cast(module, dtype):
    """A copy of ``module`` in ``dtype`` (fp32 returns the module itself)."""
    return module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().cpu()


# ------------------------------------------------------------------------------------- the cases

def cvvae_encode(variant: str, setup: Setup, dtype: torch.dtype) -> torch.Tensor:
    from cvd_core.cvvae import TilingConfig, encode_video

    return _cpu(encode_video(_cast(setup.vae(variant), dtype), setup.vae_pixels(), TilingConfig("none")).moments)


def cvvae_decode(variant: str, setup: Setup, dtype: torch.dtype) -> torch.Tensor:
    from cvd_core.cvvae import TilingConfig, decode_video

    return _cpu(decode_video(_cast(setup.vae(variant), dtype), setup.vae_latents(variant), TilingConfig("none")))


def cvsm_attention(setup: Setup, dtype: torch.dtype, F_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One CVSM attention with the real epipolar bias of CVD's 256-px circle rig (2 views x 16 frames,
    feat 16) and logits of a realistic spread. ``F_dtype`` rounds F before the bias (the F bug)."""
    from cvd_core.camera import make_preset_rig, pair_fundamentals
    from cvd_core.camera.epipolar import epipolar_attention_bias
    from cvd_core.cvd.cvsm import cross_view_attention

    def build():
        rig = make_preset_rig("circle", 2, 16, 256, 256)
        return torch.cat([pair_fundamentals(rig, 0, 1), pair_fundamentals(rig, 1, 0)]).float()
    F = setup.cached("cvsm_F", build).to(setup.device)
    rows, heads, n, d = F.shape[0], 8, 256, 40
    g = torch.Generator().manual_seed(300 + setup.seed)
    q, k, v = (torch.randn(rows, heads, n, d, generator=g) for _ in range(3))
    q, k = 2.0 * q, 2.0 * k  # logits q·k/√d with std ~4, as trained attention has
    partner = torch.cat([torch.arange(16, 32), torch.arange(16)]).to(setup.device)
    first = (torch.arange(rows) % 16 == 0).to(setup.device)
    bias = epipolar_attention_bias(F.to(F_dtype).float(), 16, 16, 256, pseudo_rows=first)
    q, k, v = (t.to(setup.device, dtype) for t in (q, k, v))
    return _cpu(cross_view_attention(q, k, v, partner, lambda s, e: bias[s:e], score_budget=None))


def cvd_backbone(setup: Setup, dtype: torch.dtype, feature_cache=None) -> torch.Tensor:
    from cvd_core.cvd.network import module_with_feature_cache

    model = _cast(setup.cvd(), dtype)
    if feature_cache is not None:
        model = module_with_feature_cache(model, feature_cache)
    return _cpu(model.predict_noise(**setup.unet_batch()))


def feature_cache(setup: Setup, dtype: torch.dtype) -> torch.Tensor:
    from cvd_core.feature_cache import FeatureCacheConfig

    return cvd_backbone(setup, dtype, FeatureCacheConfig(strength=0.3, block_start=1, block_end=24))


def _sample(setup: Setup, model, scheduler, guidance_scale: float, regional=None) -> torch.Tensor:
    from cvd_core.sampling import sample_multiview

    r = setup.rig_inputs()
    return _cpu(sample_multiview(model, r["latents"], r["cond"], r["uncond"], r["plucker"], r["fundamentals"],
                                 scheduler, guidance_scale=guidance_scale, strategy="random", seed=1,
                                 regional=regional))


def sampler_ddim(setup: Setup, dtype: torch.dtype) -> torch.Tensor:
    """The collaborative sampler, DDIM 2 steps, cfg 1. (With random text weights cond and uncond
    nearly agree, so CVD's cfg 8.5 would only multiply the noise floor by ~12; the CFG sum itself is
    float32 in the sampler.)"""
    from cvd_core.sampling import DDIMScheduler

    return _sample(setup, _cast(setup.cvd(), dtype), DDIMScheduler(num_inference_steps=2), 1.0)


class _GuidedNoise:
    """A one-step scheduler whose output is the sampler's guided noise prediction itself."""

    def __new__(cls, timestep: int = 481):
        from cvd_core.sampling import DiscreteScheduler, StepOutput, make_alphas_cumprod

        class Probe(DiscreteScheduler):
            def landing_alpha(self, index):
                return 1.0

            def step(self, eps, index, sample, noise=None):
                return StepOutput(eps, eps)

        return Probe(make_alphas_cumprod(), [timestep])


def regional(setup: Setup, dtype: torch.dtype) -> torch.Tensor:
    """The sampler's noise prediction with an entity prompt blended inside a soft mask (cfg 1: with
    random text embeddings cond and uncond nearly agree, so CFG would only amplify the noise floor)."""
    r = setup.rig_inputs()
    mask = torch.zeros(VIEWS, 1, FRAMES, SIZE // 8, SIZE // 8)
    mask[:, :, :, 2:6, 3:7] = 1.0
    mask[:, :, :, 1, 3:7] = 0.5
    return _sample(setup, _cast(setup.cvd(), dtype), _GuidedNoise(), 1.0, regional=[(r["entity"], mask)])


def mcm(setup: Setup, dtype: torch.dtype) -> torch.Tensor:
    """MCM: the LoRA merged into the model in ``dtype`` (fp32 sum, one rounding), 2 steps at cfg 1."""
    from cvd_core.mcm import MCMScheduler, animatediff_path_map, load_peft_adapter, lora_deltas, merge_lora_into_module
    from tests.support.models_mcm import write_tiny_mcm_adapter

    def build():
        folder = write_tiny_mcm_adapter(setup.folder() / "mcm", seed=setup.seed, cross_attention_dim=32)
        return lora_deltas(*load_peft_adapter(folder))
    deltas = setup.cached("mcm_deltas", build)
    model = copy.deepcopy(setup.cvd()).to(dtype)
    report = merge_lora_into_module(model.unet.unet, deltas, scale=1.0, path_map=animatediff_path_map)
    assert report.applied and not report.skipped, report.summary()
    return _sample(setup, model, MCMScheduler(steps=2), 1.0)


CASES: Dict[str, Callable[[Setup, torch.dtype], torch.Tensor]] = {
    "cvvae_z4_encode": functools.partial(cvvae_encode, "z4"),
    "cvvae_z4_decode": functools.partial(cvvae_decode, "z4"),
    "cvvae_z16_encode": functools.partial(cvvae_encode, "z16"),
    "cvvae_z16_decode": functools.partial(cvvae_decode, "z16"),
    "cvsm_attention": cvsm_attention,
    "cvd_backbone": cvd_backbone,
    "feature_cache": feature_cache,
    "sampler_ddim": sampler_ddim,
    "regional": regional,
    "mcm": mcm,
}


def measure(setup: Setup, name: str, dtype: torch.dtype, reference: Optional[torch.Tensor] = None):
    """(relative error, error in units of u, reference) of case ``name`` in ``dtype`` on the setup's device."""
    with torch.no_grad():
        ref = CASES[name](setup, torch.float32) if reference is None else reference
        out = CASES[name](setup, dtype)
    err = relative_error(out, ref)
    return err, err / UNIT_ROUNDOFF[dtype], ref


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure half-vs-fp32 errors of every core path.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=sorted(DTYPE_NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    print("| case | seed | dtype | rel. error | error / u | seconds (fp32 + half) |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        setup = Setup(torch.device(args.device), seed=seed)
        for name in args.cases:
            ref = None
            for dname in args.dtypes:
                start = time.perf_counter()
                err, in_u, ref = measure(setup, name, DTYPE_NAMES[dname], ref)
                seconds = time.perf_counter() - start
                print(f"| {name} | {seed} | {dname} | {err:.3e} | {in_u:.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
