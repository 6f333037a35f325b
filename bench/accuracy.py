"""Final metric of each technique at the same budget (the paper's Table 3), on real GLUE data.

    .venv/bin/python -m bench.accuracy --model minilm --tasks mrpc,sst2 \
        --techniques full,lora,adapters,parallel --epochs 3 --train-limit N --json PATH

`--techniques probe` trains the head alone on the frozen backbone: the floor every technique should beat
(how much of a score the backbone's features already give).

MRPC: train.tsv -> test.tsv, reported as the mean of accuracy and F1 (as GLUE does); SST-2:
train.tsv -> dev.tsv, accuracy. Every technique sees the same examples in the same order, the same
epochs, batch size and sequence length.

Without --lr-grid or --val-size each technique runs once at its usual learning rate (LEARNING_RATES),
no search: the training subset is the first --train-limit examples of a seeded shuffle of train.tsv.

With --lr-grid "parallel=1e-3,2e-3,4e-3;lora=2.5e-4,5e-4,1e-3;..." (and/or --val-size N, default 500)
every technique's learning rate is chosen the same way: one seeded shuffle of train.tsv
(random.Random(--seed)) gives the validation split (its first N examples) and, disjoint from it, the
training subset (the next --train-limit examples; see split_train). Each learning rate of the grid
trains a model on the training subset, which is scored on the validation split (the task's metric);
the highest validation score wins (ties: the earlier learning rate in the grid), and only that same
trained model is then scored on test.tsv / dev.tsv. The reported test/dev sets play no part in the choice.

With --seeds 0,1,2 (and --lr "parallel=1e-3;lora=2e-3" to fix each technique's learning rate, e.g. the
one a search chose) every technique trains once per seed on the same training subset (the first
--train-limit examples of the --seed shuffle); the seed sets the head's initialisation and the batch
order. Rows report the mean over the seeds as `value`, with every seed's score and the standard
deviation: fine-tuning on a few thousand examples moves a score by a point or more from seed to seed.

--top-layers N tunes Parallel Adapters' backbone's last N layers too, from the cache (`--top-tuning`,
`--top-targets`; `--no-side`: those layers and the head alone, rows `topN`); `--cache PRECISION` trains
Parallel Adapters' epochs 2.. from an activation cache. With --lr-grid or --seeds every run is a fresh
process (bench.measured.measured_run) and its row records the time per training sample of epoch 1 and of
the later epochs and the peak RSS of each (above the process's after-imports RSS, the mark reset at the
first step of epoch 2): a comparison between rows of one run. bench/cache.py measures epochs from the
cache in a process that never held the whole backbone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.common import write_report
from bench.measured import measured_run

TASKS = {
    "mrpc": ("mrpc/train.tsv", "mrpc/test.tsv", "accuracy_f1_mean"),
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv", "accuracy"),
}
LEARNING_RATES = {"parallel": 2e-3, "lora": 5e-4, "adapters": 5e-4, "full": 5e-5, "probe": 1e-3}
DEFAULT_VAL_SIZE = 500


def split_train(examples: list, val_size: int, train_limit: int | None, seed: int) -> tuple[list, list]:
    """(validation, training) from one seeded shuffle of the training file's examples.

    The shuffle is random.Random(seed).shuffle of a copy, the one pac.data.prepare.subset does; the
    validation split is its first `val_size` examples and the training subset the next `train_limit`
    (None: all the rest), so the two are disjoint. With val_size 0 the training subset is exactly
    the one subset(examples, train_limit, seed) gives, i.e. that of the run without a search."""
    if val_size < 0 or (train_limit is not None and train_limit < 1):
        raise ValueError(f"val_size must be >= 0 and train_limit >= 1, got {val_size} and {train_limit}")
    if val_size + (train_limit or 1) > len(examples):
        raise ValueError(f"{val_size} validation + {train_limit or 1} training examples > the {len(examples)} there are")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    validation, rest = shuffled[:val_size], shuffled[val_size:]
    return validation, rest if train_limit is None else rest[:train_limit]


def parse_lr_grid(text: str | None, techniques: list[str]) -> dict[str, list[float]]:
    """"parallel=1e-3,2e-3;lora=5e-4" -> {technique: [lr, ...]}; a technique not named keeps its usual LR."""
    grid = {technique: [LEARNING_RATES[technique]] for technique in techniques}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        name, _, values = part.partition("=")
        name = name.strip()
        if name not in LEARNING_RATES or not values.strip():
            raise ValueError(f"--lr-grid: expected technique=lr,lr,... with a technique of "
                             f"{', '.join(LEARNING_RATES)}, got {part!r}")
        rates = [float(v) for v in values.split(",") if v.strip()]
        if any(not rate > 0 for rate in rates):
            raise ValueError(f"--lr-grid: learning rates must be > 0, got {part!r}")
        if name in grid:
            grid[name] = rates
    return grid


def write_jsonl(path: Path, examples: list) -> str:
    """Examples -> a JSONL file pac.data.readers reads back as the same examples (None fields left out)."""
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps({k: v for k, v in asdict(example).items() if v is not None}) + "\n")
    return str(path)


def markdown_table(rows: list[dict]) -> str:
    """Rows -> the paper's Table 3 layout: techniques down, tasks across, metric x 100.

    Rows from a learning-rate search (they carry "validation") add each cell's chosen learning rate,
    and a second table lists the validation score of every learning rate of the grid."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    techniques = list(dict.fromkeys(r["technique"] for r in rows))
    by_cell = {(r["task"], r["technique"]): r for r in rows}
    searched = any("validation" in r for r in rows)

    def cell(task: str, technique: str) -> str:
        row = by_cell.get((task, technique))
        if row is None:
            return "—"
        if "values" in row:
            return (f"{row['value'] * 100:.2f} ± {row['std'] * 100:.2f} (lr {row['learning_rate']:g}; "
                    + ", ".join(f"{v * 100:.2f}" for v in row["values"]) + ")" + costs(row))
        return f"{row['value'] * 100:.2f}" + (f" (lr {row['learning_rate']:g})" if "validation" in row else "") \
            + costs(row)

    def costs(row: dict) -> str:
        if row.get("epoch1_ms_per_sample") is None:
            return ""
        mib = 2**20
        text = f"; epoch 1: {row['epoch1_ms_per_sample']:.1f} ms/sample, {row['epoch1_peak_bytes'] / mib:.0f} MiB"
        if row.get("later_ms_per_sample") is not None:
            text += f"; later: {row['later_ms_per_sample']:.1f} ms/sample, {row['later_peak_bytes'] / mib:.0f} MiB"
        return text

    title = ("test/dev, chosen lr" if searched else
             "test/dev, mean ± std over seeds (lr; each seed)" if any("values" in r for r in rows) else "")
    lines = ["| technique | " + " | ".join(f"{t} ({TASKS[t][2]}{', ' + title if title else ''})" for t in tasks)
             + " |", "|---" * (len(tasks) + 1) + "|"]
    for technique in techniques:
        lines.append(f"| {technique} | " + " | ".join(cell(t, technique) for t in tasks) + " |")
    if searched:
        lines += ["", "Validation score of each learning rate (x 100; * chosen):", "",
                  "| task | technique | validation score per learning rate |", "|---|---|---|"]
        for row in rows:
            if "validation" not in row:
                continue
            scores = ", ".join(f"{v['learning_rate']:g}: {v['value'] * 100:.2f}"
                               + ("*" if v["learning_rate"] == row["learning_rate"] else "")
                               for v in row["validation"])
            lines.append(f"| {row['task']} | {row['technique']} | {scores} |")
    return "\n".join(lines) + "\n"


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _technique(args, technique: str):
    from pac.techniques.build import TechniqueConfig

    top = args.top_layers if technique == "parallel" else 0
    return TechniqueConfig(technique, reduction_factor=args.reduction_factor, top_layers=top,
                           top_tuning=args.top_tuning, top_targets=args.top_targets,
                           side_layers=() if args.no_side and top else None)


def label(args, technique: str) -> str:
    """A row's technique: parallel with tuned top layers is `parallel+top2` (LoRA) or `parallel+top2-full`."""
    if technique != "parallel" or not args.top_layers:
        return technique
    return (f"{'top' if args.no_side else 'parallel+top'}{args.top_layers}"
            + ("-full" if args.top_tuning == "full" else "-qv" if args.top_targets == "attention" else ""))


def _single_row(args, task: str, technique: str) -> dict:
    """The run without a search: the technique's usual learning rate, evaluated on test/dev."""
    from pac.train.finetune import FinetuneJob, run_finetune
    from pac.train.loop import TrainConfig

    train_file, eval_file, metric = TASKS[task]
    job = FinetuneJob(
        model=args.model, train_file=str(Path(args.data_dir, train_file)),
        eval_file=str(Path(args.data_dir, eval_file)), task="classification",
        technique=_technique(args, technique),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                          learning_rate=LEARNING_RATES[technique]),
        seq_len=args.seq_len, train_limit=args.train_limit, eval_limit=args.eval_limit,
    )
    result = run_finetune(job, log=_log)
    return {"task": task, "technique": technique, "model": args.model, "metric": metric,
            "value": result["eval"][metric], "eval": result["eval"], "history": result["eval_history"],
            "train_examples": result["train_examples"], "eval_examples": result["eval_examples"],
            "trainable_params": result["trainable_params"], "learning_rate": LEARNING_RATES[technique],
            "train_time_s": sum(result["epoch_times_s"])}


def _job(args, task: str, technique: str, train_path: str, eval_path: str, rate: float, seed: int, limit=None):
    from pac.train.finetune import FinetuneJob
    from pac.train.loop import TrainConfig

    return FinetuneJob(
        model=args.model, train_file=train_path, eval_file=eval_path, task="classification",
        technique=_technique(args, technique),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed, learning_rate=rate),
        seq_len=args.seq_len, eval_limit=limit, cache_precision=args.cache if technique == "parallel" else None,
    )


COSTS = ("epoch1_ms_per_sample", "later_ms_per_sample", "epoch1_peak_bytes", "later_peak_bytes")


def _costs(runs: list[dict]) -> dict:
    """Each cost's mean over the runs (None where no run has it: a 1-epoch run has no later epochs)."""
    import statistics

    out = {}
    for key in COSTS:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.fmean(values) if values else None
    return out


def _seeded_row(args, task: str, technique: str, rate: float, seeds: list[int], split_dir: Path) -> dict:
    """One run per training seed on one fixed training subset, scored on test/dev; the mean and spread."""
    import statistics

    from pac.data.readers import read_examples

    train_file, eval_file, metric = TASKS[task]
    _, training = split_train(read_examples(Path(args.data_dir, train_file)), 0, args.train_limit, args.seed)
    train_path = write_jsonl(split_dir / f"{task}-train.jsonl", training)
    runs = []
    for seed in seeds:
        job = _job(args, task, technique, train_path, str(Path(args.data_dir, eval_file)), rate, seed, args.eval_limit)
        result = measured_run(job)
        runs.append({"seed": seed, "value": result["eval"][metric], "eval": result["eval"],
                     "history": result["history"], "train_time_s": sum(result["epoch_times_s"]),
                     **{k: result[k] for k in COSTS}})
        print(f"{task} {label(args, technique)} lr {rate:g} seed {seed}: {metric} {runs[-1]['value'] * 100:.2f}",
              flush=True)
    values = [r["value"] for r in runs]
    return {"task": task, "technique": label(args, technique), "model": args.model, "metric": metric,
            "value": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values, "seeds": seeds, "runs": runs, "learning_rate": rate, **_costs(runs),
            "train_examples": len(training), "train_time_s": sum(r["train_time_s"] for r in runs)}


def _searched_row(args, task: str, technique: str, rates: list[float], split_dir: Path) -> dict:
    """Train once per learning rate, choose on the validation split, score the chosen model on test/dev."""
    from pac.data.readers import read_examples

    train_file, eval_file, metric = TASKS[task]
    validation, training = split_train(read_examples(Path(args.data_dir, train_file)), args.val_size,
                                       args.train_limit, args.seed)
    val_path = write_jsonl(split_dir / f"{task}-validation.jsonl", validation)
    train_path = write_jsonl(split_dir / f"{task}-train.jsonl", training)
    runs, best = [], None
    for rate in rates:
        # no train_limit: the file already is the training subset, in split order
        job = _job(args, task, technique, train_path, val_path, rate, args.seed)
        result = measured_run(job, str(Path(args.data_dir, eval_file)), args.seq_len, args.eval_limit, args.seed)
        score = result["eval"][metric]
        runs.append({"learning_rate": rate, "value": score, "eval": result["eval"], "test": result["test"],
                     "history": result["history"], "train_time_s": sum(result["epoch_times_s"]),
                     **{k: result[k] for k in COSTS}})
        print(f"{task} {label(args, technique)} lr {rate:g}: validation {metric} {score * 100:.2f}", flush=True)
        if best is None or score > best[0]:  # ties keep the earlier learning rate
            best = (score, rate, result)
    score, rate, result = best
    return {"task": task, "technique": label(args, technique), "model": args.model, "metric": metric,
            "value": result["test"][metric], "eval": result["test"], "learning_rate": rate, "lr_grid": rates,
            "validation_value": score, "validation": runs, "train_examples": result["train_examples"],
            "validation_examples": len(validation), "trainable_params": result["trainable_params"],
            **{k: result[k] for k in COSTS}, "train_time_s": sum(r["train_time_s"] for r in runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--tasks", default="mrpc,sst2")
    parser.add_argument("--techniques", default="full,lora,adapters,parallel")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--train-limit", type=int, help="seeded random subset of the training set")
    parser.add_argument("--eval-limit", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reduction-factor", type=int, default=8,
                        help="k: the side network's width is d / k (also the Houlsby bottleneck's)")
    parser.add_argument("--lr-grid", help='learning rates to choose from on a validation split, e.g. '
                        '"parallel=1e-3,2e-3,4e-3;lora=2.5e-4,5e-4,1e-3" (a technique not named: its usual one)')
    parser.add_argument("--val-size", type=int, help="validation examples carved out of the training file, "
                        f"disjoint from the training subset (default {DEFAULT_VAL_SIZE} with --lr-grid)")
    parser.add_argument("--seeds", help="train once per seed (comma-separated) and report the mean and spread")
    parser.add_argument("--lr", help='fixed learning rates with --seeds, e.g. "parallel=1e-3;lora=2e-3" '
                        "(a technique not named: its usual one)")
    parser.add_argument("--top-layers", type=int, default=0,
                        help="parallel: also tune the backbone's last N layers from the cache (pac.techniques.top)")
    parser.add_argument("--top-tuning", choices=["lora", "full"], default="lora")
    parser.add_argument("--top-targets", choices=["all", "attention"], default="all",
                        help="LoRA of the top layers on every linear layer, or on the attention's q and v")
    parser.add_argument("--no-side", action="store_true",
                        help="with --top-layers: no side network, the tuned top layers alone (rows `topN`)")
    parser.add_argument("--cache", choices=["fp32", "fp16", "bf16", "int8"],
                        help="parallel: train epochs 2.. from an activation cache of this precision")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    techniques = args.techniques.split(",")
    search = args.lr_grid is not None or args.val_size is not None
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
    if seeds is not None and search:
        parser.error("--seeds takes fixed learning rates (--lr), not a search (--lr-grid / --val-size)")
    if seeds is not None:
        try:
            rates = {t: r[0] for t, r in parse_lr_grid(args.lr, techniques).items()}
        except ValueError as error:
            parser.error(str(error).replace("--lr-grid", "--lr"))
    if search:
        args.val_size = DEFAULT_VAL_SIZE if args.val_size is None else args.val_size
        if args.val_size < 1:
            parser.error("--val-size must be >= 1 for a learning-rate search")
        try:
            grid = parse_lr_grid(args.lr_grid, techniques)
        except ValueError as error:
            parser.error(str(error))
    config = {**vars(args), "selection": (
        f"learning rate chosen per technique and task on a {args.val_size}-example validation split of the "
        "training file (first examples of one seeded shuffle; the training subset is the next --train-limit), "
        "by the task's metric; test/dev score of that same trained model") if search else
        (f"seeds {seeds} on one training subset, learning rates {rates}; value = mean over the seeds"
         if seeds is not None else "each technique's usual learning rate, no search")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="pac-accuracy-") as split_dir:
        for task in args.tasks.split(","):
            for technique in techniques:
                if seeds is not None:
                    row = _seeded_row(args, task, technique, rates[technique], seeds, Path(split_dir))
                elif search:
                    row = _searched_row(args, task, technique, grid[technique], Path(split_dir))
                else:
                    row = _single_row(args, task, technique)
                print(f"{task} {label(args, technique)}: {row['metric']} {row['value'] * 100:.2f}"
                      + (f" (lr {row['learning_rate']:g} chosen on validation)" if search else "")
                      + (f" (mean of {len(seeds)} seeds, std {row['std'] * 100:.2f})" if seeds else ""), flush=True)
                rows.append(row)
                write_report(args.json, "accuracy", config, rows)  # keep what is done if a later run fails
                Path(args.json).with_suffix(".md").write_text(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
