"""Phase 2's arithmetic: which device trains which samples, in which order, how many per step.

Pure and deterministic; the controller sends its results to the devices, and equivalence tests replay
them in one process (`phase2_order`).
"""

from __future__ import annotations

import hashlib

import torch

from pac.data.batching import Encoded
from pac.pipeline.split import split_counts


def assign_phase2(keys: list[str], holders: dict[str, list[str]], weights: list[int],
                  counts: dict[str, int]) -> dict[str, list[str]]:
    """Give each phase-2 device `counts[device]` samples, keeping as many cached bytes where they are as
    possible: a sample goes preferably to the device already holding the most of its states
    (`holders[key][stage]`, `weights[stage]` ~ the stage's bytes per sample)."""
    left = dict(counts)
    assigned: dict[str, list[str]] = {device: [] for device in counts}
    options = []
    for index, key in enumerate(keys):
        local: dict[str, int] = {}
        for stage, device in enumerate(holders[key]):
            local[device] = local.get(device, 0) + weights[stage]
        for device, kept in local.items():
            if device in left:
                options.append((-kept, index, device))
    options.sort()
    done: set[int] = set()
    for _, index, device in options:
        if index not in done and left[device] > 0:
            assigned[device].append(keys[index])
            left[device] -= 1
            done.add(index)
    for index, key in enumerate(keys):
        if index not in done:
            device = max(left, key=lambda d: (left[d], d))
            assigned[device].append(key)
            left[device] -= 1
    return assigned


def phase2_steps(assigned: dict[str, list[str]], step_counts: list[dict[str, int]], seed: int,
                 epoch: int) -> list[dict[str, list[str]]]:
    """One phase-2 epoch: each device's samples in a seeded order, cut into its counts per step. The
    devices draw their orders in `assigned`'s order (the phase-2 ring order)."""
    mixed = int.from_bytes(hashlib.sha256(f"phase2/{seed}/{epoch}".encode()).digest()[:8], "little") >> 1
    generator = torch.Generator().manual_seed(mixed)
    orders = {d: [keys[i] for i in torch.randperm(len(keys), generator=generator).tolist()]
              for d, keys in assigned.items()}
    positions = dict.fromkeys(assigned, 0)
    steps = []
    for counts in step_counts:
        step = {}
        for device, count in counts.items():
            step[device] = orders[device][positions[device]:positions[device] + count]
            positions[device] += count
        steps.append(step)
    return steps


def phase2_counts(samples: int, batch_size: int, shares: dict[str, int]) -> list[dict[str, int]]:
    """Samples per device in each step: a full step as the plan says, the short last one in proportion."""
    devices = sorted(d for d, s in shares.items() if s > 0)
    full, last = divmod(samples, batch_size)
    counts = [dict(zip(devices, split_counts(batch_size, tuple(shares[d] for d in devices)), strict=True))] * full
    if last:
        counts.append(dict(zip(devices, split_counts(last, tuple(shares[d] for d in devices)), strict=True)))
    return counts


def phase2_order(items_by_key: dict[str, Encoded], assigned, step_counts, seed: int, epochs: range):
    """The mini-batches of phase-2 epochs as one process would see them (for equivalence checks)."""
    out = {}
    for epoch in epochs:
        out[epoch] = [[items_by_key[k] for device in step for k in step[device]]
                      for step in phase2_steps(assigned, step_counts, seed, epoch)]
    return out
