"""PEFT LoRA adapters in MCM's layout: reading, deltas and merging into a module tree.

The adapters are written by the test in PEFT's saved layout (``adapter_model.safetensors`` with
``base_model.model.<path>.lora_A/B.weight`` + ``adapter_config.json``). The merged modules are
checked against the un-merged LoRA forward pass (base(x) + scale·B(A(x))), which is how PEFT
runs an adapter before ``merge_and_unload``.
"""

import json

import pytest
import torch
import torch.nn.functional as Fn
from safetensors.torch import save_file
from torch import nn

from cvd_core.mcm import animatediff_path_map, load_peft_adapter, lora_deltas, merge_lora_into_module

SPATIAL = {  # diffusers UNet paths -> module
    "down_blocks.0.resnets.0.conv1": lambda: nn.Conv2d(4, 8, 3, padding=1),
    "down_blocks.0.resnets.0.time_emb_proj": lambda: nn.Linear(16, 8),
    "down_blocks.0.attentions.0.proj_in": lambda: nn.Conv2d(8, 8, 1),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": lambda: nn.Linear(8, 8, bias=False),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": lambda: nn.Linear(8, 8),
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj": lambda: nn.Linear(8, 32),
    "down_blocks.0.downsamplers.0.conv": lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1),
}
MOTION_DIFFUSERS = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.to_k"
MOTION_ORIGINAL = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_k"


def _tree(paths):
    root = nn.Module()
    for path, make in paths.items():
        node = root
        parts = path.split(".")
        for atom in parts[:-1]:
            if not hasattr(node, atom):
                node.add_module(atom, nn.Module())
            node = getattr(node, atom)
        node.add_module(parts[-1], make())
    torch.manual_seed(0)
    for p in root.parameters():
        nn.init.normal_(p, std=0.2)
    return root


def _lora_weights(module, rank, gen):
    if isinstance(module, nn.Conv2d):
        a = torch.randn(rank, module.in_channels, *module.kernel_size, generator=gen) * 0.3
        b = torch.randn(module.out_channels, rank, 1, 1, generator=gen) * 0.3
    else:
        a = torch.randn(rank, module.in_features, generator=gen) * 0.3
        b = torch.randn(module.out_features, rank, generator=gen) * 0.3
    return a, b


def _write_adapter(folder, root, paths, rank=4, alpha=8, extra_config=None):
    gen = torch.Generator().manual_seed(1)
    tensors, ab = {}, {}
    for path in paths:
        a, b = _lora_weights(root.get_submodule(path), rank, gen)
        tensors[f"base_model.model.{path}.lora_A.weight"] = a
        tensors[f"base_model.model.{path}.lora_B.weight"] = b
        ab[path] = (a, b)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted(paths), "fan_in_fan_out": False, **(extra_config or {})}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return ab


def _lora_forward(module, a, b, scaling, x):
    """PEFT's un-merged forward: base(x) + scaling · B(A(x))."""
    if isinstance(module, nn.Conv2d):
        h = Fn.conv2d(x, a, stride=module.stride, padding=module.padding)
        return module(x) + scaling * Fn.conv2d(h, b)
    return module(x) + scaling * Fn.linear(Fn.linear(x, a), b)


def _rounding_bound(module, delta, x):
    """Worst-case float32 rounding of both forwards, (W + dW)x and Wx + s·B(Ax): a K-term dot product is
    within K·eps·(|w|·|x|) of exact (Higham's gamma_K), so on any CPU the two differ by less than
    2·(K + rank + 2)·eps·(|W| + |dW|)·|x|, with |dW| bounded elementwise by the delta's magnitude."""
    magnitude = module.weight.abs() + delta.abs().reshape(module.weight.shape)
    if isinstance(module, nn.Conv2d):
        total = Fn.conv2d(x.abs(), magnitude, stride=module.stride, padding=module.padding)
        terms = module.weight[0].numel()
    else:
        total = Fn.linear(x.abs(), magnitude)
        terms = module.in_features
    if module.bias is not None:
        total = total + module.bias.abs().view(-1, *([1] * (total.dim() - 2)))
    return 2 * (terms + 4 + 2) * torch.finfo(torch.float32).eps * total  # rank 4 in these adapters


def _probe(module):
    if isinstance(module, nn.Conv2d):
        return torch.randn(2, module.in_channels, 6, 6)
    return torch.randn(3, module.in_features)


def test_merge_matches_unmerged_lora_forward(tmp_path, compute_device):
    """PEFT's un-merged forward on the CPU vs our merge into a model on ``compute_device`` (fp32)."""
    root = _tree(SPATIAL)
    ab = _write_adapter(tmp_path / "animatediff-laion", root, list(SPATIAL), rank=4, alpha=8)
    state_dict, config = load_peft_adapter(tmp_path / "animatediff-laion")
    deltas = lora_deltas(state_dict, config)
    assert set(deltas) == set(SPATIAL)
    assert deltas["down_blocks.0.resnets.0.conv1"].shape == (8, 4, 3, 3)
    torch.manual_seed(5)
    probes = {p: _probe(root.get_submodule(p)) for p in SPATIAL}
    expected = {p: _lora_forward(root.get_submodule(p), *ab[p], 8 / 4, probes[p]).detach() for p in SPATIAL}
    root = root.to(compute_device)  # the deltas stay on the CPU, as they come from the adapter file
    report = merge_lora_into_module(root, deltas, scale=1.0)
    assert sorted(report.applied) == sorted(SPATIAL) and report.skipped == []
    for p in SPATIAL:
        probe = probes[p].to(compute_device)
        got = root.get_submodule(p)(probe).detach().cpu()
        bound = _rounding_bound(root.get_submodule(p), deltas[p], probe).detach().cpu()
        assert ((got - expected[p]).abs() <= bound).all(), p


def test_scale_and_half_precision(tmp_path):
    base = _tree(SPATIAL)
    _write_adapter(tmp_path / "a", base, list(SPATIAL), rank=2, alpha=2)
    deltas = lora_deltas(*load_peft_adapter(tmp_path / "a" / "adapter_model.safetensors"))
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    w0 = base.get_submodule(path).weight.detach().clone()
    half = _tree(SPATIAL).half()
    merge_lora_into_module(half, deltas, scale=0.5)
    merged = half.get_submodule(path).weight
    assert merged.dtype == torch.float16
    # Two float16 roundings separate it from the float32 sum: of the half model's own weights (|w0|) and
    # of the merged result (|exact|), each at most half an ulp, 2^-11 relative; one more factor 2 for the
    # float32 steps and the subnormal range. Exact IEEE arithmetic: the same on every CPU.
    exact = w0 + 0.5 * deltas[path]
    assert ((merged.float() - exact).abs() <= 2.0 ** -10 * (w0.abs() + exact.abs()) + 2.0 ** -24).all()


def test_motion_modules_through_the_animatediff_path_map(tmp_path):
    tree_paths = dict(SPATIAL)
    tree_paths[MOTION_ORIGINAL] = lambda: nn.Linear(8, 8, bias=False)
    root = _tree(tree_paths)
    adapter_paths = list(SPATIAL) + [MOTION_DIFFUSERS, "mid_block.motion_modules.0.transformer_blocks.0.attn1.to_q",
                                     "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"]
    gen_root = _tree({**tree_paths,
                      "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q":
                          lambda: nn.Linear(8, 8, bias=False),
                      "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v": lambda: nn.Linear(8, 8)})
    # mid-block motion module and attn2.to_v have no counterpart in `root`: reported as skipped
    ab = _write_adapter(tmp_path / "a", _RemapView(gen_root), adapter_paths)
    deltas = lora_deltas(*load_peft_adapter(tmp_path / "a"))
    before = root.get_submodule(MOTION_ORIGINAL).weight.detach().clone()
    report = merge_lora_into_module(root, deltas, path_map=animatediff_path_map)
    assert MOTION_DIFFUSERS in report.applied
    assert len(report.applied) == len(SPATIAL) + 1
    skipped = dict(report.skipped)
    assert set(skipped) == {"mid_block.motion_modules.0.transformer_blocks.0.attn1.to_q",
                            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"}
    assert all(reason.startswith("missing") for reason in skipped.values())
    a, b = ab[MOTION_DIFFUSERS]
    assert torch.allclose(root.get_submodule(MOTION_ORIGINAL).weight, before + b @ a * 2.0, atol=1e-6)
    assert "merged into 8 modules, skipped 2 (2 missing)" in report.summary()


class _RemapView(nn.Module):
    """Looks diffusers paths up in a tree named the AnimateDiff way (to size the test LoRA)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_submodule(self, target):
        return self.inner.get_submodule(animatediff_path_map(target))


def test_shape_mismatch_and_linear_vs_1x1_conv(tmp_path):
    root = _tree(SPATIAL)
    _write_adapter(tmp_path / "a", root, list(SPATIAL))
    deltas = lora_deltas(*load_peft_adapter(tmp_path / "a"))
    # our model might implement proj_in as a Linear (use_linear_projection): the 1x1 conv delta fits
    other = _tree({**SPATIAL, "down_blocks.0.attentions.0.proj_in": lambda: nn.Linear(8, 8),
                   "down_blocks.0.resnets.0.time_emb_proj": lambda: nn.Linear(16, 4)})
    report = merge_lora_into_module(other, deltas, path_map={"unused.path": "x"})
    assert "down_blocks.0.attentions.0.proj_in" in report.applied
    (path, reason), = report.skipped
    assert path == "down_blocks.0.resnets.0.time_emb_proj" and reason.startswith("shape mismatch")
    unmapped = merge_lora_into_module(_tree(SPATIAL), deltas, path_map=lambda p: None)
    assert unmapped.applied == [] and all(r.startswith("unmapped") for _, r in unmapped.skipped)


def test_rank_alpha_patterns_and_rslora(tmp_path):
    root = _tree(SPATIAL)
    conv = "down_blocks.0.resnets.0.conv1"
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    _write_adapter(tmp_path / "a", root, [conv, q], rank=4, alpha=8, extra_config={"alpha_pattern": {"conv1": 2}})
    sd, cfg = load_peft_adapter(tmp_path / "a")
    d = lora_deltas(sd, cfg)
    plain = lora_deltas(sd, {"r": 4, "lora_alpha": 4})  # scale 1
    assert torch.allclose(d[conv], plain[conv] * 0.5) and torch.allclose(d[q], plain[q] * 2.0)
    rs = lora_deltas(sd, {**cfg, "alpha_pattern": {}, "use_rslora": True})
    assert torch.allclose(rs[q], plain[q] * 8 / 4 ** 0.5)
    with pytest.raises(ValueError, match="rank 8 .* has 4 rows"):
        lora_deltas(sd, {"r": 8, "lora_alpha": 8})
    with pytest.raises(ValueError, match="DoRA"):
        lora_deltas(sd, {**cfg, "use_dora": True})


def test_other_key_layouts_and_bad_keys(tmp_path):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 8, generator=gen), torch.randn(8, 2, generator=gen)
    peft = lora_deltas({"base_model.model.x.to_q.lora_A.weight": a, "base_model.model.x.to_q.lora_B.weight": b},
                       {"r": 2, "lora_alpha": 2})
    named = lora_deltas({"base_model.model.x.to_q.lora_A.default.weight": a,
                         "base_model.model.x.to_q.lora_B.default.weight": b}, {"r": 2, "lora_alpha": 2})
    diffusers_style = lora_deltas({"unet.x.to_q.lora.down.weight": a, "unet.x.to_q.lora.up.weight": b,
                                   "unet.x.to_q.alpha": torch.tensor(2.0)})
    for d in (named, diffusers_style):
        assert torch.allclose(d["x.to_q"], peft["x.to_q"])
    with pytest.raises(ValueError, match="not LoRA A/B weights"):
        lora_deltas({"base_model.model.x.to_q.weight": a})
    with pytest.raises(ValueError, match="missing their A or B"):
        lora_deltas({"base_model.model.x.to_q.lora_A.weight": a})
    # pickled adapters load through torch.load(weights_only=True)
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save({"base_model.model.x.to_q.lora_A.weight": a, "base_model.model.x.to_q.lora_B.weight": b},
               folder / "adapter_model.bin")
    sd, cfg = load_peft_adapter(folder)
    assert cfg == {} and torch.allclose(lora_deltas(sd, cfg)["x.to_q"], b @ a)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_peft_adapter(empty)


def test_animatediff_path_map_names():
    assert animatediff_path_map(MOTION_DIFFUSERS) == MOTION_ORIGINAL
    assert animatediff_path_map("up_blocks.3.motion_modules.2.proj_out") == \
        "up_blocks.3.motion_modules.2.temporal_transformer.proj_out"
    assert animatediff_path_map("up_blocks.1.motion_modules.0.transformer_blocks.0.ff.net.0.proj") == \
        "up_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.ff.net.0.proj"
    assert animatediff_path_map("down_blocks.0.motion_modules.1.transformer_blocks.0.norm3") == \
        "down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.ff_norm"
    spatial = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert animatediff_path_map(spatial) == spatial
    assert animatediff_path_map(MOTION_ORIGINAL) == MOTION_ORIGINAL  # already in AnimateDiff naming
