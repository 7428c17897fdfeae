"""A model's replica on another device, for the multi-device sampler.

``replica_on(model, device)`` returns ``model`` itself when it already computes on ``device``
(replicas on one device share the weights: a forward pass keeps no state on the module, so
concurrent calls are safe). Otherwise it deep-copies the module with every parameter and buffer
copied straight to ``device`` (never a second copy on the source device first), keeping ties
between shared tensors, dtypes and every other attribute (feature-cache settings, attention
settings). The caller owns the lifetime: ``nodes/_replicas.py`` caches replicas per model and
drops them when the model is freed.
"""

from __future__ import annotations

import copy
from itertools import chain

import torch
from torch import nn


def _device_of(module: nn.Module) -> torch.device:
    for tensor in chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def replica_on(model: nn.Module, device) -> nn.Module:
    device = torch.device(device)
    if _device_of(model) == device:
        return model
    memo = {}
    for tensor in chain(model.parameters(), model.buffers()):
        if id(tensor) in memo:
            continue
        moved = tensor.detach().to(device, copy=True)
        memo[id(tensor)] = nn.Parameter(moved, requires_grad=tensor.requires_grad) \
            if isinstance(tensor, nn.Parameter) else moved
    replica = copy.deepcopy(model, memo)
    return replica.eval() if not model.training else replica
