"""Tolerances for equivalence tests, derived from the arithmetic instead of picked to pass.

Two computations that are equal in exact arithmetic (one process vs. a pipeline, a DDP all-reduce vs. one
mini-batch) differ in floating point only by rounding in another summation order. How large that can be
follows from the precision and from the size of what is compared, never from one element's own value
(an element that is small because terms cancel carries the rounding of the large terms):

- `assert_rounding_close`: results of a computation at most `depth` roundings deep: every element within
  `depth` units of the precision's rounding (2**-24 for fp32) of the tensor's scale, max |want|. The depth
  is the number of accumulating operations a value passes through (a matmul's reduction length, layers).
- `assert_trained_close`: parameters after AdamW steps. Adam divides each gradient element by its own
  running size, so where an element's gradient is itself at the level of the rounding (terms that
  cancel), rounding can change that element's step by as much as the step: element by element there is
  no bound below the farthest AdamW can move an element, the sum of the schedule's learning rates (its
  normalised step is at most about 1). Such elements are few, so the root mean square of a tensor's
  difference must stay a small share of that distance. A real divergence (a wrong gradient weighting, a
  missed or extra step, another sample order) changes most elements' steps and fails by orders of
  magnitude.
- where the code promises bit-identity, tests use torch.equal (or assert_close with rtol=atol=0).
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8,
                 torch.float64: 2.0**-53}

# The share of AdamW's largest possible movement that rounding in fp32 gradients may account for, as a
# root mean square over a tensor.
ADAM_ROUNDING_SHARE = 1e-3


def rounding_tolerance(want: torch.Tensor, depth: float, dtype: torch.dtype = torch.float32) -> float:
    """The absolute tolerance for `want` after `depth` roundings in `dtype`: relative to the tensor's scale."""
    scale = want.detach().abs().max().item() if want.numel() else 0.0
    return depth * UNIT_ROUNDOFF[dtype] * scale


def assert_rounding_close(got: torch.Tensor, want: torch.Tensor, depth: float,
                          dtype: torch.dtype = torch.float32, msg: str | None = None) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=rounding_tolerance(want, depth, dtype), msg=msg)


def adam_movement_bound(learning_rate: float, total_steps: int, steps: int | None = None,
                        warmup_fraction: float = 0.06) -> float:
    """Sum of the learning rates of the first `steps` steps of pac.train.loop's schedule (linear warm-up,
    linear decay), read off the real scheduler: the farthest AdamW moves an element in those steps."""
    from pac.train.loop import TrainConfig, make_optimizer

    parameter = torch.nn.Linear(1, 1)
    config = TrainConfig(learning_rate=learning_rate, warmup_fraction=warmup_fraction)
    optimizer, schedule = make_optimizer(parameter, config, total_steps)
    total = 0.0
    for _ in range(total_steps if steps is None else steps):
        total += optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
    return total


def rms_differences(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    """The root mean square of each tensor's difference (same keys, same shapes)."""
    assert set(got) == set(want), f"different tensors: {sorted(set(got) ^ set(want))}"
    differences = {}
    for key, value in want.items():
        assert got[key].shape == value.shape, f"{key}: shape {tuple(got[key].shape)} != {tuple(value.shape)}"
        differences[key] = (got[key].double() - value.double()).square().mean().sqrt().item()
    return differences


def assert_trained_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], movement_bound: float,
                         share: float = ADAM_ROUNDING_SHARE) -> None:
    """Every tensor of `got` differs from `want`'s by at most `share` of AdamW's movement bound (RMS)."""
    limit = share * movement_bound
    for key, rms in rms_differences(got, want).items():
        assert rms <= limit, f"{key}: RMS difference {rms:.3g} > {share:g} of AdamW's reach {movement_bound:.3g}"
