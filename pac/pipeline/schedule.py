"""The one-forward-one-backward (1F1B) schedule of PipeDream-flush (paper Fig. 6b), as pure code.

Stage s of S first runs min(S - 1 - s, M) forward passes (warm-up), then alternates one forward and one
backward until every micro-batch has gone forward, then runs the remaining backward passes (cool-down).
At most S - s micro-batches are in flight on stage s, so activation memory is bounded by S, not M; the
gradients of all M micro-batches accumulate and the optimizer steps once per mini-batch (the flush).
"""

from __future__ import annotations

from dataclasses import dataclass

from pac.pipeline.errors import PipelineError


@dataclass(frozen=True)
class Op:
    """One operation of a stage: the forward ("F") or backward ("B") pass of micro-batch `micro`."""

    kind: str
    micro: int

    def __str__(self) -> str:
        return f"{self.kind}{self.micro}"


def one_f_one_b(stages: int, micro_batches: int) -> tuple[tuple[Op, ...], ...]:
    """Per stage, its ordered operations for one mini-batch."""
    if stages < 1 or micro_batches < 1:
        raise PipelineError(f"a schedule needs >= 1 stage and >= 1 micro-batch, got {stages} and {micro_batches}")
    return tuple(_stage_ops(stage, stages, micro_batches) for stage in range(stages))


def _stage_ops(stage: int, stages: int, micro_batches: int) -> tuple[Op, ...]:
    warmup = min(stages - 1 - stage, micro_batches)
    ops = [Op("F", m) for m in range(warmup)]
    backward = 0
    for forward in range(warmup, micro_batches):
        ops += [Op("F", forward), Op("B", backward)]
        backward += 1
    ops += [Op("B", m) for m in range(backward, micro_batches)]
    return tuple(ops)


def max_in_flight(ops: tuple[Op, ...]) -> int:
    """The most micro-batches a stage holds activations for at once (forward done, backward not yet)."""
    live = peak = 0
    for op in ops:
        live += 1 if op.kind == "F" else -1
        peak = max(peak, live)
    return peak
