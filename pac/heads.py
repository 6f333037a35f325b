"""Task heads, shared by every technique so that comparisons are like for like.

- classification / regression: a new trainable linear layer on a pooled final hidden state;
- language modelling: the backbone's own frozen LM head, applied only at positions that carry loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pac.errors import ConfigError

TASKS = ("classification", "regression", "lm")
IGNORE = -100


@dataclass(frozen=True)
class HeadConfig:
    task: str = "classification"  # classification | regression | lm
    num_labels: int = 2  # classification only
    pooling: str = "auto"  # mean | first | last | auto (mean for encoders, last token otherwise)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.pooling not in ("auto", "mean", "first", "last"):
            raise ConfigError(f"pooling must be auto, mean, first or last, got {self.pooling!r}")
        if self.task == "classification" and self.num_labels < 2:
            raise ConfigError(f"num_labels must be >= 2 for classification, got {self.num_labels}")


@dataclass
class HeadOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # [batch, labels] / [batch] / [positions with loss, vocab]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if how == "first":
        return hidden[:, 0]
    last = mask.long().sum(1) - 1  # right padding
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class Head(nn.Module):
    def __init__(self, config: HeadConfig, hidden_size: int, family: str, lm_logits=None) -> None:
        super().__init__()
        self.config = config
        self.pooling = config.pooling if config.pooling != "auto" else ("mean" if family == "encoder" else "last")
        self.family = family
        self.lm_logits = lm_logits  # the frozen backbone head (a callable), for task == "lm"
        if config.task == "lm":
            if lm_logits is None:
                raise ConfigError("task 'lm' needs a backbone with a language-model head (decoder or encoder-decoder)")
            self.linear = None
        else:
            outputs = config.num_labels if config.task == "classification" else 1
            self.linear = nn.Linear(hidden_size, outputs)

    def forward(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> HeadOutput:
        if self.config.task == "lm":
            return self._lm(hidden, batch["labels"])
        mask = batch["decoder_attention_mask"] if self.family == "encoder-decoder" else batch["attention_mask"]
        logits = self.linear(pool(hidden, mask, self.pooling))
        if self.config.task == "regression":
            logits = logits.squeeze(-1)
            return HeadOutput(F.mse_loss(logits, batch["labels"].to(logits.dtype)), logits)
        return HeadOutput(F.cross_entropy(logits, batch["labels"]), logits)

    def _lm(self, hidden: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        if self.family == "decoder":  # position t predicts token t + 1
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        keep = labels != IGNORE
        logits = self.lm_logits(hidden[keep])  # only where the loss is taken
        return HeadOutput(F.cross_entropy(logits.float(), labels[keep]), logits)
