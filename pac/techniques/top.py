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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pac.errors import ConfigError
from pac.formats import TOP_TARGETS, TOP_TUNINGS


@dataclass(frozen=True)
class TopConfig:
    """How the backbone's last layers are tuned beside the side network (what a stage device or a phase-2
    member is told; pac.techniques.build.TechniqueConfig holds the same choices for one device)."""

    count: int = 0  # the last stack's last n layers; 0: none
    tuning: str = "lora"  # lora | full
    targets: str = "all"  # LoRA on: all (every linear layer) | attention (q and v)
    rank: int = 8  # LoRA rank
    alpha: int = 16  # LoRA alpha

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError(f"top_layers must be >= 0, got {self.count}")
        if self.tuning not in TOP_TUNINGS:
            raise ConfigError(f"top_tuning must be one of {', '.join(TOP_TUNINGS)}, got {self.tuning!r}")
        if self.targets not in TOP_TARGETS:
            raise ConfigError(f"top_targets must be one of {', '.join(TOP_TARGETS)}, got {self.targets!r}")
        if self.rank < 1 or self.alpha < 1:
            raise ConfigError(f"the top layers' LoRA rank and alpha must be >= 1, got {self.rank}, {self.alpha}")

    def build(self, backbone) -> TopLayers | None:
        """The tuned layers in `backbone` (LoRA injected into its own modules), or None for count 0."""
        if not self.count:
            return None
        return TopLayers(backbone, self.count, self.tuning, self.rank, self.alpha, self.targets)


TOP_PREFIX = "top.layers."  # the trained tensors' names in a job's state: as ParallelAdaptersModel names them


def trained_top_tensors(top: TopLayers | None) -> dict[str, torch.Tensor]:
    """The tuned layers' trained tensors as a job's state names them ("top.layers.<i>...")."""
    if top is None:
        return {}
    return {TOP_PREFIX + k: v for k, v in top.trained_state().items()}


def state_from_adapter(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved adapter's tensors as a job's state names them: its "top.<i>..." as "top.layers.<i>..."."""
    return {(TOP_PREFIX + k[4:] if k.startswith("top.") and not k.startswith(TOP_PREFIX) else k): v
            for k, v in tensors.items()}


TRAINED_PREFIXES = ("side.", "head.", TOP_PREFIX)  # what a job's state holds of the model (besides "opt.*")


def trained_tensors(model) -> dict[str, torch.Tensor]:
    """A ParallelAdaptersModel's trained tensors as a job's state names them."""
    return ({f"side.{k}": v for k, v in model.side.state_dict().items()}
            | {f"head.{k}": v for k, v in model.head.state_dict().items()} | trained_top_tensors(model.top))


def load_trained(model, state: dict[str, torch.Tensor]) -> None:
    """Load a job's state (side network, head, tuned top layers) into a ParallelAdaptersModel."""
    model.load_state_dict({k: v for k, v in state.items() if k.startswith(TRAINED_PREFIXES)}, strict=False)


def load_top_tensors(top: TopLayers | None, state: dict[str, torch.Tensor], where: str) -> None:
    """Load the trained tensors of `state` ("top.layers.*") into `top`; every one must be there."""
    if top is None:
        return
    tensors = {k[len(TOP_PREFIX):]: v for k, v in state.items() if k.startswith(TOP_PREFIX)}
    missing = sorted(set(top.trained_state()) - set(tensors))
    if missing:
        raise ConfigError(f"{where}: the tuned top layers' state lacks {len(missing)} tensors, e.g. {missing[0]}")
    top.layers.load_state_dict(tensors, strict=False)


def fit_top(technique, backbone, log=print):
    """`technique` (TechniqueConfig) with at most as many tuned top layers as `backbone`'s last stack has:
    the product's default of 3 on a smaller model tunes every layer of it."""
    import dataclasses

    last = len(backbone.stacks[-1])
    if technique.top_layers <= last:
        return technique
    log(f"top_layers {technique.top_layers}: {backbone.name}'s last stack has {last} layers; tuning all {last}")
    return dataclasses.replace(technique, top_layers=last)


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

    def train(self, mode: bool = True) -> TopLayers:
        """The tuned layers run without dropout, in training too: what they compute is then a function of
        their input and weights alone, so a pipeline stage, a phase-2 member and one process compute the
        same step, and a resumed job the same adapter (no random stream to carry across devices)."""
        super().train(mode)
        self.layers.eval()
        return self

    @contextlib.contextmanager
    def untuned(self) -> Iterator[None]:
        """Inside: the backbone's own modules compute as before tuning (the LoRA factors switched off), so
        the same backbone answers as the untuned model. Full tuning changed the weights themselves: refused."""
        if self.tuning != "lora":
            raise ConfigError("fully tuned top layers replaced the backbone's weights: load it again for the "
                              "untuned model")
        from peft.tuners.tuners_utils import BaseTunerLayer

        tuners = [m for m in self.layers.modules() if isinstance(m, BaseTunerLayer)]
        for module in tuners:
            module.enable_adapters(False)
        try:
            yield
        finally:
            for module in tuners:
                module.enable_adapters(True)

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
