"""The job file's sections: one small frozen dataclass per table, and the `Job` they make."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pac.data.readers import TableFormat
from pac.formats import CACHE_BYTES, CACHE_PRECISIONS, WEIGHT_BITS
from pac.planner.workload import TrainingJob

JOB_FORMAT_VERSION = 1
TASKS = ("auto", "classification", "regression", "lm")
CLUSTER_TECHNIQUES = ("parallel",)  # the one technique the distributed path runs (others: `pacctl finetune`)
OPTIMIZERS = ("adamw",)  # what pac.train.loop implements: AdamW, linear warm-up then linear decay
CACHE_CHOICES = (*CACHE_PRECISIONS, "none")  # "none": no activation cache
DEVICE_MODES = ("discover", "list", "cluster")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")  # what pac.data.readers reads
DEFAULT_PORT = 7443  # pacd's


@dataclass(frozen=True)
class ModelSection:
    name_or_path: str  # a known name ("minilm", "smollm2-135m", "tiny-*") or an absolute model path
    quantization: str = "none"  # of the frozen backbone: none | bf16 | fp16 (16-bit) | int8 | int4 (linear weights)


@dataclass(frozen=True)
class DataSection:
    train: Path  # training data (.jsonl, .json, .csv, .tsv), absolute
    eval: Path | None = None  # evaluation data, absolute; None: no evaluation
    task: str = "auto"  # classification | regression | lm | auto (inferred from the data's columns)
    num_labels: int | None = None  # classification only; None: inferred from the training labels
    columns: tuple[tuple[str, str], ...] = ()  # (field, column) pairs overriding the column names found
    header: tuple[str, ...] = ()  # CSV/TSV without a header row: its column names, in order
    quoting: str = "auto"  # CSV/TSV: auto | csv (RFC 4180 quoted fields) | none (quotes are text)
    train_limit: int | None = None  # use a seeded random subset of N training examples
    eval_limit: int | None = None  # likewise for evaluation
    validation: float = 0  # training examples held out to score each epoch: a count, or a fraction below 1

    def table_format(self) -> TableFormat:
        """How pac.data.readers reads the CSV/TSV files."""
        return TableFormat(quoting=self.quoting, names=self.header, fields=self.columns)


@dataclass(frozen=True)
class TrainingSection:
    technique: str = "parallel"  # Parallel Adapters: the only technique trained across devices
    epochs: int = 3  # epoch 1 is phase 1 (pipeline); later epochs are phase 2 (from the cache)
    batch_size: int = 16  # samples per mini-batch (one optimiser step)
    micro_batches: int | None = None  # per mini-batch in the pipeline; must divide batch_size; None: planned
    seq_len: int = 128  # tokens per sample (longer samples are cut)
    reduction_factor: int = 8  # k: the side network's widths are the backbone's divided by k
    side_layers: tuple[int, ...] | None = ()  # backbone layers followed by a side block; None: all; (): none
    learning_rate: float = 2e-3  # 1e-3 is a job file's default for the side network alone (top_layers = 0)
    weight_decay: float = 0.0
    warmup_fraction: float = 0.06  # of all steps: linear warm-up, then linear decay to zero
    optimizer: str = "adamw"
    seed: int = 0  # weights of the side network, data order and subsets
    max_grad_norm: float = 1.0  # gradients are clipped to this global L2 norm
    activation_checkpointing: bool = False  # recompute side blocks in backward: less memory, ~1.5x side time
    side_precision: str = "fp32"  # the side network's arithmetic: fp32, or bf16 autocast (mixed precision)
    checkpoint_steps: int = 50  # a checkpoint every N steps within an epoch too (0: at the end of each epoch only)
    patience: int = 0  # with data.validation: stop after N epochs without a better validation score (0: never)
    allreduce_precision: str = "fp32"  # gradients between devices travel as fp32 | bf16 | fp16 (summed in fp32)
    run_ahead: int = 2  # phase 1: the frozen layers run at most N mini-batches ahead (the planner picks; 0: lock-step)
    # The backbone's last n layers tuned too (the last stage in phase 1; from the cache after): 3 with no side
    # network (pac.formats.DEFAULT_TOP_LAYERS); a job file's default for a quantised backbone is 0, all side layers.
    top_layers: int = 3
    top_tuning: str = "lora"  # how the top layers are tuned: lora | full
    top_targets: str = "all"  # LoRA of the top layers on: all (every linear layer) | attention (q and v)

    def technique_config(self):
        """The technique as pac.techniques.build builds it (on one device, or on the controller)."""
        from pac.techniques.build import TechniqueConfig

        return TechniqueConfig(self.technique, reduction_factor=self.reduction_factor, side_layers=self.side_layers,
                               top_layers=self.top_layers, top_tuning=self.top_tuning, top_targets=self.top_targets)


@dataclass(frozen=True)
class CacheSection:
    precision: str = "fp16"  # fp32 | fp16 | bf16 | int8 | none (every epoch runs the backbone)
    keep: bool = False  # keep the cache after the job, so a later job on the same data starts from it
    directory: Path | None = None  # on each device; None: $PAC_CACHE_DIR or ~/.cache/pac/activations
    replicas: int = 0  # phase 2: copies of each device's cached states on other devices (a lost one's are read)


@dataclass(frozen=True)
class DevicesSection:
    mode: str = "discover"  # discover | list | cluster (see docs/job.md)
    addresses: tuple[str, ...] = ()  # "host", "host:port" or "[v6]:port"; required for mode "list"
    mdns_timeout: float = 2.0  # seconds to listen for mDNS advertisements
    interfaces: tuple[str, ...] = ()  # addresses of the interfaces to browse on; empty: all
    insecure: bool = False  # plaintext to loopback development daemons (`pacd serve --insecure`) only
    rejoin: bool = True  # a lost device that answers again is taken back at the next phase-2 epoch
    controller_memory_budget: int = 0  # bytes the controller (pacctl train) may use; 0: not checked


@dataclass(frozen=True)
class OutputSection:
    directory: Path  # adapter.safetensors and metrics.json go here, absolute
    deploy: str = ""  # a device of the job to deploy the tuned adapter to at the end; "": none


@dataclass(frozen=True)
class PlanSection:
    file: Path | None = None  # a plan written by `pacctl plan`, absolute; None: plan when the job starts


@dataclass(frozen=True)
class Job:
    """A validated job file. Paths are absolute; build it with `load_job` or `parse_job`."""

    model: ModelSection
    data: DataSection
    training: TrainingSection
    cache: CacheSection
    devices: DevicesSection
    output: OutputSection
    plan: PlanSection
    source: str = "job.toml"  # where it was read from, for messages
    version: int = JOB_FORMAT_VERSION

    def to_finetune_job(self):
        """The same job on this device alone (pac.train.finetune.FinetuneJob)."""
        from pac.train.finetune import FinetuneJob

        t, cache = self.training, self.cache
        return FinetuneJob(
            model=self.model.name_or_path, train_file=str(self.data.train),
            eval_file=str(self.data.eval) if self.data.eval else None,
            task=None if self.data.task == "auto" else self.data.task, num_labels=self.data.num_labels,
            technique=t.technique_config(),
            train=self.train_config(),
            seq_len=t.seq_len, train_limit=self.data.train_limit, eval_limit=self.data.eval_limit,
            output_dir=str(self.output.directory), quantization=self.model.quantization,
            cache_precision=None if cache.precision == "none" else cache.precision,
            cache_dir=str(cache.directory) if cache.directory else None, keep_cache=cache.keep,
            validation=self.data.validation,
            table=self.data.table_format(),
        )

    def train_config(self):
        """The optimisation as pac.train.loop runs it, on one device or on every device of the job."""
        from pac.train.loop import TrainConfig

        t = self.training
        return TrainConfig(epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
                           weight_decay=t.weight_decay, warmup_fraction=t.warmup_fraction, seed=t.seed,
                           max_grad_norm=t.max_grad_norm, activation_checkpointing=t.activation_checkpointing,
                           side_precision=t.side_precision, patience=t.patience,
                           allreduce_precision=t.allreduce_precision)

    def to_training_job(self, samples: int, use_cache: bool | None = None,
                        padded_tokens: float | None = None, computed_tokens: float | None = None) -> TrainingJob:
        """What the planner plans. `samples`: examples in the training file (train_limit applied here);
        `use_cache` None: as cache.precision says; `padded_tokens`: what the job's own mini-batches pad to
        on average (its times are costed at that, its memory at seq_len); `computed_tokens`: the tokens
        a sample's frozen layers compute where they skip padding. Activations travel as fp32 (the
        default codec); without a cache, hidden states are sized at 2 bytes."""
        if self.data.train_limit is not None:
            samples = min(samples, self.data.train_limit)
        if use_cache is None:
            use_cache = self.cache.precision != "none"
        return TrainingJob(samples=samples, batch_size=self.training.batch_size, epochs=self.training.epochs,
                           micro_batches=self.training.micro_batches,
                           weight_bits=WEIGHT_BITS[self.model.quantization], wire_bytes=4,
                           cache_bytes=CACHE_BYTES.get(self.cache.precision, 2) if use_cache else 2,
                           cache_copies=1 + self.cache.replicas if use_cache else 1, seq_len=self.training.seq_len,
                           top_layers=self.training.top_layers, padded_tokens=padded_tokens,
                           computed_tokens=computed_tokens,
                           gradient_bytes_per_param=4 if self.training.allreduce_precision == "fp32" else 2,
                           controller_budget_bytes=self.devices.controller_memory_budget,
                           run_ahead=self.training.run_ahead)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def summary(self) -> str:
        """The job as lines a person can read."""
        m, d, t, c, v = self.model, self.data, self.training, self.cache, self.devices
        columns = ", ".join(f"{f}={col!r}" for f, col in d.columns)
        devices = {"discover": "found by mDNS", "list": "the listed addresses only",
                   "cluster": "every device of the home found by mDNS, all used"}[v.mode]
        lines = [
            f"job {self.source}",
            f"  model     {m.name_or_path} ("
            + ("unquantised" if m.quantization == "none" else f"{m.quantization} backbone weights") + ")",
            f"  train     {d.train}" + (f" (first {d.train_limit} after a seeded shuffle)" if d.train_limit else ""),
            f"  eval      {d.eval or '-'}" + (f" (first {d.eval_limit})" if d.eval_limit else ""),
            f"  task      {d.task}" + (f", {d.num_labels} labels" if d.num_labels else "")
            + (f", columns {columns}" if columns else "")
            + (f", no header row: columns {list(d.header)}" if d.header else "")
            + (f", quoting {d.quoting}" if d.quoting != "auto" else ""),
            f"  training  {t.technique}, "
            + (f"top {t.top_layers} layer(s) tuned ({t.top_tuning}, {t.top_targets}), " if t.top_layers else "")
            + ("no side network" if t.side_layers == () else f"side network k={t.reduction_factor} on "
               f"{'all layers' if t.side_layers is None else 'layers ' + str(list(t.side_layers))}")
            + f", {t.epochs} epoch(s), batch {t.batch_size}"
            f" ({t.micro_batches or 'planned'} micro-batches), seq_len {t.seq_len}",
            f"  optimiser {t.optimizer} lr {t.learning_rate:g}, weight decay {t.weight_decay:g}, warm-up "
            f"{t.warmup_fraction:g}, clip {t.max_grad_norm:g}, seed {t.seed}",
            f"  cache     {c.precision}" + ("" if c.precision == "none" else
                                            f", {'kept' if c.keep else 'removed'} after the job, in "
                                            f"{c.directory or 'the default directory'}"
                                            + (f"; {c.replicas} cop{'y' if c.replicas == 1 else 'ies'} of each "
                                               f"phase-2 share" if c.replicas else "")),
            f"  devices   {v.mode}: {devices}" + (f"; addresses {', '.join(v.addresses)}" if v.addresses else "")
            + (f"; mDNS {v.mdns_timeout:g} s" if v.mode != "list" else "")
            + (f" on {', '.join(v.interfaces)}" if v.interfaces and v.mode != "list" else "")
            + ("; INSECURE (loopback development)" if v.insecure else ""),
            f"  output    {self.output.directory}",
            f"  plan      {self.plan.file or 'made when the job starts'}",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- reading
