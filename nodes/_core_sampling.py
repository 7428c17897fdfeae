"""ComfyUI's own samplers around the collaborative denoiser (``cvd_core.sampling.CollaborativeDenoiser``).

A core sampler (``KSAMPLER``: euler, dpmpp_2m, uni_pc, lcm, ...) calls a *model wrapper* with
``(x, sigma)`` in k-diffusion's space and wants the denoised x0. ``CoreModel`` is that wrapper: it
turns sigma into CVD's training timestep, scales x into the UNet's input, asks the collaborative
denoiser for the per-view noise prediction and returns x0. Pairing, CFG, regional rows and devices
stay in the denoiser: this file holds no copy of them.

Conventions settled here:
- The pack's 5-D LATENT is already in the UNet's scaled space (x 0.18215), so the latent format's
  ``process_latent_in``/``out`` are the identity.
- Sigmas come from CVD's own DDPM table: linear betas 0.00085-0.012 (CVD's and AnimateDiff's inference
  config; ComfyUI calls it ``sqrt_linear``) in diffusers' float32 arithmetic, so ``cvd_ddim`` sigmas map
  back to exactly the official timesteps.
- A full denoise from an empty latent starts from pure noise (x_T = noise, the official pipeline) also
  when the first sigma is below sigma_max (CVD's first DDIM timestep is 961): the noise is scaled by
  sqrt(1 + sigma_0^2) / sigma_0 before core's ``noise * sigma_0``.
- The k-th model call inside schedule interval i uses the pairing drawn for (step i, substep k): one call
  per step (euler, ddim, lcm, dpmpp_2m) pairs the views exactly as the pack's loop does; heun's second
  call gets a fresh matching. Samplers that add white noise between steps (ancestral, lcm) draw the pack's
  per-view step streams (``ViewNoiseSampler``).
- A noise mask ``[V, 1, F, h, w]`` (``nodes/_latent.py`` resizes every accepted form) goes to core as
  ``denoise_mask``: core's ``KSamplerX0Inpaint`` re-noises the known region and holds its x0, as the pack's
  ``KnownRegion`` does; the result is then ``m * x + (1 - m) * start`` so it is the start latent *exactly*
  where the mask is 0 (a sampler's last step ``x + d * (0 - sigma)`` only rounds to it).
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Callable, List, Optional

import torch

from cvd_core.guards import require_finite
from cvd_core.sampling import noise as noise_streams
from cvd_core.sampling.executor import Iteration
from cvd_core.sampling.noise_schedule import make_alphas_cumprod, sigmas_from_alphas_cumprod
from cvd_core.sampling.ddim import ddim_timesteps

CVD_BETAS = ("linear", 1000, 0.00085, 0.012)  # cvd_core.sampling.ddim: the official inference config


def cvd_sigma_table() -> torch.Tensor:
    """sigma(t) = sqrt((1 - a_t) / a_t) for t = 0..999 over CVD's float32 alphas_cumprod (float32)."""
    return sigmas_from_alphas_cumprod(make_alphas_cumprod(*CVD_BETAS)).float()


def has_guider_api() -> bool:
    """Whether the running ComfyUI has GUIDER sampling (``CFGGuider``, SamplerCustomAdvanced; 2024-04+).
    True outside ComfyUI (the pack's own registration tests)."""
    try:
        import comfy.samplers
    except Exception:
        return True
    return hasattr(comfy.samplers, "CFGGuider")


def cvd_model_sampling():
    """ComfyUI's ``ModelSamplingDiscrete`` + ``EPS`` over CVD's sigma table (core's schedulers read it)."""
    import comfy.model_sampling as ms

    class CVDModelSampling(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    sampling = CVDModelSampling()
    sampling.set_sigmas(cvd_sigma_table())
    return sampling


def cvd_ddim_sigmas(steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The official CVD DDIM timesteps (leading spacing, offset 1; ``denoise`` keeps the last steps) as
    sigmas, ending at 0 (``set_alpha_to_one``: the last DDIM step returns the x0 prediction)."""
    table = cvd_sigma_table()
    return torch.tensor([float(table[t]) for t in ddim_timesteps(steps, denoise=denoise)] + [0.0])


def timesteps_to_sigmas(timesteps) -> torch.Tensor:
    """Sigmas of a list of CVD training timesteps, ending at 0 (e.g. the MCM schedule)."""
    table = cvd_sigma_table()
    return torch.tensor([float(table[int(t)]) for t in timesteps] + [0.0])


def core_schedule(scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """``scheduler`` (a name the running ComfyUI offers) over CVD's table, with BasicScheduler's rule for
    denoise: ``int(steps / denoise)`` steps, of which the last ``steps`` are kept."""
    import comfy.samplers

    total = steps if denoise >= 1.0 else int(steps / denoise)
    sampling = cvd_model_sampling()
    if hasattr(comfy.samplers, "calculate_sigmas"):  # 0.3.x
        sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, total)
    else:  # 2024-03: takes a model with .model_sampling
        sigmas = comfy.samplers.calculate_sigmas_scheduler(_SamplingModel(sampling), scheduler, total)
    return sigmas.cpu().float()[-(steps + 1):]


def core_scheduler_names() -> List[str]:
    try:
        import comfy.samplers
    except Exception:
        return []
    return list(getattr(comfy.samplers, "SCHEDULER_NAMES", []))


class _LatentFormat:
    """The pack's video latents: 4 channels, already scaled; no previewer (the pack draws its own grid)."""

    latent_channels = 4
    latent_dimensions = 3
    scale_factor = 1.0
    latent_rgb_factors = None
    latent_rgb_factors_bias = None
    taesd_decoder_name = None

    def process_in(self, latent):
        return latent

    def process_out(self, latent):
        return latent


class _SamplingModel:
    """What core's samplers read of ``model_wrap.inner_model`` (a BaseModel in core)."""

    def __init__(self, model_sampling):
        self.model_sampling = model_sampling
        self.latent_format = _LatentFormat()

    def process_latent_in(self, latent):
        return latent

    def process_latent_out(self, latent):
        return latent

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        sigma = sigma.reshape([sigma.shape[0]] + [1] * (noise.dim() - 1))
        return self.model_sampling.noise_scaling(sigma, noise, latent_image)


class PatcherView:
    """The parts of a ModelPatcher that SamplerCustomAdvanced and core's samplers read off a guider."""

    def __init__(self, patcher, model_sampling):
        self.patcher = patcher
        self.model = _SamplingModel(model_sampling)
        self.model_options = {"transformer_options": {}}
        self.load_device = getattr(patcher, "load_device", torch.device("cpu"))
        self.offload_device = getattr(patcher, "offload_device", torch.device("cpu"))

    def get_model_object(self, name: str):
        if name == "model_sampling":
            return self.model.model_sampling
        if name == "latent_format":
            return self.model.latent_format
        raise AttributeError(f"the CVD guider's model has no {name!r}")

    def model_dtype(self):
        return torch.float32


def _x0_inpaint_takes_conds() -> bool:
    """2024-03's KSamplerX0Inpaint takes (x, sigma, uncond, cond, cond_scale, denoise_mask, ...)."""
    import comfy.samplers

    target = comfy.samplers.KSamplerX0Inpaint
    target = getattr(target, "forward", None) or target.__call__
    return "cond_scale" in inspect.signature(target).parameters


class CoreModel:
    """The model wrapper a core sampler calls: ``(x, sigma) -> x0`` through the collaborative denoiser."""

    def __init__(self, denoiser, model_sampling, patcher_view: PatcherView, sigmas: torch.Tensor):
        self.denoiser = denoiser
        self.inner_model = patcher_view.model
        self.model_patcher = patcher_view
        self.model_options = patcher_view.model_options
        self.sampling = model_sampling
        self.schedule = [float(s) for s in sigmas]
        self.calls_in_interval = {}

    def _iteration(self, sigma: float, timestep: int) -> Iteration:
        """Schedule interval i holds sigma in [sigma_{i+1}, sigma_i]: its k-th call is (step i, substep k)."""
        index = _interval(self.schedule, sigma)
        substep = self.calls_in_interval.get(index, 0)
        self.calls_in_interval[index] = substep + 1
        return Iteration(index, max(len(self.schedule) - 1, 1), substep, timestep)

    def __call__(self, x, sigma, model_options=None, seed=None, **unused):
        return self.predict(x, sigma, model_options or {})

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32).flatten()
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        timestep = int(self.sampling.timestep(sigma[:1].cpu()).item())
        iteration = self._iteration(float(sigma[0]), timestep)
        x_in = self.sampling.calculate_input(sigma, x.float())
        post = model_options.get("sampler_post_cfg_function", [])
        prediction = self.denoiser.predict(x_in, iteration, with_parts=bool(post))
        denoised = self.sampling.calculate_denoised(sigma, prediction.eps, x.float())
        for function in post:  # e.g. the *_cfg_pp samplers read the unconditional x0
            cond = self.sampling.calculate_denoised(sigma, prediction.cond, x.float())
            uncond = cond if prediction.uncond is None else \
                self.sampling.calculate_denoised(sigma, prediction.uncond, x.float())
            denoised = function({"denoised": denoised, "cond": None, "uncond": None, "model": self.inner_model,
                                 "uncond_denoised": uncond, "cond_denoised": cond, "sigma": sigma,
                                 "model_options": model_options, "input": x})
        return denoised


def _interval(schedule: List[float], sigma: float) -> int:
    """Index i of the schedule interval [sigma_{i+1}, sigma_i] that holds ``sigma`` (the step it belongs to)."""
    index = 0
    for i, s in enumerate(schedule[:-1]):
        if sigma <= s * (1 + 1e-6):
            index = i
    return index


class ViewNoiseSampler:
    """A core ``noise_sampler(sigma, sigma_next)`` drawing the pack's per-view STEP streams: the noise that step i
    adds is the one CVD Multi-View Sampler adds at step i (so multi-step lcm on MCM sigmas equals the pack's
    MCM), and a view's noise never depends on the number of views."""

    def __init__(self, seed: int, sigmas: torch.Tensor, shape):
        self.seed, self.schedule, self.shape = int(seed), [float(s) for s in sigmas], tuple(shape)
        self.calls = {}

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        step = _interval(self.schedule, float(sigma))
        substep = self.calls.get(step, 0)
        self.calls[step] = substep + 1
        return noise_streams.multiview_noise(self.seed, noise_streams.STEP, step, substep, self.shape[0],
                                             self.shape[1:], torch.device("cpu"))


def with_view_noise(sampler, seed: int, sigmas: torch.Tensor, shape):
    """``sampler`` with ``ViewNoiseSampler`` where it takes a white-noise ``noise_sampler`` (ancestral samplers,
    lcm, ddpm, ...). The SDE samplers keep their Brownian-tree noise (correlated across step sizes by design)."""
    function = getattr(sampler, "sampler_function", None)
    options = getattr(sampler, "extra_options", None)
    if function is None or not isinstance(options, dict) or "noise_sampler" in options:
        return sampler
    try:
        takes = "noise_sampler" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return sampler
    if not takes or "sde" in getattr(function, "__name__", ""):
        return sampler
    view_sampler = copy.copy(sampler)
    view_sampler.extra_options = {**options, "noise_sampler": ViewNoiseSampler(seed, sigmas, shape)}
    return view_sampler


def start_noise(noise: torch.Tensor, latent_image: torch.Tensor, sigmas: torch.Tensor, sampling) -> torch.Tensor:
    """Noise that core's ``noise * sigma_0 + latent`` turns into pure noise x_T for an empty latent."""
    sigma0, sigma_max = float(sigmas[0]), float(sampling.sigma_max)
    full = math.isclose(sigma_max, sigma0, rel_tol=1e-5) or sigma0 > sigma_max  # core scales it itself then
    if full or sigma0 <= 0 or torch.count_nonzero(latent_image) > 0:
        return noise
    return noise * (math.sqrt(1.0 + sigma0 ** 2) / sigma0)


def core_sample(denoiser, sampler, sigmas: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                patcher, denoise_mask=None, callback: Optional[Callable] = None, disable_pbar: bool = False,
                seed: int = 0, on_model: Optional[Callable] = None) -> torch.Tensor:
    """Run core ``sampler`` on ``sigmas`` around ``denoiser`` (a CollaborativeDenoiser, bound here);
    ``on_model(model)`` sees the model wrapper (a guider's ``predict_noise`` delegates to it).
    ``denoise_mask``: None or ``[V, 1, F, h, w]`` in [0, 1] (1 = regenerate), already at latent size."""
    sampling = cvd_model_sampling()
    view = PatcherView(patcher, sampling)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    latent_image = latent_image.float().cpu()
    noise = start_noise(noise.float().cpu(), latent_image, sigmas, sampling)
    model = CoreModel(denoiser, sampling, view, sigmas)
    if on_model is not None:
        on_model(model)
    extra_args = {"model_options": view.model_options, "seed": int(seed)}
    if _x0_inpaint_takes_conds():
        extra_args.update(cond=None, uncond=None, cond_scale=denoiser.guidance_scale)
    sampler = with_view_noise(sampler, seed, sigmas, latent_image.shape)
    if denoise_mask is not None:
        denoise_mask = denoise_mask.float().cpu()
    with denoiser.session(latent_image):
        with torch.no_grad():
            samples = sampler.sample(model, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                                     disable_pbar)
    # a sampler that diverges (too few steps for its order, a bad schedule) must stop here, not write NaN videos
    require_finite(samples, "the sampled latents", axes=("view", "channel", "frame"),
                   hint="try another sampler or scheduler, or more steps")
    samples = samples.float()
    if denoise_mask is not None:
        samples = samples * denoise_mask + latent_image * (1.0 - denoise_mask)
    return samples
