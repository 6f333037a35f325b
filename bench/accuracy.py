"""Final metric of each technique at the same budget (the paper's Table 3), on real GLUE data.

    .venv/bin/python -m bench.accuracy --model minilm --tasks mrpc,sst2 \
        --techniques full,lora,adapters,parallel --epochs 3 --train-limit N --json PATH

MRPC: train.tsv -> test.tsv, reported as the mean of accuracy and F1 (as GLUE does); SST-2:
train.tsv -> dev.tsv, accuracy. Every technique sees the same examples in the same order, the same
epochs, batch size and sequence length; only the learning rate is each technique's usual one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import write_report

TASKS = {
    "mrpc": ("mrpc/train.tsv", "mrpc/test.tsv", "accuracy_f1_mean"),
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv", "accuracy"),
}
LEARNING_RATES = {"parallel": 2e-3, "lora": 5e-4, "adapters": 5e-4, "full": 5e-5}


def markdown_table(rows: list[dict]) -> str:
    """Rows -> the paper's Table 3 layout: techniques down, tasks across, metric x 100."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    techniques = list(dict.fromkeys(r["technique"] for r in rows))
    value = {(r["task"], r["technique"]): r["value"] * 100 for r in rows}
    lines = ["| technique | " + " | ".join(f"{t} ({TASKS[t][2]})" for t in tasks) + " |",
             "|---" * (len(tasks) + 1) + "|"]
    for technique in techniques:
        cells = [f"{value[(t, technique)]:.2f}" if (t, technique) in value else "—" for t in tasks]
        lines.append(f"| {technique} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from pac.techniques.build import TechniqueConfig
    from pac.train.job import FinetuneJob, run_job
    from pac.train.loop import TrainConfig

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
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    rows = []
    for task in args.tasks.split(","):
        train_file, eval_file, metric = TASKS[task]
        for technique in args.techniques.split(","):
            job = FinetuneJob(
                model=args.model, train_file=str(Path(args.data_dir, train_file)),
                eval_file=str(Path(args.data_dir, eval_file)), task="classification",
                technique=TechniqueConfig(technique),
                train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                                  learning_rate=LEARNING_RATES[technique]),
                seq_len=args.seq_len, train_limit=args.train_limit, eval_limit=args.eval_limit,
            )
            result = run_job(job, log=lambda line: print(line, file=sys.stderr, flush=True))
            row = {"task": task, "technique": technique, "model": args.model, "metric": metric,
                   "value": result["eval"][metric], "eval": result["eval"], "history": result["eval_history"],
                   "train_examples": result["train_examples"], "eval_examples": result["eval_examples"],
                   "trainable_params": result["trainable_params"], "learning_rate": LEARNING_RATES[technique],
                   "train_time_s": sum(result["epoch_times_s"])}
            print(f"{task} {technique}: {metric} {row['value'] * 100:.2f}", flush=True)
            rows.append(row)
            write_report(args.json, "accuracy", vars(args), rows)  # keep what is done if a later run fails
            Path(args.json).with_suffix(".md").write_text(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
