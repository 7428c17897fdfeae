"""MCM few-step sampling (timesteps, scalings, scheduler) and PEFT LoRA merging.

Public entry point for external checks: ``mcm_timesteps(steps, num_train_timesteps=1000,
original_steps=50)``.
"""

from .lora import (LoRAFactors, MergeReport, animatediff_path_map, load_peft_adapter, lora_deltas, lora_factors,
                   lora_targets, merge_lora_into_module, merged_weight)
from .scheduler import BASE_BETA_SCHEDULES, MCMScheduler
from .timesteps import (MCM_TIMESTEP_SCALING, boundary_scalings, mcm_sigmas, mcm_timesteps,
                        timesteps_from_sigmas)

__all__ = [
    "BASE_BETA_SCHEDULES", "LoRAFactors", "MCMScheduler", "MCM_TIMESTEP_SCALING", "MergeReport",
    "animatediff_path_map", "boundary_scalings", "load_peft_adapter", "lora_deltas", "lora_factors",
    "lora_targets", "mcm_sigmas", "mcm_timesteps", "merge_lora_into_module", "merged_weight",
    "timesteps_from_sigmas",
]
