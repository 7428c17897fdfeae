"""cvd_core: the ComfyUI-free engine of cvd-multiview.

Everything here depends only on torch, numpy, einops, safetensors and diffusers (plus Pillow,
which diffusers already requires). Nothing may import ``comfy``, ``folder_paths``, ``nodes``,
``server`` or ``comfy_api``: ``tests/core/test_core_is_comfy_free.py`` enforces it.
"""

__all__ = ["camera"]
