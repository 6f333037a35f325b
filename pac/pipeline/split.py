"""How a mini-batch is cut into micro-batches and a micro-batch's rows among a stage's replicas.

Pure code. A stage's replicas split each micro-batch by contiguous row ranges in proportion to their
shares (the plan's `StagePlan.shares`); consecutive stages may split differently, so `route` says which
rows of which sender go to which receiver.
"""

from __future__ import annotations

import torch

from pac.heads import IGNORE
from pac.pipeline.errors import PipelineError


def split_counts(total: int, weights: tuple[int, ...] | int) -> tuple[int, ...]:
    """`total` items in parts proportional to `weights` (or `weights` equal parts), largest remainder first."""
    weights = (1,) * weights if isinstance(weights, int) else tuple(weights)
    if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise PipelineError(f"cannot split {total} rows by shares {weights}: shares must be >= 0 and not all 0")
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


def row_ranges(total: int, weights: tuple[int, ...] | int) -> tuple[tuple[int, int], ...]:
    """Contiguous half-open row ranges [start, stop) of each part."""
    ranges, start = [], 0
    for count in split_counts(total, weights):
        ranges.append((start, start + count))
        start += count
    return tuple(ranges)


def route(senders: tuple[tuple[int, int], ...], receivers: tuple[tuple[int, int], ...]):
    """(sender, receiver, start, stop) for every non-empty overlap of their row ranges (absolute rows)."""
    pieces = []
    for s, (s_start, s_stop) in enumerate(senders):
        for r, (r_start, r_stop) in enumerate(receivers):
            start, stop = max(s_start, r_start), min(s_stop, r_stop)
            if start < stop:
                pieces.append((s, r, start, stop))
    return tuple(pieces)


def select_rows(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {key: value[start:stop] for key, value in batch.items()}


def loss_count(batch: dict[str, torch.Tensor], task: str, family: str) -> int:
    """What the head's loss is a mean over: samples, or for language modelling the answer tokens
    (after the decoder-only shift: position t predicts token t + 1)."""
    if task != "lm":
        return int(batch["labels"].shape[0])
    labels = batch["labels"][:, 1:] if family == "decoder" else batch["labels"]
    return int((labels != IGNORE).sum())
