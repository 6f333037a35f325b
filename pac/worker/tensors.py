"""A job's tensors as bytes (safetensors) and its optimiser state moved between devices by name."""

from __future__ import annotations

import warnings

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors


def pack(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def unpack(data: bytes) -> dict[str, torch.Tensor]:
    return load_tensors(data) if data else {}


def optimizer_tensors(module: torch.nn.Module, optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as "opt.<parameter name>.<field>" tensors."""
    if optimizer is None:
        return {}
    out = {}
    for name, parameter in module.named_parameters():
        for key, value in optimizer.state.get(parameter, {}).items():
            if torch.is_tensor(value):
                out[f"opt.{name}.{key}"] = value
    return out


def load_optimizer_tensors(module: torch.nn.Module, optimizer, tensors: dict[str, torch.Tensor]) -> int:
    loaded = 0
    for name, parameter in module.named_parameters():
        state = {key.rsplit(".", 1)[1]: value.to(parameter.device, copy=True) for key, value in tensors.items()
                 if key.startswith(f"opt.{name}.") and "." not in key[len(f"opt.{name}."):]}
        if state:
            optimizer.state[parameter] = state
            loaded += 1
    return loaded


def advance_schedule(scheduler, steps: int) -> None:
    """Bring a fresh learning-rate schedule to where `steps` optimiser steps left it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
        for _ in range(steps):
            scheduler.step()
