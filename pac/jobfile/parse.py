"""Reading a job file: every table through `Table`, then the `Job`."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from pac.data.readers import COLUMN_NAMES, QUOTINGS
from pac.errors import ConfigError
from pac.formats import (
    ALLREDUCE_PRECISIONS,
    QUANTIZATIONS,
    SIDE_PRECISIONS,
    TOP_TARGETS,
    TOP_TUNINGS,
    default_top_layers,
)
from pac.jobfile.sections import (
    CACHE_CHOICES,
    CLUSTER_TECHNIQUES,
    DEFAULT_PORT,
    DEVICE_MODES,
    JOB_FORMAT_VERSION,
    OPTIMIZERS,
    TASKS,
    CacheSection,
    DataSection,
    DevicesSection,
    Job,
    ModelSection,
    OutputSection,
    PlanSection,
    TrainingSection,
)
from pac.jobfile.table import Table, closest, described, looks_like_path, refuse_unknown, section_keys
from pac.planner.workload import TrainingJob


def _model(table: Table, base: Path) -> ModelSection:
    text = table.required("name_or_path")
    if not isinstance(text, str) or not text.strip():
        raise table.fail("name_or_path", "must be a non-empty string (a model name or directory)", text)
    quantization = table.choice("quantization", "none", QUANTIZATIONS)
    if looks_like_path(text) or (base / text).exists():
        path = (base / Path(text).expanduser()).resolve()
        if path.is_file() and path.suffix.lower() == ".gguf":
            return ModelSection(str(path), quantization)
        if not path.is_dir():
            raise table.fail("name_or_path", f"names no model: {path} does not exist", show=False)
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            raise table.fail("name_or_path", f"names no model: {path} holds no config.json or .gguf file",
                             show=False)
        return ModelSection(str(path), quantization)
    from pac.models.registry import ALIASES, MODEL_STORE_ENV, in_model_store, known_model_names

    if in_model_store(text) is not None:  # a model the household put in its model store, by name
        return ModelSection(text, quantization)
    name = ALIASES.get(text.lower(), text.lower())
    if name not in known_model_names():
        hint = closest(name, [*known_model_names(), *ALIASES])
        raise table.fail("name_or_path", f"is not a known model, a model in a model store ({MODEL_STORE_ENV}) or "
                         f"an existing path (known: {', '.join(known_model_names())}"
                         + (f"; did you mean {described(hint)}?)" if hint else ")"), text)
    return ModelSection(name, quantization)


def _data(table: Table, base: Path) -> DataSection:
    task = table.choice("task", "auto", TASKS)
    num_labels = table.integer("num_labels", None, 2)
    if num_labels is not None and task in ("regression", "lm"):
        raise table.fail("num_labels", f"applies to classification only (task is {task})", show=False)
    columns = table.data.get("columns", {})
    if not isinstance(columns, dict):
        raise table.fail("columns", "must be a table of field = \"column name\"", columns)
    refuse_unknown(table.source, f"{table.prefix}.columns", columns, list(COLUMN_NAMES))
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
                       train_limit=table.integer("train_limit", None, 1), eval_limit=eval_limit,
                       validation=_validation(table))


def _validation(table: Table) -> float:
    value = table.number("validation", 0, 0.0)
    if value >= 1 and value != int(value):
        raise table.fail("validation", "must be a count of examples (a whole number) or a fraction below 1", value)
    return value


def _training(table: Table, quantization: str) -> TrainingSection:
    why = " (the only technique trained across devices; use `pacctl finetune` for the others)"
    batch_size = table.integer("batch_size", 16, 1)
    micro_batches = table.integer("micro_batches", None, 1)
    if micro_batches is not None and batch_size % micro_batches:
        raise table.fail("micro_batches", f"must divide training.batch_size ({batch_size}) into equal "
                         "micro-batches", micro_batches)
    top_layers = table.integer("top_layers", default_top_layers(quantization), 0)
    side_layers = () if top_layers else None  # default: beside tuned top layers no side network (docs/accuracy.md)
    if table.has("side_layers"):
        side_layers = table.data["side_layers"]
        if not isinstance(side_layers, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in side_layers):
            raise table.fail("side_layers", "must be a list of layer indices >= 0 ([]: no side network)", side_layers)
        if len(set(side_layers)) != len(side_layers):
            raise table.fail("side_layers", "lists a layer twice", side_layers)
        side_layers = tuple(sorted(side_layers))
    if side_layers == () and not top_layers:
        raise table.fail("side_layers", "is empty (no side network) and top_layers is 0: nothing would train but "
                         "the head; set top_layers (the backbone's last layers tuned instead)", [])
    return TrainingSection(
        technique=table.choice("technique", "parallel", CLUSTER_TECHNIQUES, why), epochs=table.integer("epochs", 3, 1),
        batch_size=batch_size, micro_batches=micro_batches, seq_len=table.integer("seq_len", 128, 4),
        reduction_factor=table.integer("reduction_factor", 8, 1), side_layers=side_layers,
        learning_rate=table.number("learning_rate", 2e-3 if top_layers else 1e-3, 0.0, low_open=True),
        weight_decay=table.number("weight_decay", 0.0, 0.0),
        warmup_fraction=table.number("warmup_fraction", 0.06, 0.0, 1.0),
        optimizer=table.choice("optimizer", "adamw", OPTIMIZERS), seed=table.integer("seed", 0, 0),
        max_grad_norm=table.number("max_grad_norm", 1.0, 0.0, low_open=True),
        activation_checkpointing=table.boolean("activation_checkpointing", False),
        side_precision=table.choice("side_precision", "fp32", SIDE_PRECISIONS),
        checkpoint_steps=table.integer("checkpoint_steps", 50, 0),
        patience=table.integer("patience", 0, 0), top_layers=top_layers,
        top_tuning=table.choice("top_tuning", "lora", TOP_TUNINGS),
        top_targets=table.choice("top_targets", "all", TOP_TARGETS),
        allreduce_precision=table.choice("allreduce_precision", "fp32", ALLREDUCE_PRECISIONS),
        run_ahead=table.integer("run_ahead", 2, 0),
    )


def _cache(table: Table, base: Path) -> CacheSection:
    precision = table.choice("precision", "fp16", CACHE_CHOICES)
    keep = table.boolean("keep", False)
    directory = table.path("directory", base)
    replicas = table.integer("replicas", 0, 0)
    if precision == "none":
        for key in ("keep", "directory", "replicas"):
            if table.has(key):
                raise table.fail(key, "needs a cache, but cache.precision is \"none\"", show=False)
    if directory is not None and directory.exists() and not directory.is_dir():
        raise table.fail("directory", f"must be a directory, {directory} is a file", show=False)
    return CacheSection(precision, keep, directory, replicas)


def _check_address(table: Table, text: str, insecure: bool) -> None:
    """As pac.discovery.records.parse_peer ("host", "host:port", "[v6]:port"), without its imports."""
    if text.strip().startswith("["):
        host, _, rest = text.strip()[1:].partition("]")
        port = rest.removeprefix(":") or str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, port = text.strip().split(":")
    else:
        host, port = text.strip(), str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise table.fail("addresses", f"has {described(text)}, which is not host:port (port 1..65535)", show=False)
    if insecure and host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise table.fail("addresses", f"has {described(text)}, but devices.insecure talks to loopback "
                             "development daemons only; pair the device instead (docs/security.md)", show=False)


def _devices(table: Table) -> DevicesSection:
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
                          interfaces=table.strings("interfaces"), insecure=insecure,
                          rejoin=table.boolean("rejoin", True),
                          controller_memory_budget=_size(table, "controller_memory_budget"))


def _size(table: Table, key: str) -> int:
    """A size ("2GiB", "512MiB" or bytes); 0 when absent."""
    from pac.formats import parse_size

    if not table.has(key):
        return 0
    value = table.required(key)
    try:
        size = parse_size(value, key)
    except ConfigError as error:
        raise table.fail(key, "must be a size such as 2GiB, 512MiB or a number of bytes", value) from error
    if size <= 0:
        raise table.fail(key, "must be more than 0", value)
    return size


def _output(table: Table, base: Path) -> OutputSection:
    directory = table.path("directory", base, required=True)
    if directory.exists() and not directory.is_dir():
        raise table.fail("directory", f"must be a directory, {directory} is a file", show=False)
    return OutputSection(directory, table.string("deploy", "") or "")


def _plan(table: Table, base: Path, job: TrainingJob) -> PlanSection:
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
    refuse_unknown(source, "", mapping, ["version", *SECTIONS])
    version = mapping.get("version", JOB_FORMAT_VERSION)
    if version != JOB_FORMAT_VERSION or isinstance(version, bool):
        raise ConfigError(f"{source}: version must be {JOB_FORMAT_VERSION} (the format this reader knows), "
                          f"got {described(version)}")
    for name in REQUIRED_SECTIONS:
        if name not in mapping:
            raise ConfigError(f"{source}: the [{name}] table is required")
    tables = {name: Table(source, name, mapping.get(name, {}), section_keys(section))
              for name, section in SECTIONS.items()}
    model = _model(tables["model"], base)
    training = _training(tables["training"], model.quantization)
    data = _data(tables["data"], base)
    if training.top_layers and model.quantization != "none":
        raise tables["training"].fail("top_layers", f"trains the backbone's last layers in float32: set "
                                      f"model.quantization = \"none\" (not {model.quantization!r}) or top_layers = 0",
                                      training.top_layers)
    if training.patience and not data.validation:
        raise tables["training"].fail("patience", "stops on a validation score: set data.validation too (a count "
                                      "of training examples to hold out, or a fraction below 1)", training.patience)
    job = Job(model=model, data=data, training=training,
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


def job_toml(tables: dict[str, dict[str, Any]]) -> str:
    """A job file's text from the tables `parse_job` takes (strings, numbers, booleans and lists of them):
    for a program that writes a job for `pacctl train`."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v if not isinstance(v, Path) else str(v))

    return f"version = {JOB_FORMAT_VERSION}\n" + "".join(
        f"\n[{name}]\n" + "".join(f"{key} = {value(v)}\n" for key, v in table.items() if v is not None)
        for name, table in tables.items())
