"""The single-device training loop: AdamW, linear warm-up and decay, evaluation, greedy generation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pac.data.batching import Encoded, collate, to_device
from pac.errors import ConfigError
from pac.formats import ALLREDUCE_PRECISIONS, SIDE_PRECISIONS
from pac.metrics import classification_metrics, regression_metrics
from pac.techniques.build import trainable_parameters


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.06  # of all steps, linear warm-up then linear decay to zero
    seed: int = 0
    max_grad_norm: float = 1.0
    activation_checkpointing: bool = False  # Parallel Adapters: recompute side blocks in backward (less memory)
    side_precision: str = "fp32"  # Parallel Adapters' arithmetic: fp32, or bf16 autocast (mixed precision)
    patience: int = 0  # with a validation split: stop after this many epochs without a better score (0: never)
    allreduce_precision: str = "fp32"  # across devices: gradients travel as fp32, bf16 or fp16 (summed in fp32)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.allreduce_precision not in ALLREDUCE_PRECISIONS:
            raise ConfigError(f"allreduce_precision must be one of {', '.join(ALLREDUCE_PRECISIONS)}, "
                              f"got {self.allreduce_precision!r}")
        if self.side_precision not in SIDE_PRECISIONS:
            raise ConfigError(f"side_precision must be one of {', '.join(SIDE_PRECISIONS)}, got {self.side_precision!r}")

    @property
    def side_dtype(self) -> torch.dtype:
        return SIDE_DTYPES[self.side_precision]


SIDE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # one per pac.formats.SIDE_PRECISIONS
assert tuple(SIDE_DTYPES) == SIDE_PRECISIONS


def apply_side_options(side, config: TrainConfig) -> None:
    """Set a side network's (or pipeline slice's) run-time options from the job: neither is saved."""
    side.compute_dtype = config.side_dtype
    if hasattr(side, "checkpoint_blocks"):
        side.checkpoint_blocks = config.activation_checkpointing


@dataclass
class StepInfo:
    epoch: int
    step: int
    total_steps: int
    loss: float
    samples_per_s: float


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    epoch_times_s: list[float] = field(default_factory=list)
    eval_history: list[dict] = field(default_factory=list)
    validation_history: list[dict] = field(default_factory=list)  # {"epoch", metric: value} per epoch
    best_epoch: int | None = None  # with a validation split: the epoch whose weights the model ends with
    stopped_early: bool = False
    best_state: dict | None = None  # the best epoch's trainable weights, while training


def batches(items: list[Encoded], batch_size: int, generator: torch.Generator | None) -> list[list[Encoded]]:
    order = torch.randperm(len(items), generator=generator).tolist() if generator else range(len(items))
    ordered = [items[i] for i in order]
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel for every parameter (CPU and CUDA, floating point): one
    kernel for all tensors instead of a loop of small ops; the same update up to float rounding."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make_optimizer(model, config: TrainConfig, total_steps: int):
    optimizer = adamw(trainable_parameters(model), config.learning_rate, config.weight_decay)
    warmup = max(1, int(total_steps * config.warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train(model, items: list[Encoded], task: str, pad_id: int, config: TrainConfig,
          evaluate_on: list[Encoded] | None = None,
          on_step: Callable[[StepInfo], None] | None = None, states=None,
          batch_order: Callable[[int], list[list[Encoded]]] | None = None,
          validate_on: list[Encoded] | None = None) -> TrainResult:
    """Train `model`; with `states` (a pac.train.cached.CachedStates) Parallel Adapters read the
    activation cache, and the backbone is released once every training sample is cached.

    `batch_order(epoch)` gives an epoch's mini-batches instead of the seeded shuffle (the order a
    distributed job's phase 2 follows, so a single process can reproduce it). With `validate_on` (a
    validation split) the model is scored after every epoch, training stops after `config.patience`
    epochs without a better score (0: it runs every epoch), and the model ends with the best epoch's
    weights."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(items) / config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch * config.epochs)
    device = next(iter(trainable_parameters(model))).device
    if getattr(model, "side", None) is not None and hasattr(model.side, "compute_dtype"):
        apply_side_options(model.side, config)
    result = TrainResult()
    step = 0
    for epoch in range(config.epochs):
        model.train()
        started = time.perf_counter()
        if states is not None and model.backbone is not None and states.all_cached(items):
            states.release_backbone(model)
        groups = batch_order(epoch) if batch_order else batches(items, config.batch_size, generator)
        for group in groups:
            batch = to_device(collate(group, pad_id, task), device)
            tick = time.perf_counter()
            loss = (states.forward(model, group, batch) if states is not None else model(batch)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable_parameters(model), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            result.losses.append(loss.item())
            if on_step:
                on_step(StepInfo(epoch, step, steps_per_epoch * config.epochs, loss.item(),
                                 len(group) / (time.perf_counter() - tick)))
        result.epoch_times_s.append(time.perf_counter() - started)
        if evaluate_on:
            result.eval_history.append({"epoch": epoch + 1, **evaluate(model, evaluate_on, task, pad_id,
                                                                       states=states)})
        if validate_on and _validated(model, validate_on, task, pad_id, states, epoch, config, result):
            break
    if validate_on and result.best_epoch != len(result.epoch_times_s):
        model.load_state_dict(result.best_state, strict=False)  # the best epoch's trained weights
    result.best_state = None
    return result


def _validated(model, items, task: str, pad_id: int, states, epoch: int, config: TrainConfig,
               result: TrainResult) -> bool:
    """Score the validation split after `epoch`; keep the weights if they are the best yet. True: stop."""
    from pac.metrics import better

    score = evaluate(model, items, task, pad_id, states=states)
    best = next((v for v in result.validation_history if v["epoch"] == result.best_epoch), None)
    result.validation_history.append({"epoch": epoch + 1, **score})
    if better(score, best):
        result.best_epoch = epoch + 1
        result.best_state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    if config.patience and epoch + 1 - result.best_epoch >= config.patience and epoch + 1 < config.epochs:
        result.stopped_early = True
        return True
    return False


@torch.no_grad()
def evaluate(model, items: list[Encoded], task: str, pad_id: int, batch_size: int = 64,
             states=None) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    predictions, targets, losses, tokens = [], [], 0.0, 0
    for group in batches(items, batch_size, None):
        batch = to_device(collate(group, pad_id, task), device)
        out = states.forward(model, group, batch) if states is not None else model(batch)
        if task == "lm":
            count = out.logits.shape[0]
            losses += out.loss.item() * count
            tokens += count
            continue
        predictions += (out.logits.argmax(-1) if task == "classification" else out.logits).tolist()
        targets += batch["labels"].tolist()
    if task == "lm":
        mean = losses / max(1, tokens)
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}
    return classification_metrics(predictions, targets) if task == "classification" else \
        regression_metrics(predictions, targets)
