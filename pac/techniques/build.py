"""Build the trainable model of each technique around a loaded backbone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pac.errors import ConfigError
from pac.heads import Head, HeadConfig, HeadOutput
from pac.side.network import SideConfig, SideNetwork, side_spec
from pac.side.pruning import init_by_pruning
from pac.techniques.targets import DEFAULT_LORA_TARGETS, LORA_TARGETS

TECHNIQUES = ("parallel", "full", "lora", "adapters", "probe")  # probe: the head alone (a baseline's floor)


@dataclass(frozen=True)
class TechniqueConfig:
    name: str = "parallel"  # parallel | full | lora | adapters | probe
    reduction_factor: int = 8  # k for the side network; also the Houlsby bottleneck is d / k
    side_layers: tuple[int, ...] | None = None  # backbone layers followed by a side block (None: all)
    lora_rank: int = 8
    lora_alpha: int = 16
    top_layers: int = 0  # parallel: the backbone's last n layers tuned too, from the cache (0: the side network alone)
    top_tuning: str = "lora"  # how the top layers are tuned: lora | full
    top_targets: str = "all"  # LoRA of the top layers on: all (every linear layer) | attention (q and v)

    def __post_init__(self) -> None:
        if self.name not in TECHNIQUES:
            raise ConfigError(f"technique must be one of {', '.join(TECHNIQUES)}, got {self.name!r}")
        if self.lora_rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, got {self.lora_rank}")
        self.top  # noqa: B018 -- TopConfig checks top_layers, top_tuning and top_targets
        if self.top_layers and self.name != "parallel":
            raise ConfigError(f"top_layers tunes the backbone's last layers within PAC's technique; technique "
                              f"{self.name!r} has none")

    @property
    def top(self):
        """The tuned top layers' choices (pac.techniques.top.TopConfig)."""
        from pac.techniques.top import TopConfig

        return TopConfig(self.top_layers, self.top_tuning, self.top_targets, self.lora_rank, self.lora_alpha)


def model_masks(batch: dict[str, torch.Tensor], family: str) -> list[torch.Tensor]:
    if family == "encoder-decoder":
        return [batch["attention_mask"], batch["decoder_attention_mask"]]
    return [batch["attention_mask"]]


class ParallelAdaptersModel(nn.Module):
    """Frozen backbone (not a submodule: never trained, never saved) + side network + head, and with
    `top` (pac.techniques.top.TopLayers) the backbone's last layers tuned beside them."""

    def __init__(self, backbone, side: SideNetwork, head: Head, top=None) -> None:
        super().__init__()
        self.backbone = backbone
        self.side = side
        self.head = head
        self.top = top
        self._identity: tuple[str, str] | None = None

    def backbone_identity(self) -> tuple[str, str]:
        """(name, weight fingerprint) of the backbone, kept when the backbone is released."""
        if self.backbone is not None:
            self._identity = (self.backbone.name, self.backbone.fingerprint())
        if self._identity is None:
            raise ValueError("the backbone was released before its identity was recorded")
        return self._identity

    def release_backbone(self) -> None:
        """Drop the backbone (epochs from the activation cache); its identity stays for saving. Tuned top
        layers keep their own weights (and the final norm); every other weight goes."""
        self.backbone_identity()
        if self.top is not None:
            self.top.release(self.backbone)
        self.backbone = None

    def forward(self, batch: dict[str, torch.Tensor]) -> HeadOutput:
        return self.forward_recorded(batch)[0]

    def forward_recorded(self, batch: dict[str, torch.Tensor]):
        """One pass through the backbone: (head output, every tap per stack, the final state a cache
        record keeps: SideSpec.record_final's, or None)."""
        if self.top is None:
            out = self.backbone.run(batch)
            return self.forward_from_states(out.taps, out.final, batch), out.taps, out.final
        if self.top.released:  # a fresh frozen backbone (recomputing a corrupt record): it runs below the top
            out = self.backbone.run(batch)
            final = out.encoder_final if self.side.spec.record_final() is not None else None
            return self.forward_from_states(out.taps, final, batch), out.taps, final
        states = self.top.run_whole(batch)  # every tap: the frozen layers' and the tuned layers' own
        taps = [[states.taps[(s, i)] for i in range(size + 1)] for s, size in enumerate(self.side.spec.stack_sizes)]
        return self.head(states.final + self._side(taps, batch), batch), taps, states.encoder_final

    def forward_from_states(self, taps, final: torch.Tensor | None, batch: dict[str, torch.Tensor]) -> HeadOutput:
        """Side network and head (and tuned top layers) only: what an epoch from the activation cache
        runs. `final` is what SideSpec.record_final names: the head's input, or with tuned top layers the
        encoder's output (encoder-decoder) or None."""
        if self.top is not None:
            from pac.techniques.top import taps_with_top

            dtype = next(self.top.parameters()).dtype  # a 16-bit cache's states widen to the tuned layers' own
            hidden = taps[-1][self.top.first_local].to(dtype)
            states = self.top.run_from(batch, hidden, None if final is None else final.to(dtype))
            taps, final = taps_with_top(taps, states, self.top.first_local), states.final
        return self.head(final + self._side(taps, batch), batch)

    def _side(self, taps, batch: dict[str, torch.Tensor]) -> torch.Tensor | float:
        if not self.side.spec.has_blocks:
            return 0.0  # tuned top layers alone (side_layers = []): no side network
        return self.side(taps, model_masks(batch, self.side.spec.family))


class TunedBackboneModel(nn.Module):
    """full / lora / adapters: the backbone is inside the autograd graph."""

    def __init__(self, backbone, head: Head, extra: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model  # registered, so its trainable weights are parameters of this module
        self.extra = extra
        self.head = head

    def forward(self, batch: dict[str, torch.Tensor]) -> HeadOutput:
        final, _ = self.backbone._forward(batch)
        return self.head(final, batch)


class ProbeModel(nn.Module):
    """probe: the head alone on the frozen backbone's final state (run with no autograd graph). Not a way
    to fine-tune: the floor the other techniques are measured against (what the backbone already knows)."""

    def __init__(self, backbone, head: Head) -> None:
        super().__init__()
        self.backbone = backbone  # not a submodule: never trained, never saved
        self.head = head

    def forward(self, batch: dict[str, torch.Tensor]) -> HeadOutput:
        with torch.no_grad():
            final, _ = self.backbone._forward(batch)
        return self.head(final, batch)


class BottleneckAdapter(nn.Module):
    """Houlsby adapter: x + Up(act(Down(x))), Up starting at zero."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.nn.functional.gelu(self.down(x)))


# Per model type: module name suffixes (inside one layer) of the sublayer output projections.
ADAPTER_SITES = {
    "bert": ("attention.output.dense", "output.dense"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "t5": ("SelfAttention.o", "EncDecAttention.o", "DenseReluDense.wo"),
    "bart": ("self_attn.out_proj", "encoder_attn.out_proj", "fc2"),
}
DEFAULT_ADAPTER_SITES = ("self_attn.o_proj", "mlp.down_proj")


def _add_houlsby(backbone, config: TechniqueConfig) -> nn.ModuleList:
    sites = ADAPTER_SITES.get(backbone.model_type, DEFAULT_ADAPTER_SITES)
    adapters = nn.ModuleList()
    width = backbone.hidden_size
    for stack in backbone.stacks:
        for layer in stack:
            for name, module in layer.named_modules():
                if name and any(name == s or name.endswith("." + s) for s in sites):
                    adapter = BottleneckAdapter(width, max(1, width // config.reduction_factor))
                    adapter.to(backbone.trainable_dtype)
                    module.register_forward_hook(lambda _m, _i, out, a=adapter: a(out))
                    adapters.append(adapter)
    if not adapters:
        raise ConfigError(f"no adapter sites found in a {backbone.model_type} backbone")
    return adapters


def _add_lora(backbone, config: TechniqueConfig) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
        target_modules=LORA_TARGETS.get(backbone.model_type, DEFAULT_LORA_TARGETS),
        fan_in_fan_out=backbone.model_type == "gpt2",
    )
    inject_adapter_in_model(lora, backbone.model)
    for name, parameter in backbone.model.named_parameters():
        parameter.requires_grad_("lora_" in name)


def build_model(backbone, technique: TechniqueConfig, head_config: HeadConfig) -> nn.Module:
    lm = backbone.lm_head() if head_config.task == "lm" else None
    head = Head(head_config, backbone.hidden_size, backbone.family, lm)
    head.to(backbone.trainable_dtype)
    if technique.name == "parallel":
        spec = side_spec(backbone, SideConfig(technique.reduction_factor, technique.side_layers, technique.top_layers))
        if not spec.has_blocks and not technique.top_layers:
            raise ConfigError("side_layers is empty: with no side block, set top_layers (the backbone's last "
                              "layers tuned instead), or nothing would train but the head")
        side = init_by_pruning(SideNetwork(spec).to(backbone.device), backbone)
        if not spec.has_blocks:
            side.requires_grad_(False)  # nothing reads it: its entry and Up projections stay as they are
        top = technique.top.build(backbone)
        return ParallelAdaptersModel(backbone, side, head.to(backbone.device), top)
    if technique.name == "probe":
        if head_config.task == "lm":
            raise ConfigError("technique 'probe' trains the head alone, and a language-model head is the "
                              "backbone's own frozen one: nothing would train")
        return ProbeModel(backbone, head.to(backbone.device))
    if technique.name == "full":
        for parameter in backbone.model.parameters():
            parameter.requires_grad_(True)
        return TunedBackboneModel(backbone, head.to(backbone.device))
    if technique.name == "lora":
        _add_lora(backbone, technique)
        return TunedBackboneModel(backbone, head.to(backbone.device))
    adapters = _add_houlsby(backbone, technique)
    return TunedBackboneModel(backbone, head.to(backbone.device), extra=adapters.to(backbone.device))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
