"""Which backbone layers a pipeline stage holds, per stack.

Layers are numbered 0..L-1 across stacks in the order `Backbone.stacks` runs them (encoder, then decoder
for encoder-decoder models) and a stage holds the half-open range [first, end), as `StagePlan` writes it.
A range may cross the encoder/decoder border; `segments()` cuts it into per-stack pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

from pac.errors import ConfigError


@dataclass(frozen=True)
class Segment:
    """The part of a stage inside one stack: local layers [first, end) of stack `stack`."""

    stack: int
    first: int
    end: int
    stack_size: int

    @property
    def starts_stack(self) -> bool:  # this stage runs the stack's embeddings and Down_0
        return self.first == 0

    @property
    def ends_stack(self) -> bool:  # this stage produces the stack's final state
        return self.end == self.stack_size


@dataclass(frozen=True)
class LayerSlice:
    """Backbone layers [first, end) of a model whose stacks hold `stack_sizes` layers."""

    first: int
    end: int
    stack_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        total = sum(self.stack_sizes)
        if not 0 <= self.first < self.end <= total:
            raise ConfigError(
                f"stage layers [{self.first}, {self.end}) must be a non-empty range inside [0, {total})"
            )

    @property
    def num_layers(self) -> int:
        return sum(self.stack_sizes)

    @property
    def is_first(self) -> bool:
        return self.first == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.num_layers

    def segments(self) -> tuple[Segment, ...]:
        pieces, offset = [], 0
        for stack, size in enumerate(self.stack_sizes):
            first, end = max(self.first - offset, 0), min(self.end - offset, size)
            if first < end:
                pieces.append(Segment(stack, first, end, size))
            offset += size
        return tuple(pieces)

    def holds(self, stack: int, layer: int) -> bool:
        """Whether local layer `layer` of stack `stack` belongs to this stage."""
        return any(s.stack == stack and s.first <= layer < s.end for s in self.segments())


def even_slices(stack_sizes: tuple[int, ...], stages: int) -> tuple[LayerSlice, ...]:
    """Cut the layers into `stages` contiguous ranges as even as possible (tests, examples)."""
    total = sum(stack_sizes)
    if not 1 <= stages <= total:
        raise ConfigError(f"cannot cut {total} layers into {stages} stages: use 1..{total} stages")
    bounds = [round(i * total / stages) for i in range(stages + 1)]
    return tuple(LayerSlice(bounds[i], bounds[i + 1], stack_sizes) for i in range(stages))
