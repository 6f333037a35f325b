"""Parallel Adapters: the side network that reads the frozen backbone's hidden states (paper §4.1).

    a_0 = Down_0(h_0);   a_i = f_i(mu_i * Down_i(h_i) + (1 - mu_i) * a_{i-1});   out = Up(norm(a_L))

`SideSpec` holds every shape fact, so a side network can be rebuilt from a saved adapter or trained
from cached hidden states without the backbone in memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from pac.errors import ConfigError
from pac.side.blocks import KeyValues, SideBlock, down_project, make_norm
from pac.side.weights import BlockStyle, block_style


@dataclass(frozen=True)
class SideConfig:
    """What the user chooses about the side network."""

    reduction_factor: int = 8  # k: every width of the side network is the backbone's divided by k
    layers: tuple[int, ...] | None = None  # backbone layers (0-based, across stacks) with a side block; None: all
    top_layers: int = 0  # the backbone's last n layers are tuned too (pac.techniques.top); 0: none

    def __post_init__(self) -> None:
        if self.reduction_factor < 1:
            raise ConfigError(f"reduction_factor must be >= 1, got {self.reduction_factor}")
        if self.top_layers < 0:
            raise ConfigError(f"top_layers must be >= 0, got {self.top_layers}")


@dataclass(frozen=True)
class SideSpec:
    """Every shape fact of a side network; JSON-serialisable (saved with the adapter)."""

    family: str
    hidden_size: int  # d, the backbone width
    width: int  # r = d / k
    heads: int
    head_dim: int
    mlp_inner: int
    bias: bool
    style: BlockStyle
    stack_sizes: tuple[int, ...]  # backbone layers per stack (encoder, [decoder])
    taps: tuple[tuple[int, ...], ...]  # per stack, indices i in 1..L of h_i followed by a side block
    top_layers: int = 0  # the last stack's last n layers are tuned beside the side network

    @property
    def causal_stacks(self) -> tuple[bool, ...]:
        if self.family == "decoder":
            return (True,)
        if self.family == "encoder-decoder":
            return (False, True)
        return (False,)

    @property
    def has_blocks(self) -> bool:
        """False: no side block at all (`side_layers = []`, with tuned top layers): no side network runs."""
        return any(self.taps)

    def needed_taps(self) -> tuple[tuple[int, ...], ...]:
        """Per stack, which hidden states h_i the side network reads (always h_0; none without blocks)."""
        if not self.has_blocks:
            return tuple(() for _ in self.taps)
        return tuple((0, *stack) for stack in self.taps)

    @property
    def top_input(self) -> int:
        """With tuned top layers: the index in the last stack of h_i, the first tuned layer's input."""
        return self.stack_sizes[-1] - self.top_layers

    def cached_taps(self) -> tuple[tuple[int, ...], ...]:
        """Per stack, the hidden states an activation-cache record keeps: the needed taps, except that
        with tuned top layers the last stack keeps those below them and their input h_{L-n} (the tuned
        layers compute the rest again every epoch)."""
        needed = self.needed_taps()
        if not self.top_layers:
            return needed
        first = self.top_input
        return (*needed[:-1], tuple(sorted({i for i in needed[-1] if i <= first} | {first})))

    def record_final(self) -> int | None:
        """The stack whose final state (after the final norm) a cache record keeps after the taps: the
        last stack's (the head's input), or with tuned top layers the encoder's output that an
        encoder-decoder's tuned decoder layers cross-attend to (None: no final state is kept)."""
        if not self.top_layers:
            return len(self.stack_sizes) - 1
        return 0 if len(self.stack_sizes) > 1 else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SideSpec:
        data = dict(data)
        data["style"] = BlockStyle(**data["style"])
        data["stack_sizes"] = tuple(data["stack_sizes"])
        data["taps"] = tuple(tuple(t) for t in data["taps"])
        return cls(**data)


def _side_heads(heads: int, head_dim: int, width: int, rope: bool) -> tuple[int, int]:
    """Structural pruning keeps whole heads: as few as hold the width with at most the backbone's head
    dimension (fewer, wider heads also run far faster than many 2-8 wide ones)."""
    fewest = max(1, -(-width // head_dim))
    for count in range(fewest, max(fewest, min(heads, width)) + 1):
        side_dim = width // count
        if width % count == 0 and side_dim >= 2 and (not rope or side_dim % 2 == 0):
            return count, side_dim
    raise ConfigError(f"side width {width} cannot be split into attention heads of at most {head_dim}")


def side_spec(backbone, config: SideConfig) -> SideSpec:
    if backbone.layer_shape is None:
        raise ConfigError(f"the side network cannot be built beside {backbone.model_type} layers: their "
                          f"projections are not the attention and MLP layout it prunes from")
    k = config.reduction_factor
    d = backbone.hidden_size
    width = max(2, d // k)
    style = block_style(backbone.model_type, backbone.family, backbone.config, backbone.num_heads, d)
    heads, head_dim = _side_heads(style.num_heads, style.head_dim, width, style.rope_theta is not None)
    width = heads * head_dim
    stack_sizes = tuple(len(stack) for stack in backbone.stacks)
    chosen = set(range(sum(stack_sizes))) if config.layers is None else set(config.layers)
    bad = sorted(i for i in chosen if not 0 <= i < sum(stack_sizes))
    if bad:
        raise ConfigError(f"side layers {bad} out of range: the backbone has {sum(stack_sizes)} layers (0-based)")
    taps, offset = [], 0
    for size in stack_sizes:
        taps.append(tuple(i - offset + 1 for i in range(offset, offset + size) if i in chosen))
        offset += size
    from pac.techniques.top import check_top

    check_top(backbone, config.top_layers)
    return SideSpec(
        family=backbone.family, hidden_size=d, width=width, heads=heads, head_dim=head_dim,
        mlp_inner=max(1, backbone.layer_shape.mlp_inner // k), bias=backbone.layer_shape.attention_bias,
        style=style, stack_sizes=stack_sizes, taps=tuple(taps), top_layers=config.top_layers,
    )


@dataclass
class SideCache:
    """What a side network keeps between decoding steps: the keys and values of every block of its last
    stack, the positions seen, and (encoder-decoder) the encoder stack's output, computed once."""

    blocks: list[tuple[KeyValues, KeyValues]]  # per block of the last stack: (self, cross) attention
    length: int = 0
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None


class SideNetwork(nn.Module):
    def __init__(self, spec: SideSpec) -> None:
        super().__init__()
        self.spec = spec
        s = spec
        self.entry = nn.ModuleList(nn.Linear(s.hidden_size, s.width, bias=False) for _ in s.stack_sizes)
        self.stacks = nn.ModuleList(
            nn.ModuleList(
                SideBlock(s.hidden_size, s.width, s.heads, s.head_dim, s.mlp_inner, s.style, s.bias,
                          cross_attention=(stack_index == 1))
                for _ in s.taps[stack_index]
            )
            for stack_index in range(len(s.stack_sizes))
        )
        self.final_norm = make_norm(s.style, s.width) if s.style.pre_norm else nn.Identity()
        self.up = nn.Linear(s.width, s.hidden_size, bias=False)
        nn.init.zeros_(self.up.weight)  # step 0 equals the backbone
        # Activation checkpointing: keep only each block's inputs for backward and recompute the rest
        # (memory for about one more side forward). Not part of the model: not saved with an adapter.
        self.checkpoint_blocks = False
        # The side network's arithmetic: float32, or bfloat16 autocast (mixed precision: parameters,
        # gradients and optimiser state stay float32; attention runs in float32). Not saved either.
        self.compute_dtype = torch.float32

    def forward(self, taps: list[list[torch.Tensor | None]], masks: list[torch.Tensor],
                cache: SideCache | None = None) -> torch.Tensor:
        """taps[s][i] = h_i of stack s (entries not in needed_taps may be None); masks[s]: [batch, len].

        Decoding (`cache`, from `new_cache`): the last stack's taps hold only the new positions, its mask
        every position so far; the other stacks run on the first call only."""
        dtype = self.up.weight.dtype
        if self.compute_dtype == dtype:
            return self._forward(taps, masks, cache)
        with torch.autocast(self.up.weight.device.type, dtype=self.compute_dtype):
            return self._forward(taps, masks, cache).to(dtype)

    def new_cache(self) -> SideCache:
        if not self.spec.causal_stacks[-1]:
            raise ConfigError(f"a side network of an {self.spec.family} model does not decode")
        return SideCache([(KeyValues(), KeyValues()) for _ in self.stacks[-1]])

    def _forward(self, taps, masks, cache: SideCache | None = None) -> torch.Tensor:
        memory = memory_mask = None
        a = None
        last = len(self.stacks) - 1
        for stack_index, blocks in enumerate(self.stacks):
            if cache is not None and stack_index < last and cache.memory is not None:
                memory, memory_mask = cache.memory, cache.memory_mask  # the encoder ran on the first call
                continue
            decoding = cache is not None and stack_index == last
            states = taps[stack_index]
            if decoding:
                mask = decoding_mask(masks[stack_index], cache.length, states[0].shape[1])
            else:
                mask = attention_mask(masks[stack_index], self.spec.causal_stacks[stack_index])
            mask = additive(mask, torch.float32)  # attention runs in fp32 (SideAttention)
            a = down_project(self.entry[stack_index], states[0])
            checkpointing = self.checkpoint_blocks and torch.is_grad_enabled()
            for index, (layer, block) in enumerate(zip(self.spec.taps[stack_index], blocks, strict=True)):
                if checkpointing:
                    a = torch.utils.checkpoint.checkpoint(block, states[layer], a, mask, memory, memory_mask,
                                                          use_reentrant=False)
                else:
                    a = block(states[layer], a, mask, memory, memory_mask,
                              cache=cache.blocks[index] if decoding else None)
            memory, memory_mask = a, masks[stack_index].bool()[:, None, None, :]
            if cache is not None and stack_index < last:
                cache.memory, cache.memory_mask = memory, memory_mask
        if cache is not None:
            cache.length += taps[last][0].shape[1]
        return self.up(self.final_norm(a))


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the 0 / -inf float mask attention adds (what it would make of the boolean one
    itself, in every block; made once, so backward keeps one copy instead of one per block)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def decoding_mask(padding: torch.Tensor, start: int, new: int) -> torch.Tensor:
    """Boolean [batch, 1, new, start + new] mask of the `new` positions after `start` (causal): each
    attends to every earlier position and itself that `padding` ([batch, start + new]) does not mask. A
    padding position (a left-padded prompt's) attends to itself alone: a row with nothing to attend to
    would make NaN, which the real positions would read through their zero weights."""
    keys = padding.bool()[:, None, None, :]
    columns = torch.arange(start + new, device=padding.device)[None, :]
    rows = torch.arange(start, start + new, device=padding.device)[:, None]
    return (keys & (columns <= rows)[None, None]) | (columns == rows)[None, None]


def attention_mask(padding: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean [batch, 1, len, len] mask: True where a query may attend to a key."""
    keys = padding.bool()[:, None, None, :]
    if not causal:
        return keys
    length = padding.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=padding.device).tril()
    return keys & lower[None, None]
