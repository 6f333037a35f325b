"""The product's own task: the household's held-out questions, tuned with each technique at the same epochs.

    .venv/bin/python -m bench.household --seeds 0,1,2 --json bench/results/household-smollm2.json

Each run, in a fresh process: `pacctl finetune`'s code (pac.train.finetune) tunes smollm2-135m on the
built-in household training file (126 questions and answers about one imaginary family, seq_len 96,
batch 8), then the tuned model answers the 32 held-out paraphrased questions greedily (24 tokens at
most, as `pacctl demo`); a question is right when the answer holds its expected fact (every keyword,
pac.train.household.answer_is_right). Parallel Adapters variants train from the activation cache (fp32)
after epoch 1 and answer through a saved adapter re-attached to a fresh backbone, as a deployed adapter
does; LoRA trains inside the backbone every epoch and answers with it. Beside the score: epoch-1 and
later-epoch time per sample and peak RSS per phase (above the process's RSS after its imports).

Variants (`--variants`): `side` (Parallel Adapters' side network), `top3` (the last 3 layers tuned with
LoRA on every linear layer, no side network), `top3+side` (both), `lora` (LoRA on q and v, every layer).
Learning rates: `--lr "side=2e-3,top3=2e-3,lora=1e-3"` (defaults below), or chosen per variant with
`--lr-grid 1e-3,3e-3,1e-2`: one run per rate (seed 0) with `--validation` examples of the training file
held out (default 26, a fifth), the rate whose best epoch scores the lowest validation loss is kept, and
the seeds then train on the whole file at it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ANSWER_TOKENS = 24
VARIANTS = {
    "side": {"name": "parallel"},
    "top3": {"name": "parallel", "top_layers": 3, "side_layers": ()},
    "top3+side": {"name": "parallel", "top_layers": 3},
    "lora": {"name": "lora"},
}
DEFAULT_LR = {"side": 2e-3, "top3": 2e-3, "top3+side": 2e-3, "lora": 1e-3}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(model: str, variant: str, lr: float, epochs: int, seed: int, validation: int, queue) -> None:
    """In a fresh process: tune, answer the held-out questions, report."""
    import tempfile

    import torch

    from bench.common import peak_rss_bytes, reset_peak_rss, rss_bytes
    from pac.adapter import load_adapter, save_adapter
    from pac.techniques.build import ParallelAdaptersModel, TechniqueConfig
    from pac.train.finetune import FinetuneJob, _load, run_finetune
    from pac.train.generate import generate
    from pac.train.household import TRAIN_FILE, answer_is_right, heldout_questions
    from pac.train.loop import TrainConfig

    torch.set_num_threads(torch.get_num_threads())
    base = rss_bytes()
    reset_peak_rss()
    peaks: dict[str, int] = {}

    def on_step(info) -> None:
        if info.epoch >= 1 and "epoch1" not in peaks:
            peaks["epoch1"] = peak_rss_bytes() - base
            reset_peak_rss()

    technique = TechniqueConfig(**VARIANTS[variant])
    with tempfile.TemporaryDirectory(prefix="pac-household-") as tmp:
        job = FinetuneJob(model=model, train_file=str(TRAIN_FILE), task="lm", technique=technique,
                          train=TrainConfig(epochs=epochs, batch_size=8, learning_rate=lr, seed=seed), seq_len=96,
                          cache_precision="fp32" if technique.name == "parallel" else None, cache_dir=tmp,
                          validation=validation)
        result = run_finetune(job, log=_log, on_step=on_step)
        peaks["later" if "epoch1" in peaks else "epoch1"] = peak_rss_bytes() - base
        tuned = result["model"]
        if isinstance(tuned, ParallelAdaptersModel):  # as deployed: the adapter on a fresh backbone
            path = save_adapter(tuned, Path(tmp) / "adapter.safetensors")
            backbone = _load(job)
            side_model = load_adapter(path, backbone).eval()
        else:  # LoRA lives in the backbone's own modules
            backbone, side_model = tuned.backbone, None
            tuned.eval()
        started = time.perf_counter()
        answers = [(q, generate(backbone, q.prompt, side_model, max_new_tokens=ANSWER_TOKENS))
                   for q in heldout_questions()]
        answer_s = time.perf_counter() - started
    times, n = result["epoch_times_s"], result["train_examples"]
    best = next((v for v in result["validation_history"] if v["epoch"] == result["best_epoch"]), None)
    queue.put({"variant": variant, "seed": seed, "learning_rate": lr, "epochs": epochs,
               "validation_examples": validation, "validation_best": best,
               "right": sum(answer_is_right(a, q) for q, a in answers), "questions": len(answers),
               "final_loss": result["final_loss"], "trainable_params": result["trainable_params"],
               "epoch1_ms_per_sample": times[0] / n * 1e3,
               "later_ms_per_sample": sum(times[1:]) / len(times[1:]) / n * 1e3 if len(times) > 1 else None,
               "epoch1_peak_bytes": peaks["epoch1"], "later_peak_bytes": peaks.get("later"),
               "answer_s": answer_s, "answers": [{"question": q.prompt, "answer": a, "right": answer_is_right(a, q)}
                                                 for q, a in answers]})


def measured(model: str, variant: str, lr: float, epochs: int, seed: int, validation: int = 0) -> dict:
    from bench.measured import in_fresh_process

    return in_fresh_process(_run, model, variant, lr, epochs, seed, validation,
                            what=f"the run of {variant} seed {seed}")


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        right = [r["right"] for r in mine]
        later = [r["later_ms_per_sample"] for r in mine if r["later_ms_per_sample"] is not None]
        out.append({"variant": variant, "seeds": [r["seed"] for r in mine], "right": right,
                    "right_mean": statistics.mean(right), "right_sd": statistics.stdev(right) if len(right) > 1 else 0.0,
                    "questions": mine[0]["questions"],
                    "epoch1_ms_per_sample": statistics.mean(r["epoch1_ms_per_sample"] for r in mine),
                    "later_ms_per_sample": statistics.mean(later) if later else None,
                    "epoch1_peak_mib": max(r["epoch1_peak_bytes"] for r in mine) / 2**20,
                    "later_peak_mib": max((r["later_peak_bytes"] or 0) for r in mine) / 2**20})
    return out


def main() -> None:
    from bench.common import write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variants", default="side,top3,lora", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=8, help="as pacctl demo (default 8)")
    parser.add_argument("--lr", default="", help='per variant, e.g. "top3=2e-3,lora=1e-3"')
    parser.add_argument("--lr-grid", default="", help="learning rates to choose from on a validation split")
    parser.add_argument("--validation", type=int, default=26, help="held-out training examples for --lr-grid")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    rates = dict(DEFAULT_LR)
    for part in filter(None, options.lr.split(",")):
        name, _, value = part.partition("=")
        rates[name.strip()] = float(value)
    rows, search = [], []

    def save() -> None:  # after every run: a stopped benchmark keeps what it measured
        if options.json:
            write_report(options.json, "household", vars(options) | {"json": str(options.json), "lr": rates},
                         rows + [{"summary": summary(rows), "search": search}])

    for variant in options.variants.split(",") if options.lr_grid else ():
        tried = []
        for lr in (float(r) for r in options.lr_grid.split(",")):
            row = measured(options.model, variant, lr, options.epochs, 0, options.validation)
            tried.append(row)
            search.append({k: v for k, v in row.items() if k != "answers"})
            _log(f"search {variant} lr {lr:g}: validation {row['validation_best']}")
            save()
        rates[variant] = min(tried, key=lambda r: r["validation_best"]["loss"])["learning_rate"]
        _log(f"{variant}: learning rate {rates[variant]:g}")
    for seed in (int(s) for s in options.seeds.split(",")):
        for variant in options.variants.split(","):
            row = measured(options.model, variant, rates[variant], options.epochs, seed)
            rows.append(row)
            _log(f"{variant} seed {seed} lr {row['learning_rate']:g}: {row['right']}/{row['questions']} right; "
                 f"epoch 1 {row['epoch1_ms_per_sample']:.1f} ms/sample, later "
                 f"{row['later_ms_per_sample'] or 0:.1f} ms/sample, peaks {row['epoch1_peak_bytes'] / 2**20:.0f} / "
                 f"{(row['later_peak_bytes'] or 0) / 2**20:.0f} MiB")
            save()
    print(json.dumps(summary(rows), indent=1))


if __name__ == "__main__":
    main()
