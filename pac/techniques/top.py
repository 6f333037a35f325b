"""The top n backbone layers tuned beside the side network, from the activation cache.

A side network that only reads frozen states cannot re-shape what the backbone's last layers compute;
LoRA (or full tuning) of the last n layers can. PAC keeps its cost: the cache holds the input of layer
L - n (and every tap below it the side network reads), so an epoch from the cache runs n layers forward
and backward instead of none, and never the L - n below them.

    h_{L-n}  = frozen layers 1 .. L-n (epoch 1 only; then read from the cache)
    h_L, ... = tuned layers L-n+1 .. L, from h_{L-n}          (trained: LoRA or every weight)
    out      = head(final(h_L) + Up(side(h_0, ..., h_L)))     (the side network reads the tuned taps too)

The tuned layers belong to the last stack (the decoder of an encoder-decoder model, whose encoder output
is then cached as well). The layers are the backbone's own modules: the model's own Hugging Face forward
runs them (pac.pipeline.backbone_stage), so every family keeps its masks, rotary and position handling.
"""

from __future__ import annotations

import torch
from torch import nn

from pac.errors import ConfigError

TOP_TUNINGS = ("lora", "full")
TOP_TARGETS = ("all", "attention")  # LoRA on every linear layer of the tuned layers, or on q and v only


def check_top(backbone, top_layers: int) -> None:
    last = len(backbone.stacks[-1])
    if not 0 <= top_layers <= last:
        raise ConfigError(f"top_layers must be 0..{last} (the layers of {backbone.name}'s last stack), "
                          f"got {top_layers}")


def _lora_targets(backbone, first: int, targets: str) -> list[str]:
    """The full names of the LoRA target modules in the last stack's layers first..: every linear layer
    (`all`; GPT-2's Conv1D projections too), or the attention's query and value (`attention`, as the
    `lora` baseline)."""
    from transformers.pytorch_utils import Conv1D

    from pac.techniques.targets import DEFAULT_LORA_TARGETS, LORA_TARGETS

    stack = backbone.stacks[-1]
    prefix = next(name for name, module in backbone.model.named_modules() if module is stack)
    attention = LORA_TARGETS.get(backbone.model_type, DEFAULT_LORA_TARGETS)
    names = []
    for index in range(first, len(stack)):
        for name, module in stack[index].named_modules():
            if not isinstance(module, torch.nn.Linear | Conv1D):
                continue
            if targets == "all" or name.split(".")[-1] in attention:
                names.append(f"{prefix}.{index}.{name}")
    if not names:
        raise ConfigError(f"no LoRA target in the top layers of {backbone.name} ({targets})")
    return names


class TopLayers(nn.Module):
    """The last `count` layers of `backbone`'s last stack, made trainable (LoRA or every weight).

    The backbone stays whole until `release(backbone)`: then every other weight is dropped and what is
    left runs from the cached input of the first tuned layer."""

    def __init__(self, backbone, count: int, tuning: str = "lora", rank: int = 8, alpha: int = 16,
                 targets: str = "all") -> None:
        super().__init__()
        check_top(backbone, count)
        if count < 1:
            raise ConfigError("TopLayers needs at least one layer")
        if tuning not in TOP_TUNINGS:
            raise ConfigError(f"top_tuning must be one of {', '.join(TOP_TUNINGS)}, got {tuning!r}")
        if targets not in TOP_TARGETS:
            raise ConfigError(f"top_targets must be one of {', '.join(TOP_TARGETS)}, got {targets!r}")
        if backbone.dtype != torch.float32:
            raise ConfigError(f"tuning the top layers needs a float32 backbone (quantization = \"none\"), "
                              f"not {backbone.dtype}")
        backbone.fingerprint()  # of the checkpoint's weights, before any is made trainable
        self.count, self.tuning, self.rank, self.alpha, self.targets = count, tuning, rank, alpha, targets
        self.stack_sizes = tuple(len(stack) for stack in backbone.stacks)
        self.first_local = self.stack_sizes[-1] - count  # h_{first_local}: the first tuned layer's input
        self.first = sum(self.stack_sizes) - count  # across stacks, as pipeline stages number layers
        if tuning == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                target_modules=_lora_targets(backbone, self.first_local, targets),
                                fan_in_fan_out=backbone.model_type == "gpt2")
            inject_adapter_in_model(config, backbone.model)
        self.layers = nn.ModuleList(backbone.stacks[-1][self.first_local:])  # registered: saved, moved
        for name, parameter in self.layers.named_parameters():
            parameter.requires_grad_(tuning == "full" or "lora_" in name)
        self._whole = self._stage(backbone, 0, release=False)  # epoch 1: every layer, the top ones trained
        self._top = self._stage(backbone, self.first, release=False)  # from a cached input (a kept cache)

    @staticmethod
    def _stage(backbone, first: int, release: bool):
        from pac.pipeline.backbone_stage import BackboneStage
        from pac.pipeline.layers import LayerSlice

        sizes = tuple(len(stack) for stack in backbone.stacks)
        return BackboneStage(backbone, LayerSlice(first, sum(sizes), sizes), release=release,
                             lm_head=False)

    def release(self, backbone) -> None:
        """Drop every weight but the tuned layers (and the final norm): epochs from the cache."""
        self._top = self._stage(backbone, self.first, release=True)
        self._whole = None

    @property
    def released(self) -> bool:
        return self._whole is None

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training changes: the LoRA factors, or every weight of the tuned layers."""
        return {k: v for k, v in self.layers.state_dict().items() if self.tuning == "full" or "lora_" in k}

    def run_whole(self, batch):
        """The backbone's forward with autograd through the tuned layers only: (StageStates)."""
        if self._whole is None:
            raise ConfigError("the backbone was released: run the tuned layers from cached states")
        return self._whole.run(batch, {}, grad=torch.is_grad_enabled())

    def run_from(self, batch, hidden: torch.Tensor, encoder_final: torch.Tensor | None = None):
        """The tuned layers from their cached input (and, encoder-decoder, the cached encoder output)."""
        from pac.pipeline.messages import ENCODER_HIDDEN, HIDDEN

        stage = self._top
        inbound = {HIDDEN: hidden} | ({ENCODER_HIDDEN: encoder_final} if encoder_final is not None else {})
        return stage.run(batch, inbound, grad=torch.is_grad_enabled())

def taps_with_top(taps: list[list[torch.Tensor | None]], states, first_local: int) -> list[list]:
    """The side network's taps: the cached ones up to h_{first_local}, the tuned layers' own above it."""
    last = len(taps) - 1
    merged = [list(stack) for stack in taps]
    for (stack, index), tensor in states.taps.items():
        if stack == last and index > first_local:
            merged[stack][index] = tensor
    return merged
