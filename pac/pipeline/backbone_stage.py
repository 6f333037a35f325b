"""Run backbone layers [first, end) of a frozen model: a pipeline stage's share of the backbone.

The model's own Hugging Face forward runs, so every family keeps its masks, rotary and position
handling: layers outside the stage are replaced by weightless pass-throughs, a forward pre-hook on the
stage's first layer substitutes the hidden state received from the previous stage, forward hooks take
every layer's output, and a hook on the stage's last layer stops the stack early (unless the stage ends
the stack, whose final norm must then run). T5 shares the relative position bias its first layer
computes: a pass-through standing in for that layer keeps only the bias table (heads x 32 numbers) and
computes the bias, which costs one small embedding lookup per stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from pac.models.backbone import Backbone, _first_tensor
from pac.pipeline.errors import PipelineError
from pac.pipeline.layers import LayerSlice, Segment
from pac.pipeline.messages import ENCODER_HIDDEN, HIDDEN


class _StopStack(Exception):
    """Raised from the hook on a stage's last layer to leave the Hugging Face stack early."""


class PassThrough(nn.Module):
    """Stands in for a layer outside the stage: returns its input and holds no weights."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class T5PassThrough(nn.Module):
    """A T5 block outside the stage, returning (hidden, position bias, cross bias) as T5Stack expects.

    Standing in for block 0 it computes the relative position bias that later blocks reuse."""

    def __init__(self, bias_attention: nn.Module | None = None) -> None:
        super().__init__()
        self.bias_attention = bias_attention  # block 0's self-attention, stripped to its bias table

    def forward(self, hidden_states, attention_mask=None, position_bias=None, encoder_hidden_states=None,
                encoder_attention_mask=None, encoder_decoder_position_bias=None, **kwargs):
        if self.bias_attention is not None:
            length = hidden_states.shape[1]
            position_bias = self.bias_attention.compute_bias(length, length, device=hidden_states.device)
        return hidden_states, position_bias, encoder_decoder_position_bias


@dataclass
class StageStates:
    """What a stage's backbone slice computed for one micro-batch."""

    taps: dict[tuple[int, int], torch.Tensor]  # (stack, i) -> h_i for every h_i this stage computed
    outbound: dict[str, torch.Tensor] = field(default_factory=dict)  # HIDDEN / ENCODER_HIDDEN for the next stage
    final: torch.Tensor | None = None  # the head's input (after the final norm): last stage only
    encoder_final: torch.Tensor | None = None  # the encoder's output, when this stage ran or was sent it


class BackboneStage:
    """Backbone layers [first, end) of `backbone`, which this object takes over and strips in place.

    With `release=True` the layers outside the stage, the word embeddings (unless the stage starts a
    stack) and the LM head (unless it is the last stage and `lm_head`) are dropped, so memory holds only the slice.
    Take `backbone.fingerprint()` before, if a cache key is needed: it digests every weight."""

    def __init__(self, backbone: Backbone, layers: LayerSlice, release: bool = True,
                 lm_head: bool = True) -> None:
        if layers.stack_sizes != tuple(len(s) for s in backbone.stacks):
            raise PipelineError(f"stage stacks {layers.stack_sizes} do not match the backbone's "
                                f"{tuple(len(s) for s in backbone.stacks)}")
        self.backbone, self.layers = backbone, layers
        self.dtype = next(backbone.model.parameters()).dtype
        lm_head = lm_head and layers.is_last and backbone.has_lm_head
        self.lm_head = backbone.lm_head() if lm_head else None  # the frozen LM head (language-model jobs)
        if release:
            release_outside(backbone, layers, lm_head)

    def run(self, batch: Mapping[str, torch.Tensor], inbound: Mapping[str, torch.Tensor],
            grad: bool = False, layers: LayerSlice | None = None) -> StageStates:
        """Run the slice on one micro-batch; `inbound` is what the previous stage sent (empty for stage 0).

        `grad=True` records autograd for what requires it (the trainable top layers of a model whose
        upper layers are tuned from the cache); the frozen stage of a pipeline runs without. `layers`: a
        part of the slice only (its frozen layers, then its tuned ones from their `outbound`)."""
        layers = layers or self.layers
        states = StageStates(taps={})
        hidden, encoder_hidden = inbound.get(HIDDEN), inbound.get(ENCODER_HIDDEN)
        last_stack = len(layers.stack_sizes) - 1
        with torch.set_grad_enabled(grad):
            for segment in layers.segments():
                hidden, stack_final = self._run_segment(segment, batch, hidden, encoder_hidden, states.taps)
                if segment.ends_stack and segment.stack == last_stack:
                    states.final = stack_final
                elif segment.ends_stack:
                    hidden, encoder_hidden = None, stack_final
        states.encoder_final = encoder_hidden
        if not layers.is_last:
            states.outbound = {k: v for k, v in ((HIDDEN, hidden), (ENCODER_HIDDEN, encoder_hidden)) if v is not None}
        return states

    def _run_segment(self, segment: Segment, batch, hidden, encoder_hidden, taps):
        if not segment.starts_stack and hidden is None:
            raise PipelineError(f"stage [{self.layers.first}, {self.layers.end}) needs the hidden state before "
                                f"its layer {segment.first} of stack {segment.stack} ('{HIDDEN}') and was not "
                                f"sent it")
        stack = self.backbone.stacks[segment.stack]
        handles = [_entry_hook(stack[segment.first], segment, hidden, taps)]
        for layer in range(segment.first, segment.end):
            stop = layer == segment.end - 1 and not segment.ends_stack
            handles.append(stack[layer].register_forward_hook(_output_hook(taps, segment.stack, layer + 1, stop)))
        try:
            stack_final = self._drive(segment, batch, hidden, encoder_hidden)
        except _StopStack:
            stack_final = None
        finally:
            for handle in handles:
                handle.remove()
        return taps[(segment.stack, segment.end)], stack_final

    def _drive(self, segment: Segment, batch, hidden, encoder_hidden) -> torch.Tensor:
        """The model's own forward for one stack; returns the stack's final state."""
        family, model = self.backbone.family, self.backbone.model
        ids_key, mask_key = ("decoder_input_ids", "decoder_attention_mask") if segment.stack == 1 else \
            ("input_ids", "attention_mask")
        if segment.starts_stack:
            inputs = {"input_ids": batch[ids_key]}
        else:  # a placeholder: the pre-hook on the stage's first layer substitutes `hidden`
            inputs = {"inputs_embeds": torch.zeros_like(hidden, dtype=self.dtype)}
        inputs["attention_mask"] = batch[mask_key]
        if family == "encoder":
            return model(**inputs).last_hidden_state
        if family == "decoder":
            return model.base_model(**inputs, use_cache=False).last_hidden_state
        if segment.stack == 0:
            return model.get_encoder()(**inputs).last_hidden_state
        if encoder_hidden is None:
            raise PipelineError(f"stage [{self.layers.first}, {self.layers.end}) runs decoder layers and needs "
                                f"the encoder's output ('{ENCODER_HIDDEN}'), which was not sent")
        return model.get_decoder()(**inputs, encoder_hidden_states=encoder_hidden,
                                   encoder_attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state


def _entry_hook(layer: nn.Module, segment: Segment, hidden, taps):
    """Layer `segment.first`: record h_0 (from the embeddings) or substitute the received hidden state."""

    def hook(_module, args, kwargs):
        if segment.starts_stack:
            taps[(segment.stack, 0)] = args[0] if args else kwargs["hidden_states"]
            return None
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return layer.register_forward_pre_hook(hook, with_kwargs=True)


def _output_hook(taps, stack: int, index: int, stop: bool):
    def hook(_module, _args, output):
        taps[(stack, index)] = _first_tensor(output)
        if stop:
            raise _StopStack

    return hook


def release_outside(backbone: Backbone, layers: LayerSlice, lm_head: bool) -> None:
    """Drop every weight the stage does not run: layers outside it, word embeddings, LM head."""
    t5 = backbone.model_type == "t5"
    for index, stack in enumerate(backbone.stacks):
        for layer in range(len(stack)):
            if layers.holds(index, layer) or isinstance(stack[layer], (PassThrough, T5PassThrough)):
                continue  # held, or released already
            if t5 and layer == 0:
                stack[0] = T5PassThrough(_bias_only(stack[0].layer[0].SelfAttention))
            else:
                stack[layer] = T5PassThrough() if t5 else PassThrough()
    model = backbone.model
    embeddings = model.get_input_embeddings().weight
    head = model.get_output_embeddings() if backbone.has_lm_head else None
    keep, drop = [], [embeddings]
    if any(segment.starts_stack for segment in layers.segments()):
        keep.append(embeddings)
    if head is not None:
        (keep if lm_head else drop).append(head.weight)
    _drop_parameters(model, [t for t in drop if not any(t is k for k in keep)])


def _bias_only(attention: nn.Module) -> nn.Module:
    attention.q = attention.k = attention.v = attention.o = None  # compute_bias needs none of them
    return attention


def _drop_parameters(model: nn.Module, targets: list[torch.Tensor]) -> None:
    """Replace every occurrence of the target parameters (tied ones included) by empty tensors."""
    ids = {id(t) for t in targets}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None and id(parameter) in ids:
                empty = torch.empty(0, *parameter.shape[1:], dtype=parameter.dtype, device=parameter.device)
                module._parameters[name] = nn.Parameter(empty, requires_grad=False)


def held_bytes(backbone: Backbone) -> int:
    """Bytes of the distinct parameter and buffer storages the backbone's model still holds."""
    seen, total = set(), 0
    for tensor in [*backbone.model.parameters(), *backbone.model.buffers()]:
        key = tensor.untyped_storage().data_ptr()
        if key not in seen and tensor.numel():
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total
