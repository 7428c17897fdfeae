"""The sampler's ``devices`` input on the node side: executors, replicas' lifetime, the model recipe."""

import gc

import pytest
import torch

from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from cvd_core.cvd.network import module_with_feature_cache
from cvd_core.feature_cache import FeatureCacheConfig
from cvd_core.parallel import ThreadedExecutor
from cvd_core.parallel.recipe import recipe_digest, verify
from nodes._comfy import NodeInputError
from nodes._replicas import cached_replicas, model_recipe, replicas_for
from nodes._scale_out import executor_for


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = write_tiny_cvd_files(folder / "cvd", seed=0, single_file=True)
    model = load_cvd_model(**paths, dtype="fp32", device="cpu")
    # what CVD Load Model records (entries relative to ComfyUI's model folders)
    model.source_files = paths
    model.source_entries = {role: ("cvd", paths[role].split("/cvd/", 1)[1]) for role in paths}
    return model, folder


def test_empty_or_own_device_is_the_old_path_and_cpu_cpu_shares_the_weights(tiny):
    model, _ = tiny
    assert executor_for(model, model, "") is None and executor_for(model, model, None) is None
    assert executor_for(model, model, "cpu") is None
    two = executor_for(model, model, "cpu,cpu")
    assert isinstance(two, ThreadedExecutor) and [d.module for d in two.denoisers] == [model, model]
    assert cached_replicas(model) == []  # a replica on the model's own device is the model itself


@pytest.mark.parametrize("devices,message", [
    ("cuda:0", "devices: 'cuda:0' needs a CUDA GPU"),
    ("tpu", "devices: unknown device 'tpu'"),
    ("workers", "devices: 'workers' needs this ComfyUI started with CVD_DIST_LISTEN"),
])
def test_bad_devices_name_the_input(tiny, devices, message, monkeypatch):
    monkeypatch.delenv("CVD_DIST_LISTEN", raising=False)
    if devices.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(NodeInputError, match=message):
        executor_for(tiny[0], tiny[0], devices)


def test_workers_on_an_open_address_without_a_token_name_the_setting(tiny, monkeypatch):
    from nodes import _scale_out

    monkeypatch.setattr(_scale_out, "_POOL", None)
    monkeypatch.setenv("CVD_DIST_LISTEN", "0.0.0.0:29659")  # refused before it binds
    for name in ("CVD_DIST_TOKEN", "CVD_DIST_TOKEN_FILE", "CVD_DIST_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(NodeInputError, match=r"devices: 'workers': this server cannot listen for workers \(listening "
                                             r"for workers on '0.0.0.0' \(not loopback\) needs a shared token: set "
                                             r"CVD_DIST_TOKEN"):
        executor_for(tiny[0], tiny[0], "workers")
    monkeypatch.setenv("CVD_DIST_TOKEN", "short")
    with pytest.raises(NodeInputError, match="the worker token must have at least 16 characters, got 5"):
        executor_for(tiny[0], tiny[0], "workers")
    assert _scale_out._POOL is None


def test_replicas_are_cached_per_model_and_freed_with_it():
    model = torch.nn.Linear(4, 4)
    model.device = torch.device("cpu")  # what CVDModel reports
    first = replicas_for(model, model, ["meta", "cpu"])
    assert first[1] is model and first[0].weight.device.type == "meta"
    assert replicas_for(model, model, ["meta"])[0] is first[0]  # made once
    assert cached_replicas(model) == ["meta"]
    key = id(model)
    del model, first
    gc.collect()
    from nodes import _replicas
    assert key not in _replicas._REPLICAS  # freed with the model


def test_recipe_of_a_loaded_and_patched_model(tiny):
    model, folder = tiny
    patched = module_with_feature_cache(model, FeatureCacheConfig(strength=0.2, window=3, apply_to="cond"))
    recipe = model_recipe(patched)
    assert sorted(recipe["files"]) == ["cameractrl", "cvd", "motion_module", "unet"]
    assert all(len(ref["sha256"]) == 64 for ref in recipe["files"].values())
    assert recipe["dtype"] == "float32" and recipe["patches"][-1]["kind"] == "feature_cache"
    assert recipe["patches"][-1]["config"]["apply_to"] == "cond"
    assert verify(recipe, [folder])  # the files are found again under the same folder/name
    assert recipe_digest(recipe) != recipe_digest(model_recipe(model))  # the patch chain is part of it
    bare = torch.nn.Linear(2, 2)
    with pytest.raises(NodeInputError, match="does not say which files it was loaded from"):
        model_recipe(bare)
