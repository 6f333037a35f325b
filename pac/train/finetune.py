"""One single-device fine-tuning job: load, encode, train, evaluate, save. Used by the CLI and benchmarks."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pac.adapter import save_adapter
from pac.cache import ActivationCache
from pac.cache.codec import check_precision
from pac.data.prepare import encode_job_data, encode_validation, read_job_data
from pac.data.readers import TableFormat
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.quant import QUANTIZATIONS, quantize_backbone
from pac.techniques.build import ParallelAdaptersModel, TechniqueConfig, build_model, trainable_parameters
from pac.techniques.top import fit_top
from pac.train.cached import CachedStates, cache_key_for
from pac.train.loop import TrainConfig, evaluate, train


@dataclass(frozen=True)
class FinetuneJob:
    model: str  # a known name or a local model directory
    train_file: str
    eval_file: str | None = None
    task: str | None = None  # classification | regression | lm (None: inferred from the data)
    num_labels: int | None = None  # None: inferred from the data
    technique: TechniqueConfig = field(default_factory=TechniqueConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seq_len: int = 128
    train_limit: int | None = None  # use only the first N training examples (after a seeded shuffle)
    eval_limit: int | None = None
    output_dir: str | None = None
    quantization: str = "none"  # of the frozen backbone: none | bf16 | fp16 | int8 | int4
    cache_precision: str | None = None  # activation cache: fp32 | fp16 | bf16 | int8; None: no cache
    cache_dir: str | None = None  # default: $PAC_CACHE_DIR or ~/.cache/pac/activations
    keep_cache: bool = False  # keep the cache after the job (a later job on the same data reuses it)
    table: TableFormat = TableFormat()  # how CSV/TSV data files are read (quoting, names of header-less columns)
    validation: float = 0  # examples of the training file held out to score each epoch (a count, or a fraction < 1)

    def __post_init__(self) -> None:
        if self.seq_len < 4:
            raise ConfigError(f"seq_len must be >= 4, got {self.seq_len}")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.train.side_precision != "fp32" and self.technique.name != "parallel":
            raise ConfigError(f"side_precision {self.train.side_precision!r} needs technique 'parallel' (the side "
                              f"network's arithmetic); {self.technique.name!r} has no side network")
        if self.quantization != "none" and self.technique.name != "parallel":
            raise ConfigError(f"quantization {self.quantization!r} needs technique 'parallel': it holds the frozen "
                              f"backbone in fewer bits, and {self.technique.name!r} trains inside the backbone")
        if self.train.patience and not self.validation:
            raise ConfigError(f"patience {self.train.patience} stops on a validation score: hold out a validation "
                              "split of the training data too (validation = a count, or a fraction below 1)")
        if self.quantization != "none" and self.technique.top_layers:
            raise ConfigError(f"quantization {self.quantization!r} with top_layers {self.technique.top_layers}: the "
                              "tuned top layers train in float32; use quantization \"none\" or top_layers 0")
        if self.cache_precision is not None:
            check_precision(self.cache_precision)
            if self.technique.name != "parallel":
                raise ConfigError("the activation cache needs technique 'parallel' (others train the backbone)")


def default_cache_dir() -> Path:
    return Path(os.environ.get("PAC_CACHE_DIR") or Path.home() / ".cache" / "pac" / "activations")


def _load(job: FinetuneJob):
    backbone = load_backbone(job.model, seed=job.train.seed)
    quantize_backbone(backbone, job.quantization)  # the fingerprint stays that of the checkpoint
    return backbone


def run_finetune(job: FinetuneJob, log=print, on_step=None) -> dict:
    """Train and evaluate `job`; `on_step(StepInfo)` is called after every optimiser step (benchmarks)."""
    torch.manual_seed(job.train.seed)
    backbone = _load(job)
    data = read_job_data(job.train_file, job.eval_file, job.table, job.train_limit, job.eval_limit, job.train.seed,
                         job.task, job.num_labels, job.validation)
    task, tokenizer = data.task, backbone.tokenizer
    train_items, eval_items = encode_job_data(data, tokenizer, backbone.family, job.seq_len)
    validation_items = encode_validation(data, tokenizer, backbone.family, job.seq_len)
    technique = fit_top(job.technique, backbone, log) if job.technique.name == "parallel" else job.technique
    model = build_model(backbone, technique, HeadConfig(task=task, num_labels=data.num_labels))
    n_trainable = sum(p.numel() for p in trainable_parameters(model))
    log(f"{job.technique.name}: {backbone.name}, {task}, {len(train_items)} train / {len(eval_items)} eval "
        f"examples, {n_trainable:,} trainable parameters")

    def step_done(info) -> None:
        if on_step is not None:
            on_step(info)
        if info.step % 20 == 0 or info.step == info.total_steps:
            log(f"  epoch {info.epoch + 1} step {info.step}/{info.total_steps} loss {info.loss:.4f} "
                f"{info.samples_per_s:.1f} samples/s")

    states = cache = None
    if job.cache_precision:
        key = cache_key_for(backbone, model.side.spec, job.quantization)
        cache = ActivationCache(job.cache_dir or default_cache_dir(), key, job.cache_precision, keep=job.keep_cache)
        states = CachedStates(cache, load_backbone=lambda: _load(job))
        log(f"activation cache {cache.directory} ({job.cache_precision}, {len(cache)} records found)")
    pad_id = tokenizer.pad_token_id
    del backbone  # the model holds it while it is needed; from the cache it is released
    try:
        result = train(model, train_items, task, pad_id, job.train, evaluate_on=eval_items or None,
                       on_step=step_done, states=states, validate_on=validation_items or None)
        if validation_items:
            log(f"best epoch {result.best_epoch} of {len(result.epoch_times_s)} on the {len(validation_items)}-example "
                f"validation split" + (" (stopped early)" if result.stopped_early else ""))
        final = evaluate(model, eval_items, task, pad_id, states=states) if eval_items else {}
        cache_info = None if cache is None else {**cache.manifest(), "backbone_runs": states.backbone_runs,
                                                 "cache_batches": states.cache_reads,
                                                 "corrupt_records": cache.corrupt_found}
    finally:
        if cache is not None:
            cache.close()
    metrics = {
        "job": {**asdict(job), "technique": asdict(job.technique), "train": asdict(job.train)},
        "task": task, "trainable_params": n_trainable, "train_examples": len(train_items),
        "eval_examples": len(eval_items), "epoch_times_s": result.epoch_times_s,
        "final_loss": result.losses[-1], "eval_history": result.eval_history, "eval": final,
        "validation_examples": len(validation_items), "validation_history": result.validation_history,
        "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "cache": cache_info,
    }
    if job.output_dir:
        out = Path(job.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(model, ParallelAdaptersModel):
            save_adapter(model, out / "adapter.safetensors", extra={"task": task, "quantization": job.quantization})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    metrics["model"] = model
    return metrics
