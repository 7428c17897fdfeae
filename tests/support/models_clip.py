"""A randomly initialised, full-size CLIP ViT-L/14 text model as ``models/clip/clip_l.safetensors``.

SD1.5's text encoder is OpenAI CLIP-L's text model; the shipped workflows load it with the core
``CLIPLoader(clip_name="clip_l.safetensors", type="stable_diffusion")`` and ``CLIPTextEncode``. The
file has the real file's layout (``text_model.*`` and ``text_projection.weight``, fp16) and ComfyUI's
own ``sd1_clip_config.json`` architecture, so ComfyUI tokenizes and encodes exactly as with the
real weights; only the numbers are random (conditioning ``[1, 77, 768]``).
"""

from pathlib import Path

CLIP_FILE = "clip_l.safetensors"
# ComfyUI's comfy/sd1_clip_config.json (openai/clip-vit-large-patch14, text part)
CLIP_L_TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    attention_dropout=0.0, dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)


def write_random_clip_l(target: Path, seed: int = 0) -> Path:
    """Write the random CLIP-L text model (fp16 safetensors) to ``target``."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L_TEXT_CONFIG))
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    save_file(state, str(partial))
    partial.replace(target)
    return target


def install(comfy_root: Path) -> None:
    target = Path(comfy_root) / "models" / "clip" / CLIP_FILE
    if not target.exists():
        write_random_clip_l(target)
