"""`pacctl finetune`: fine-tune a backbone on this device with one technique and evaluate it."""

from __future__ import annotations

import json

import click

from pac.errors import PacError
from pac.formats import CACHE_PRECISIONS, QUANTIZATIONS, SIDE_PRECISIONS, default_top_layers


@click.command("finetune")
@click.option("--model", default="minilm", show_default=True,
              help="Backbone: minilm, smollm2-135m, tiny-* or a local model directory.")
@click.option("--train", "train_file", required=True, type=click.Path(dir_okay=False),
              help="Training data (.jsonl, .csv or .tsv).")
@click.option("--eval", "eval_file", type=click.Path(dir_okay=False), help="Evaluation data.")
@click.option("--quoting", type=click.Choice(["auto", "csv", "none"]), default="auto", show_default=True,
              help="CSV/TSV quotes: csv (RFC 4180: quoted fields may hold delimiters, newlines, \"\"), none "
                   "(quotes are text, as in GLUE files), auto (csv where the whole file reads so, else none).")
@click.option("--header", "header", metavar="NAMES",
              help="For a CSV/TSV file without a header row: its column names in order, comma-separated "
                   "(e.g. label,id1,id2,text,text_pair).")
@click.option("--technique", type=click.Choice(["parallel", "lora", "adapters", "full"]), default="parallel",
              show_default=True, help="PAC's (the backbone's forward once, then epochs from the activation cache: tuned top layers "
              "and/or Parallel Adapters' side network), or a baseline: LoRA, bottleneck adapters, all "
              "weights.")
@click.option("--task", type=click.Choice(["classification", "regression", "lm"]),
              help="Default: inferred from the data's columns.")
@click.option("--epochs", type=int, default=3, show_default=True, help="Passes over the training data.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Samples per optimiser step.")
@click.option("--seq-len", type=int, default=128, show_default=True, help="Tokens per sample (longer ones are cut).")
@click.option("--lr", "learning_rate", type=float, default=None,
              help="Learning rate [default: 2e-3 parallel with tuned top layers, 1e-3 the side network alone, "
                   "5e-4 lora/adapters, 3e-5 full].")
@click.option("--reduction-factor", type=int, default=8, show_default=True, help="k: side width is d/k.")
@click.option("--top-layers", type=click.IntRange(min=0), default=None,
              help="parallel: tune the backbone's last N layers (from the activation cache after epoch 1, "
                   "later epochs run N layers instead of all; 0: the side network alone) [default: 3, or every "
                   "layer of a smaller model; 0 with --quantization].")
@click.option("--top-tuning", type=click.Choice(["lora", "full"]), default="lora", show_default=True,
              help="How --top-layers are tuned: LoRA factors, or every weight.")
@click.option("--top-targets", type=click.Choice(["all", "attention"]), default="all", show_default=True,
              help="LoRA of --top-layers on every linear layer, or on the attention's query and value only.")
@click.option("--side-network/--no-side-network", "side_network", default=None,
              help="parallel: train Parallel Adapters' side network too [default: only without tuned top layers; beside "
                   "them it adds nothing (docs/accuracy.md)].")
@click.option("--validation", type=float, default=0, show_default=True,
              help="Hold out this many training examples (or this fraction, below 1) as a validation split, "
                   "scored after every epoch; the model ends with the best epoch's weights.")
@click.option("--patience", type=int, default=0, show_default=True,
              help="With --validation: stop after N epochs without a better validation score (0: run every epoch).")
@click.option("--train-limit", type=int, help="Use a seeded random subset of N training examples.")
@click.option("--eval-limit", type=int, help="Use a seeded random subset of N evaluation examples.")
@click.option("--quantization", type=click.Choice(QUANTIZATIONS), default="none",
              show_default=True, help="The frozen backbone in 16 bits (bf16, fp16: weights and forward pass) or "
              "its linear weights in 8 or 4 bits (parallel only).")
@click.option("--cache", "cache_precision", type=click.Choice([*CACHE_PRECISIONS, "none"]), default=None,
              help="Activation cache precision (parallel only): epochs after the first skip the backbone "
                   "[default: fp32 for parallel; none: every epoch runs it].")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Where the cache lives [default: $PAC_CACHE_DIR or ~/.cache/pac/activations].")
@click.option("--keep-cache", is_flag=True, help="Keep the cache after the job, for later jobs on the same data.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the side network's weights, the data order and subsets.")
@click.option("--checkpointing", is_flag=True,
              help="Parallel Adapters: recompute the side blocks in backward instead of keeping their "
                   "activations (less memory, about one more side forward of time).")
@click.option("--side-precision", type=click.Choice(SIDE_PRECISIONS), default="fp32", show_default=True,
              help="Parallel Adapters' arithmetic: fp32, or bf16 autocast (mixed precision: weights, "
                   "gradients and optimiser state stay fp32).")
@click.option("--out", "output_dir", type=click.Path(file_okay=False),
              help="Write adapter.safetensors (parallel) and metrics.json here.")
def command(model, train_file, eval_file, quoting, header, technique, task, epochs, batch_size, seq_len, learning_rate,
            reduction_factor, top_layers, top_tuning, top_targets, side_network, validation, patience, train_limit, eval_limit, quantization,
            cache_precision, cache_dir, keep_cache, seed, checkpointing, side_precision, output_dir) -> None:
    """Fine-tune on this device and report the evaluation metrics."""
    from pac.data.readers import TableFormat
    from pac.techniques.build import TechniqueConfig
    from pac.train.finetune import FinetuneJob, run_finetune
    from pac.train.loop import TrainConfig

    parallel = technique == "parallel"
    if top_layers is None:
        top_layers = default_top_layers(quantization) if parallel else 0
    if side_network is None:
        side_network = not top_layers
    if cache_precision is None:
        cache_precision = "fp32" if parallel else "none"
    defaults = {"parallel": 2e-3 if top_layers else 1e-3, "lora": 5e-4, "adapters": 5e-4, "full": 3e-5}
    try:
        names = tuple(name.strip() for name in header.split(",")) if header else ()
        job = FinetuneJob(
            model=model, train_file=train_file, eval_file=eval_file, task=task,
            technique=TechniqueConfig(technique, reduction_factor=reduction_factor, top_layers=top_layers,
                                      top_tuning=top_tuning, top_targets=top_targets,
                                      side_layers=None if side_network else ()),
            train=TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed,
                              learning_rate=learning_rate or defaults[technique],
                              activation_checkpointing=checkpointing, side_precision=side_precision,
                              patience=patience),
            seq_len=seq_len, train_limit=train_limit, eval_limit=eval_limit, output_dir=output_dir,
            quantization=quantization, cache_precision=None if cache_precision == "none" else cache_precision,
            cache_dir=cache_dir, keep_cache=keep_cache,
            table=TableFormat(quoting=quoting, names=names), validation=validation,
        )
        metrics = run_finetune(job, log=lambda line: click.echo(line, err=True))
    except PacError as error:
        raise click.ClickException(str(error)) from error
    metrics.pop("model")
    summary = {"eval": metrics["eval"], "epoch_times_s": metrics["epoch_times_s"]}
    if metrics["validation_history"]:
        summary |= {"best_epoch": metrics["best_epoch"], "stopped_early": metrics["stopped_early"],
                    "validation_history": metrics["validation_history"]}
    if metrics["cache"]:
        summary["cache"] = {k: metrics["cache"][k] for k in ("records", "record_bytes", "backbone_runs",
                                                             "cache_batches", "corrupt_records")}
    click.echo(json.dumps(summary, indent=2))
