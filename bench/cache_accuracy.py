"""Accuracy of Parallel Adapters trained from the activation cache and on quantised backbones, against
the uncached run (same seed, data, epochs and learning rate).

    .venv/bin/python -m bench.cache_accuracy --model minilm --task mrpc --epochs 3 --train-limit 2000 \
        --json bench/results/cache-accuracy-minilm.json

Rows: uncached fp32 backbone; cache at each precision; an int8 and a 4-bit backbone (uncached).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.accuracy import LEARNING_RATES, TASKS
from bench.common import write_report
from pac.formats import SIDE_PRECISIONS


def main(argv=None) -> int:
    from pac.techniques.build import TechniqueConfig
    from pac.train.finetune import FinetuneJob, run_finetune
    from pac.train.loop import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="mrpc", choices=sorted(TASKS))
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--quantizations", default="int8,int4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side-precision", default="fp32", choices=SIDE_PRECISIONS,
                        help="the side network's arithmetic in every run (bf16: autocast)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    train_file, eval_file, metric = TASKS[args.task]
    runs = [("none", None)] + [("none", p) for p in args.precisions.split(",") if p]
    runs += [(q, None) for q in args.quantizations.split(",") if q]
    rows = []
    for quantization, precision in runs:
        with tempfile.TemporaryDirectory(prefix="pac-cache-accuracy-") as cache_dir:
            job = FinetuneJob(
                model=args.model, train_file=str(Path(args.data_dir, train_file)),
                eval_file=str(Path(args.data_dir, eval_file)), task="classification",
                technique=TechniqueConfig("parallel"),
                train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                                  learning_rate=LEARNING_RATES["parallel"], side_precision=args.side_precision),
                seq_len=args.seq_len, train_limit=args.train_limit, quantization=quantization,
                cache_precision=precision, cache_dir=cache_dir,
            )
            result = run_finetune(job, log=lambda line: print(line, file=sys.stderr, flush=True))
        row = {"task": args.task, "model": args.model, "quantization": quantization, "cache": precision,
               "side_precision": args.side_precision,
               "metric": metric, "value": result["eval"][metric], "eval": result["eval"],
               "epoch_times_s": result["epoch_times_s"],
               "backbone_runs": (result["cache"] or {}).get("backbone_runs")}
        rows.append(row)
        print(f"backbone {quantization} cache {precision}: {metric} {row['value'] * 100:.2f}", flush=True)
        write_report(args.json, "cache-accuracy", vars(args), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
