"""The training job being planned: how much data, how it is batched, at what precision."""

from __future__ import annotations

from dataclasses import dataclass

from pac.planner.errors import ProfileError

# Bytes per backbone weight at each quantisation: 16-bit as is; int8 and 4-bit group-wise with one
# 16-bit scale per group of 64 weights.
WEIGHT_BYTES = {32: 4.0, 16: 2.0, 8: 1.0 + 2.0 / 64, 4: 0.5 + 2.0 / 64}


@dataclass(frozen=True)
class TrainingJob:
    """What to train. Sizes in samples; dtypes as bytes per element."""

    samples: int  # samples in the data set (one epoch)
    batch_size: int = 32  # samples per mini-batch (one optimiser step)
    epochs: int = 3  # epoch 1 is phase 1 (pipeline + data parallel); the rest are phase 2 (cache)
    micro_batches: int | None = None  # micro-batches per mini-batch; None lets the planner choose
    weight_bits: int = 16  # bits a backbone weight takes in memory: 32 (fp32, unquantised), 16, 8 or 4
    wire_bytes: int = 2  # bytes per element of hidden states on the wire (fp16/bf16: 2, int8: 1)
    cache_bytes: int = 2  # bytes per element of hidden states in the activation cache
    side_state_bytes_per_param: int = 16  # fp32 parameter + gradient + two Adam moments
    gradient_bytes_per_param: int = 4  # what AllReduce sums (fp32 gradients)
    cache_copies: int = 1  # phase 2: each device's cached states, and copies of other devices' (cache.replicas)
    seq_len: int | None = None  # tokens per sample; a plan records its profile's (its times were costed at it)
    top_layers: int = 0  # the backbone's last n layers tuned too: all in the last stage, run in phase 2 as well
    padded_tokens: float | None = None  # tokens a sample's mini-batch pads to, on average (None: seq_len)
    computed_tokens: float | None = None  # tokens a sample's frozen layers compute where they skip padding
    controller_budget_bytes: int = 0  # memory the controller may use (0: not checked)
    controller_overhead_bytes: int = 0  # the controller's process with the model code loaded and no weights
    run_ahead: int = 2  # phase 1: the most mini-batches the frozen layers may run ahead (0: lock-step)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ProfileError(f"job.samples must be >= 1, got {self.samples}")
        if self.batch_size < 1:
            raise ProfileError(f"job.batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ProfileError(f"job.epochs must be >= 1, got {self.epochs}")
        if self.micro_batches is not None:
            if self.micro_batches < 1 or self.batch_size % self.micro_batches:
                raise ProfileError(f"job.micro_batches={self.micro_batches} must divide "
                                   f"batch_size={self.batch_size} (micro-batches are equal)")
        if self.weight_bits not in WEIGHT_BYTES:
            raise ProfileError(f"job.weight_bits must be one of {sorted(WEIGHT_BYTES)}, got {self.weight_bits}")
        if self.top_layers < 0:
            raise ProfileError(f"job.top_layers must be >= 0, got {self.top_layers}")
        for key in ("wire_bytes", "cache_bytes", "side_state_bytes_per_param", "gradient_bytes_per_param",
                    "cache_copies"):
            if getattr(self, key) < 1:
                raise ProfileError(f"job.{key} must be >= 1, got {getattr(self, key)}")

    @property
    def token_fraction(self) -> float:
        """The job's own batches against the profile's: a mini-batch pads to its longest sample, not to
        seq_len, so its layers compute (about) this fraction of the tokens the profile timed."""
        if self.padded_tokens is None or not self.seq_len:
            return 1.0
        return min(1.0, max(self.padded_tokens, 1.0) / self.seq_len)

    @property
    def real_share(self) -> float:
        """Where the frozen layers compute a sample's real tokens only (pac.models.unpadded): those against
        the padded ones (1: they compute the padding too)."""
        if self.computed_tokens is None or not self.padded_tokens:
            return 1.0
        return min(1.0, max(self.computed_tokens, 1.0) / max(self.padded_tokens, 1.0))

    def padding_scale(self, half_padded_ratio: float) -> float:
        """The frozen layers' forward at this job's `real_share` against none padded, on a device whose
        forward with half of each sample padded took `half_padded_ratio` of none padded: the real tokens'
        share plus what gathering them costs, measured as the half-padded ratio's excess over one half (1
        where the layers compute the padding)."""
        if half_padded_ratio >= 1.0:
            return 1.0
        return min(1.0, self.real_share + max(0.0, half_padded_ratio - 0.5))

    @property
    def weight_bytes_per_param(self) -> float:
        return WEIGHT_BYTES[self.weight_bits]

    @property
    def minibatches_per_epoch(self) -> int:
        return -(-self.samples // self.batch_size)

    def micro_batch_choices(self) -> list[int]:
        """Micro-batch counts the planner may choose: the job's own, else every divisor of batch_size."""
        if self.micro_batches is not None:
            return [self.micro_batches]
        return [m for m in range(1, self.batch_size + 1) if self.batch_size % m == 0]
