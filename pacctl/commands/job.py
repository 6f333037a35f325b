"""`pacctl job`: check a job file for `pacctl train` before anything starts, or print a complete example."""

from __future__ import annotations

from pathlib import Path

import click

from pac.errors import PacError

# Every key, with its default where it is optional; paths are relative to the job file's directory.
# {train} and {eval} are filled with the built-in household data, so the printed file checks as it is.
EXAMPLE = """\
# A job for `pacctl train`: fine-tune a chat model on the devices of this home.
# Every key is described in docs/job.md. Check a job with `pacctl job check FILE`.
# Relative paths are relative to this file's directory.
version = 1                          # the job file format

[model]
name_or_path = "smollm2-135m"        # a known name (minilm, smollm2-135m) or a local model directory
quantization = "none"                # frozen backbone: none | bf16 | fp16 | int8 | int4

[data]
train = "{train}"                    # .jsonl, .json, .csv or .tsv
eval = "{eval}"                      # optional: evaluation data
task = "lm"                          # classification | regression | lm | auto (from the columns)
# num_labels = 2                     # classification only; default: from the training labels
# train_limit = 1000                 # optional: a seeded random subset of N training examples
# eval_limit = 200                   # optional: likewise for evaluation
# validation = 0.1                   # optional: training examples held out, scored after each epoch (a count,
                                     # or a fraction below 1); the adapter is the best epoch's
# quoting = "auto"                   # CSV/TSV: auto | csv (quoted fields, as spreadsheets write) | none
# header = ["label", "text"]         # CSV/TSV without a header row: its columns, in order

[data.columns]                       # optional: column names, where the usual ones are not used
# prompt = "question"                # fields: text, text_pair, label, score, prompt, answer

[training]
technique = "parallel"               # PAC's: tuned top layers and/or a side network, from the activation cache
epochs = 3                           # epoch 1: pipeline over the devices; later: from the cache
batch_size = 8                       # samples per optimiser step
# micro_batches = 4                  # optional: must divide batch_size; default: chosen by the planner
seq_len = 96                         # tokens per sample (longer ones are cut)
reduction_factor = 8                 # k: the side network is k times narrower than the backbone
# side_layers = [0, 5, 11]           # optional: backbone layers followed by a side block; default all; []: none
top_layers = 0                       # the backbone's last N layers tuned too (LoRA), from the cache after epoch 1
top_tuning = "lora"                  # lora | full: how the top layers are tuned
top_targets = "all"                  # LoRA on all linear layers of the top layers | attention (q and v)
learning_rate = 2e-3
weight_decay = 0.0
warmup_fraction = 0.06               # of all steps: linear warm-up, then linear decay to zero
optimizer = "adamw"
seed = 0
max_grad_norm = 1.0                  # gradient clipping (global L2 norm)
activation_checkpointing = false     # true: less memory in epochs from the cache, ~1.5x their time
side_precision = "fp32"              # fp32 | bf16: side network arithmetic (bf16: mixed precision, faster on CPUs with bf16)
checkpoint_steps = 50                # a checkpoint every N steps within an epoch too (0: after each epoch only)
# patience = 2                       # with data.validation: stop after N epochs without a better score
allreduce_precision = "fp32"         # gradients between devices travel as fp32 | bf16 | fp16 (summed in fp32)
run_ahead = 2                        # phase 1: frozen layers run up to N mini-batches ahead (the planner picks; 0: lock-step)

[cache]
precision = "fp16"                   # fp32 | fp16 | bf16 | int8 | none
keep = false                         # keep it for a later job on the same data and backbone
# directory = "/var/cache/pac"       # on each device; default $PAC_CACHE_DIR or ~/.cache/pac/activations
replicas = 0                         # phase 2: copies of each device's cached states on others (a lost one's are read)

[devices]
mode = "discover"                    # discover | list | cluster
addresses = []                       # "host", "host:port": asked directly (mode "list": only these)
mdns_timeout = 2.0                   # seconds to listen for the devices' mDNS advertisements
interfaces = []                      # addresses of the interfaces to browse on; empty: all
insecure = false                     # loopback development daemons only
rejoin = true                        # lost devices that answer again, and new ones, join at a phase-2 epoch's end
# controller_memory_budget = "2GiB"  # what pacctl train itself may use (it holds no backbone); unset: not checked

[output]
directory = "runs/household"         # the adapter and metrics.json
# deploy = "kitchen-pi"              # optional: a device to serve the tuned model from (pacctl deploy)

[plan]
# file = "plan.json"                 # optional: a plan from `pacctl plan`; default: plan when starting
"""


def example_job() -> str:
    """The example job file, with the built-in household data's absolute paths."""
    from pac.train.household import HELDOUT_FILE, TRAIN_FILE

    return EXAMPLE.format(train=TRAIN_FILE.as_posix(), eval=HELDOUT_FILE.as_posix())


@click.group("job")
def command() -> None:
    """Job files for `pacctl train`: check one, or print an example (docs/job.md)."""


@command.command("check")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
def check(job_file: Path) -> None:
    """Validate JOB_FILE and print what it asks for."""
    from pac.jobfile import load_job

    try:
        job = load_job(job_file)
    except PacError as error:
        raise click.ClickException(str(error)) from error
    click.echo(job.summary())
    click.echo("ok")


@command.command("example")
def example() -> None:
    """Print a complete, commented job file (every key; it checks as it is)."""
    click.echo(example_job(), nl=False)
