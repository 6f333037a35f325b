"""The job file of `pacctl train`: one TOML file says what to fine-tune, on what data, how, and where.

`load_job(path)` reads and validates the whole file before anything starts and returns a frozen `Job`
made of one small frozen section per table ([model], [data], [training], [cache], [devices], [output],
[plan]). A bad job raises `ConfigError` with one line naming the file, the key and what is wrong:

    job.toml: training.batch_size must be an integer >= 1, got "16"

Unknown keys are refused (with the closest valid key), types are strict (a bool is not an integer, a
string is not a number), paths are relative to the job file's directory and files must exist. Every key
is documented in docs/job.md. This module is pure: no torch, grpc or sockets (the model registry, which
imports transformers, is only asked when a model is given by name).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pac.data.readers import COLUMN_NAMES, QUOTINGS, TableFormat
from pac.errors import ConfigError
from pac.formats import CACHE_BYTES, CACHE_PRECISIONS, QUANTIZATIONS, SIDE_PRECISIONS, WEIGHT_BITS
from pac.planner.job import TrainingJob

JOB_FORMAT_VERSION = 1
TASKS = ("auto", "classification", "regression", "lm")
TECHNIQUES = ("parallel",)  # the one technique the distributed path runs (others: `pacctl finetune`)
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
    side_layers: tuple[int, ...] | None = None  # backbone layers followed by a side block; None: all
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.06  # of all steps: linear warm-up, then linear decay to zero
    optimizer: str = "adamw"
    seed: int = 0  # weights of the side network, data order and subsets
    max_grad_norm: float = 1.0  # gradients are clipped to this global L2 norm
    activation_checkpointing: bool = False  # recompute side blocks in backward: less memory, ~1.5x side time
    side_precision: str = "fp32"  # the side network's arithmetic: fp32, or bf16 autocast (mixed precision)


@dataclass(frozen=True)
class CacheSection:
    precision: str = "fp16"  # fp32 | fp16 | bf16 | int8 | none (every epoch runs the backbone)
    keep: bool = False  # keep the cache after the job, so a later job on the same data starts from it
    directory: Path | None = None  # on each device; None: $PAC_CACHE_DIR or ~/.cache/pac/activations


@dataclass(frozen=True)
class DevicesSection:
    mode: str = "discover"  # discover | list | cluster (see docs/job.md)
    addresses: tuple[str, ...] = ()  # "host", "host:port" or "[v6]:port"; required for mode "list"
    mdns_timeout: float = 2.0  # seconds to listen for mDNS advertisements
    interfaces: tuple[str, ...] = ()  # addresses of the interfaces to browse on; empty: all
    insecure: bool = False  # plaintext to loopback development daemons (`pacd serve --insecure`) only


@dataclass(frozen=True)
class OutputSection:
    directory: Path  # adapter.safetensors and metrics.json go here, absolute


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
        """The same job on this device alone (pac.train.job.FinetuneJob)."""
        from pac.techniques.build import TechniqueConfig
        from pac.train.job import FinetuneJob

        t, cache = self.training, self.cache
        return FinetuneJob(
            model=self.model.name_or_path, train_file=str(self.data.train),
            eval_file=str(self.data.eval) if self.data.eval else None,
            task=None if self.data.task == "auto" else self.data.task, num_labels=self.data.num_labels,
            technique=TechniqueConfig(t.technique, reduction_factor=t.reduction_factor, side_layers=t.side_layers),
            train=self.train_config(),
            seq_len=t.seq_len, train_limit=self.data.train_limit, eval_limit=self.data.eval_limit,
            output_dir=str(self.output.directory), quantization=self.model.quantization,
            cache_precision=None if cache.precision == "none" else cache.precision,
            cache_dir=str(cache.directory) if cache.directory else None, keep_cache=cache.keep,
            table=self.data.table_format(),
        )

    def train_config(self):
        """The optimisation as pac.train.loop runs it, on one device or on every device of the job."""
        from pac.train.loop import TrainConfig

        t = self.training
        return TrainConfig(epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
                           weight_decay=t.weight_decay, warmup_fraction=t.warmup_fraction, seed=t.seed,
                           max_grad_norm=t.max_grad_norm, activation_checkpointing=t.activation_checkpointing,
                           side_precision=t.side_precision)

    def to_training_job(self, samples: int, use_cache: bool | None = None) -> TrainingJob:
        """What the planner plans. `samples`: examples in the training file (train_limit applied here);
        `use_cache` None: as cache.precision says. Activations travel as fp32 (the default codec); without
        a cache, hidden states are sized at 2 bytes."""
        if self.data.train_limit is not None:
            samples = min(samples, self.data.train_limit)
        if use_cache is None:
            use_cache = self.cache.precision != "none"
        return TrainingJob(samples=samples, batch_size=self.training.batch_size, epochs=self.training.epochs,
                           micro_batches=self.training.micro_batches,
                           weight_bits=WEIGHT_BITS[self.model.quantization], wire_bytes=4,
                           cache_bytes=CACHE_BYTES.get(self.cache.precision, 2) if use_cache else 2)

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
            f"  training  {t.technique}, k={t.reduction_factor}, side layers "
            f"{'all' if t.side_layers is None else list(t.side_layers)}, {t.epochs} epoch(s), batch {t.batch_size}"
            f" ({t.micro_batches or 'planned'} micro-batches), seq_len {t.seq_len}",
            f"  optimiser {t.optimizer} lr {t.learning_rate:g}, weight decay {t.weight_decay:g}, warm-up "
            f"{t.warmup_fraction:g}, clip {t.max_grad_norm:g}, seed {t.seed}",
            f"  cache     {c.precision}" + ("" if c.precision == "none" else
                                            f", {'kept' if c.keep else 'removed'} after the job, in "
                                            f"{c.directory or 'the default directory'}"),
            f"  devices   {v.mode}: {devices}" + (f"; addresses {', '.join(v.addresses)}" if v.addresses else "")
            + (f"; mDNS {v.mdns_timeout:g} s" if v.mode != "list" else "")
            + (f" on {', '.join(v.interfaces)}" if v.interfaces and v.mode != "list" else "")
            + ("; INSECURE (loopback development)" if v.insecure else ""),
            f"  output    {self.output.directory}",
            f"  plan      {self.plan.file or 'made when the job starts'}",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- reading


class _Table:
    """One TOML table being read: every value is taken once, by key, with its type checked."""

    def __init__(self, source: str, prefix: str, data: Any, keys: list[str]) -> None:
        self.source, self.prefix = source, prefix
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{prefix}] must be a table, got {_show(data)}")
        self.data = data
        _refuse_unknown(source, prefix, data, keys)

    def fail(self, key: str, what: str, value: Any = None, show: bool = True) -> ConfigError:
        got = f", got {_show(value)}" if show else ""
        return ConfigError(f"{self.source}: {self.prefix}.{key} {what}{got}")

    def has(self, key: str) -> bool:
        return key in self.data

    def required(self, key: str) -> Any:
        if key not in self.data:
            raise ConfigError(f"{self.source}: {self.prefix}.{key} is required")
        return self.data[key]

    def integer(self, key: str, default: int | None, minimum: int) -> int | None:
        value = self.data.get(key, default)
        if key in self.data and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
            raise self.fail(key, f"must be an integer >= {minimum}", value)
        return value

    def number(self, key: str, default: float, low: float, high: float = math.inf,
               low_open: bool = False) -> float:
        if key not in self.data:
            return default
        value = self.data[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > high or value < low or (low_open and value == low):
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            where = f"a number {bound}" + (f" and <= {high:g}" if high != math.inf else "")
            raise self.fail(key, f"must be {where}", value)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false", value)
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.data[key] if key in self.data else default
        if key in self.data and (not isinstance(value, str) or not value.strip()):
            raise self.fail(key, "must be a non-empty string", value)
        return value

    def choice(self, key: str, default: str, allowed: tuple[str, ...], why: str = "") -> str:
        value = self.string(key, default)
        if value not in allowed:
            hint = _closest(value, allowed)
            suggestion = f" (did you mean {_show(hint)}?)" if hint else ""
            raise ConfigError(f"{self.source}: {self.prefix}.{key} must be one of {', '.join(allowed)}{why}, "
                              f"got {_show(value)}{suggestion}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(key, "must be a list of non-empty strings", value)
        if len(set(value)) != len(value):
            raise self.fail(key, "lists an entry twice", value)
        return tuple(value)

    def path(self, key: str, base: Path, required: bool = False) -> Path | None:
        """A path relative to `base` (the job file's directory), made absolute."""
        if required:
            self.required(key)
        text = self.data.get(key)
        if text is None:
            return None
        if not isinstance(text, str) or not text.strip():
            raise self.fail(key, "must be a non-empty string (a path)", text)
        return (base / Path(text).expanduser()).resolve()

    def data_file(self, key: str, base: Path, required: bool = False) -> Path | None:
        path = self.path(key, base, required)
        if path is None:
            return None
        if not path.is_file():
            raise self.fail(key, f"names no file: {path} does not exist" if not path.exists() else
                            f"must be a file, {path} is a directory", show=False)
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise self.fail(key, f"must be a {', '.join(DATA_SUFFIXES)} file, got {path.name!r}", show=False)
        return path


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def _closest(word: str, candidates) -> str | None:
    matches = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _refuse_unknown(source: str, prefix: str, data: dict, keys: list[str]) -> None:
    for key in sorted(set(data) - set(keys)):
        name = f"{prefix}.{key}" if prefix else key
        hint = _closest(key, keys)
        known = f"did you mean {prefix + '.' if prefix else ''}{hint}?" if hint else \
            f"known keys: {', '.join(keys)}"
        raise ConfigError(f"{source}: unknown key {name} ({known})")


def _keys(section: type) -> list[str]:
    return [f.name for f in fields(section)]


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith(("~", ".")) or text.lower().endswith(".gguf")


def _model(table: _Table, base: Path) -> ModelSection:
    text = table.required("name_or_path")
    if not isinstance(text, str) or not text.strip():
        raise table.fail("name_or_path", "must be a non-empty string (a model name or directory)", text)
    quantization = table.choice("quantization", "none", QUANTIZATIONS)
    if _looks_like_path(text) or (base / text).exists():
        path = (base / Path(text).expanduser()).resolve()
        if path.is_file() and path.suffix.lower() == ".gguf":
            return ModelSection(str(path), quantization)
        if not path.is_dir():
            raise table.fail("name_or_path", f"names no model: {path} does not exist", show=False)
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            raise table.fail("name_or_path", f"names no model: {path} holds no config.json or .gguf file",
                             show=False)
        return ModelSection(str(path), quantization)
    from pac.models.registry import ALIASES, known_model_names  # imports transformers: only for names

    name = ALIASES.get(text.lower(), text.lower())
    if name not in known_model_names():
        hint = _closest(name, [*known_model_names(), *ALIASES])
        raise table.fail("name_or_path", "is not a known model or an existing path "
                         f"(known: {', '.join(known_model_names())}"
                         + (f"; did you mean {_show(hint)}?)" if hint else ")"), text)
    return ModelSection(name, quantization)


def _data(table: _Table, base: Path) -> DataSection:
    task = table.choice("task", "auto", TASKS)
    num_labels = table.integer("num_labels", None, 2)
    if num_labels is not None and task in ("regression", "lm"):
        raise table.fail("num_labels", f"applies to classification only (task is {task})", show=False)
    columns = table.data.get("columns", {})
    if not isinstance(columns, dict):
        raise table.fail("columns", "must be a table of field = \"column name\"", columns)
    _refuse_unknown(table.source, f"{table.prefix}.columns", columns, list(COLUMN_NAMES))
    for field, column in columns.items():
        if not isinstance(column, str) or not column:
            raise table.fail(f"columns.{field}", "must be a non-empty string (a column name)", column)
    eval_file = table.data_file("eval", base)
    eval_limit = table.integer("eval_limit", None, 1)
    if eval_limit is not None and eval_file is None:
        raise table.fail("eval_limit", "needs data.eval (there is no evaluation data to limit)", show=False)
    header = table.strings("header")
    return DataSection(train=table.data_file("train", base, required=True), eval=eval_file, task=task,
                       num_labels=num_labels, columns=tuple(sorted(columns.items())), header=header,
                       quoting=table.choice("quoting", "auto", QUOTINGS),
                       train_limit=table.integer("train_limit", None, 1), eval_limit=eval_limit)


def _training(table: _Table) -> TrainingSection:
    why = " (the only technique trained across devices; use `pacctl finetune` for the others)"
    batch_size = table.integer("batch_size", 16, 1)
    micro_batches = table.integer("micro_batches", None, 1)
    if micro_batches is not None and batch_size % micro_batches:
        raise table.fail("micro_batches", f"must divide training.batch_size ({batch_size}) into equal "
                         "micro-batches", micro_batches)
    side_layers = None
    if table.has("side_layers"):
        side_layers = table.data["side_layers"]
        if not isinstance(side_layers, list) or not side_layers or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in side_layers):
            raise table.fail("side_layers", "must be a non-empty list of layer indices >= 0", side_layers)
        if len(set(side_layers)) != len(side_layers):
            raise table.fail("side_layers", "lists a layer twice", side_layers)
        side_layers = tuple(sorted(side_layers))
    return TrainingSection(
        technique=table.choice("technique", "parallel", TECHNIQUES, why), epochs=table.integer("epochs", 3, 1),
        batch_size=batch_size, micro_batches=micro_batches, seq_len=table.integer("seq_len", 128, 4),
        reduction_factor=table.integer("reduction_factor", 8, 1), side_layers=side_layers,
        learning_rate=table.number("learning_rate", 1e-3, 0.0, low_open=True),
        weight_decay=table.number("weight_decay", 0.0, 0.0),
        warmup_fraction=table.number("warmup_fraction", 0.06, 0.0, 1.0),
        optimizer=table.choice("optimizer", "adamw", OPTIMIZERS), seed=table.integer("seed", 0, 0),
        max_grad_norm=table.number("max_grad_norm", 1.0, 0.0, low_open=True),
        activation_checkpointing=table.boolean("activation_checkpointing", False),
        side_precision=table.choice("side_precision", "fp32", SIDE_PRECISIONS),
    )


def _cache(table: _Table, base: Path) -> CacheSection:
    precision = table.choice("precision", "fp16", CACHE_CHOICES)
    keep = table.boolean("keep", False)
    directory = table.path("directory", base)
    if precision == "none":
        for key in ("keep", "directory"):
            if table.has(key):
                raise table.fail(key, "needs a cache, but cache.precision is \"none\"", show=False)
    if directory is not None and directory.exists() and not directory.is_dir():
        raise table.fail("directory", f"must be a directory, {directory} is a file", show=False)
    return CacheSection(precision, keep, directory)


def _check_address(table: _Table, text: str, insecure: bool) -> None:
    """As pac.discovery.records.parse_peer ("host", "host:port", "[v6]:port"), without its imports."""
    if text.strip().startswith("["):
        host, _, rest = text.strip()[1:].partition("]")
        port = rest.removeprefix(":") or str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, port = text.strip().split(":")
    else:
        host, port = text.strip(), str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise table.fail("addresses", f"has {_show(text)}, which is not host:port (port 1..65535)", show=False)
    if insecure and host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise table.fail("addresses", f"has {_show(text)}, but devices.insecure talks to loopback "
                             "development daemons only; pair the device instead (docs/security.md)", show=False)


def _devices(table: _Table) -> DevicesSection:
    mode = table.choice("mode", "discover", DEVICE_MODES)
    insecure = table.boolean("insecure", False)
    addresses = table.strings("addresses")
    for address in addresses:
        _check_address(table, address, insecure)
    if mode == "list" and not addresses:
        raise table.fail("addresses", "must list at least one device when devices.mode is \"list\"", show=False)
    if mode == "list":
        for key in ("mdns_timeout", "interfaces"):
            if table.has(key):
                raise table.fail(key, "applies to mDNS, which devices.mode \"list\" does not use", show=False)
    return DevicesSection(mode=mode, addresses=addresses,
                          mdns_timeout=table.number("mdns_timeout", 2.0, 0.0, 60.0, low_open=True),
                          interfaces=table.strings("interfaces"), insecure=insecure)


def _output(table: _Table, base: Path) -> OutputSection:
    directory = table.path("directory", base, required=True)
    if directory.exists() and not directory.is_dir():
        raise table.fail("directory", f"must be a directory, {directory} is a file", show=False)
    return OutputSection(directory)


def _plan(table: _Table, base: Path, job: TrainingJob) -> PlanSection:
    path = table.path("file", base)
    if path is None:
        return PlanSection()
    if not path.is_file():
        raise table.fail("file", f"names no file: {path} does not exist (write one with `pacctl plan`)",
                         show=False)
    from pac.planner.plan import Plan  # pure, like this module

    try:
        planned = Plan.load(path).job
    except ConfigError as error:
        raise table.fail("file", f"is not a readable plan: {error}", show=False) from error
    for key, label in (("batch_size", "training.batch_size"), ("epochs", "training.epochs"),
                       ("weight_bits", "model.quantization")):
        if getattr(planned, key) != getattr(job, key):
            raise table.fail("file", f"was planned for {key} {getattr(planned, key)} but this job has "
                             f"{getattr(job, key)} ({label}); plan again or change the job", show=False)
    if job.micro_batches is not None and planned.micro_batches not in (None, job.micro_batches):
        raise table.fail("file", f"was planned for {planned.micro_batches} micro-batches but "
                         f"training.micro_batches is {job.micro_batches}", show=False)
    return PlanSection(path)


SECTIONS = {"model": ModelSection, "data": DataSection, "training": TrainingSection, "cache": CacheSection,
            "devices": DevicesSection, "output": OutputSection, "plan": PlanSection}
REQUIRED_SECTIONS = ("model", "data", "output")


def parse_job(mapping: dict[str, Any], source: str = "job.toml", base_dir: str | Path | None = None) -> Job:
    """Validate a parsed TOML mapping. Paths are relative to `base_dir` (default: `source`'s directory)."""
    base = Path(base_dir if base_dir is not None else Path(source).parent).expanduser().resolve()
    _refuse_unknown(source, "", mapping, ["version", *SECTIONS])
    version = mapping.get("version", JOB_FORMAT_VERSION)
    if version != JOB_FORMAT_VERSION or isinstance(version, bool):
        raise ConfigError(f"{source}: version must be {JOB_FORMAT_VERSION} (the format this reader knows), "
                          f"got {_show(version)}")
    for name in REQUIRED_SECTIONS:
        if name not in mapping:
            raise ConfigError(f"{source}: the [{name}] table is required")
    tables = {name: _Table(source, name, mapping.get(name, {}), _keys(section))
              for name, section in SECTIONS.items()}
    model = _model(tables["model"], base)
    training = _training(tables["training"])
    job = Job(model=model, data=_data(tables["data"], base), training=training,
              cache=_cache(tables["cache"], base), devices=_devices(tables["devices"]),
              output=_output(tables["output"], base), plan=PlanSection(), source=source, version=version)
    planned = _plan(tables["plan"], base, job.to_training_job(1))
    return Job(**{**{f.name: getattr(job, f.name) for f in fields(Job)}, "plan": planned})


def load_job(path: str | Path) -> Job:
    """Read and validate a job file; a ConfigError names the file and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the job file ({error})") from None
    try:
        mapping = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return parse_job(mapping, source=str(path))
