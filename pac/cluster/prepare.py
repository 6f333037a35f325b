"""A job's data and initial model, prepared on the controller as a single-device run would prepare them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pac.cache import sample_key
from pac.data.batching import Encoded
from pac.data.prepare import encode_job_data, encode_validation, read_job_data
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.techniques.build import build_model, trainable_parameters
from pac.techniques.top import fit_top
from pac.worker.spec import load_model


@dataclass
class Prepared:
    backbone: Any
    model: Any  # ParallelAdaptersModel with the initial side network and head
    fingerprint: str
    task: str
    head: HeadConfig
    train_items: list[Encoded]
    eval_items: list[Encoded]
    keys: list[str]
    pad_id: int
    validation_items: list[Encoded] = field(default_factory=list)  # carved out of the training file
    technique: Any = None  # TechniqueConfig as built (tuned top layers at most the model's last stack)
    padded_tokens: float | None = None  # what the seeded mini-batches pad to, on average (the planner's times)


def prepare(job, log_line: Callable[[str], None] = print) -> Prepared:
    """Load the backbone here, encode the data and initialise the side network exactly as a single-device
    run of the same job would (`pac.train.finetune.run_finetune`), so the result is comparable."""
    training, data = job.training, job.data
    torch.manual_seed(training.seed)
    backbone, fingerprint = load_model(job.model.name_or_path, job.model.quantization, training.seed)
    examples = read_job_data(data.train, data.eval, data.table_format(), data.train_limit, data.eval_limit,
                             training.seed, None if data.task == "auto" else data.task, data.num_labels,
                             data.validation)
    train_items, eval_items = encode_job_data(examples, backbone.tokenizer, backbone.family, training.seq_len)
    validation_items = encode_validation(examples, backbone.tokenizer, backbone.family, training.seq_len)
    if not train_items:
        raise ConfigError(f"{job.source}: data.train {data.train} holds no examples")
    task, tokenizer = examples.task, backbone.tokenizer
    head = HeadConfig(task=task, num_labels=examples.num_labels)
    technique = fit_top(training.technique_config(), backbone, log_line)
    model = build_model(backbone, technique, head)
    keys = [sample_key(item.input_ids, item.decoder_ids) for item in train_items]
    log_line(f"{backbone.name}: {task}, {len(train_items)} training / {len(eval_items)} evaluation examples, "
             f"{sum(p.numel() for p in trainable_parameters(model)):,} trainable parameters"
             + (f" ({model.top.count} top layers tuned)" if model.top is not None else ""))
    return Prepared(backbone, model, fingerprint, task, head, train_items, eval_items, keys,
                    tokenizer.pad_token_id, validation_items, technique,
                    padded_tokens(train_items, training.batch_size, training.seed))


def padded_tokens(items: list[Encoded], batch_size: int, seed: int) -> float:
    """Tokens a sample's mini-batch pads to, on average over the first epoch's seeded mini-batches (the
    longer stack's for an encoder-decoder model)."""
    from pac.train.loop import batches

    groups = batches(items, batch_size, torch.Generator().manual_seed(seed))
    longest = [max(max(lengths_of(item)) for item in group) for group in groups]
    return sum(n * len(g) for n, g in zip(longest, groups, strict=True)) / max(1, len(items))


def lengths_of(item: Encoded) -> list[int]:
    return [len(item.input_ids)] + ([len(item.decoder_ids)] if item.decoder_ids is not None else [])
