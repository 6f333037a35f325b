"""A pipeline stage's share of the side network: the side blocks of its backbone layers.

The first stage of each stack also holds that stack's Down_0 (`entry`), the last stage holds the final
norm and Up. Module names mirror `SideNetwork`'s, so `named_parameters()` and `state_dict()` keys are the
full network's keys ("entry.0.weight", "stacks.1.0.attention.q.weight", "up.weight"): the stages' state
dicts merge into one `SideNetwork` state dict for saving, and AllReduce pairs the same tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pac.pipeline.errors import PipelineError
from pac.pipeline.layers import LayerSlice, Segment
from pac.pipeline.messages import SIDE, SIDE_MEMORY
from pac.side.blocks import SideBlock, down_project, make_norm
from pac.side.network import SideNetwork, SideSpec, additive, attention_mask

DELTA = "delta"  # the last stage's Up(norm(a_L)), added to the backbone's final state


class SideSlice(nn.Module):
    def __init__(self, spec: SideSpec, layers: LayerSlice) -> None:
        super().__init__()
        if layers.stack_sizes != spec.stack_sizes:
            raise PipelineError(f"stage stacks {layers.stack_sizes} do not match the side network's {spec.stack_sizes}")
        self.spec, self.layers = spec, layers
        s = spec
        self.entry = nn.ModuleDict({str(g.stack): nn.Linear(s.hidden_size, s.width, bias=False)
                                    for g in layers.segments() if g.starts_stack})
        self.stacks = nn.ModuleDict({
            str(g.stack): nn.ModuleDict({
                str(position): SideBlock(s.hidden_size, s.width, s.heads, s.head_dim, s.mlp_inner, s.style, s.bias,
                                         cross_attention=(g.stack == 1))
                for position, tap in enumerate(s.taps[g.stack]) if g.first < tap <= g.end
            })
            for g in layers.segments()
        })
        if layers.is_last:
            self.final_norm = make_norm(s.style, s.width) if s.style.pre_norm else nn.Identity()
            self.up = nn.Linear(s.width, s.hidden_size, bias=False)
        self.compute_dtype = torch.float32  # as SideNetwork.compute_dtype: set per job, not saved

    @classmethod
    def from_network(cls, network: SideNetwork, layers: LayerSlice) -> SideSlice:
        """The slice of a full (initialised or trained) side network, as copies of its tensors."""
        piece = cls(network.spec, layers).to(next(network.parameters()).device, next(network.parameters()).dtype)
        piece.load_full_state_dict(network.state_dict())
        return piece

    def load_full_state_dict(self, full: Mapping[str, torch.Tensor]) -> None:
        """Take this slice's tensors from a full `SideNetwork` state dict (every key must be there)."""
        mine = self.state_dict()
        missing = sorted(set(mine) - set(full))
        if missing:
            raise PipelineError(f"side network state lacks {len(missing)} tensors of this stage, e.g. {missing[0]}")
        self.load_state_dict({key: full[key] for key in mine})

    def forward(self, taps: Mapping[tuple[int, int], torch.Tensor], masks: list[torch.Tensor],
                inbound: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """taps[(stack, i)] = h_i; masks: padding masks per stack; inbound: SIDE / SIDE_MEMORY received.

        Returns SIDE (and SIDE_MEMORY for enc-dec) for the next stage, or DELTA on the last stage, in the
        parameters' dtype whatever the arithmetic."""
        first = next(self.parameters(), None)
        if first is None or self.compute_dtype == first.dtype:  # no side block here: the state passes through
            return self._forward(taps, masks, inbound)
        dtype = first.dtype
        # A side state received in fp32 goes on in the autocast dtype it was computed in (exact), so a
        # pipeline does the arithmetic of one process.
        inbound = {key: value.to(self.compute_dtype) for key, value in inbound.items()}
        with torch.autocast(first.device.type, dtype=self.compute_dtype):
            return {key: value.to(dtype) for key, value in self._forward(taps, masks, inbound).items()}

    def _forward(self, taps, masks, inbound) -> dict[str, torch.Tensor]:
        a, memory = inbound.get(SIDE), inbound.get(SIDE_MEMORY)
        last_stack = len(self.spec.stack_sizes) - 1
        for segment in self.layers.segments():
            a = self._run_segment(segment, taps, masks, a, memory)
            if segment.ends_stack and segment.stack < last_stack:
                memory, a = a, None
        if self.layers.is_last:
            return {DELTA: self.up(self.final_norm(a))}
        out = {SIDE: a, SIDE_MEMORY: memory}
        return {key: value for key, value in out.items() if value is not None}

    def _run_segment(self, segment: Segment, taps, masks, a, memory) -> torch.Tensor:
        stack = segment.stack
        if segment.starts_stack:
            entry = self.entry[str(stack)]
            a = down_project(entry, taps[(stack, 0)])  # a 16-bit backbone's h_0 feeds an fp32 side
        elif a is None:
            raise PipelineError(f"stage [{self.layers.first}, {self.layers.end}) needs the side state "
                                f"('{SIDE}') of the previous stage and was not sent it")
        if stack == 1 and memory is None:
            raise PipelineError(f"stage [{self.layers.first}, {self.layers.end}) runs side decoder blocks and "
                                f"needs the side encoder's output ('{SIDE_MEMORY}'), which was not sent")
        mask = additive(attention_mask(masks[stack], self.spec.causal_stacks[stack]), torch.float32)
        memory_mask = masks[0].bool()[:, None, None, :] if stack == 1 else None
        for position, block in self.stacks[str(stack)].items():
            tap = self.spec.taps[stack][int(position)]
            a = block(taps[(stack, tap)], a, mask, memory, memory_mask)
        return a
