"""Training time per sample (forward / backward) and peak memory of each fine-tuning technique.

    .venv/bin/python -m bench.techniques --model NAME --techniques full,lora,adapters,parallel \
        --batch-size B --seq-len S --steps N --json PATH [--lm-rows] [--png PATH]

Each technique runs in a fresh process, so one technique's peak cannot hide another's. In that
process the RSS is read after the imports (the PyTorch libraries alone take a few hundred MB); the
model is loaded; the kernel's peak-RSS mark is then reset (so the model loader's transient peak does
not count) and one untimed warm-up step and N timed steps run. `peak_memory_bytes` is the peak RSS
of those steps above the after-imports RSS (it includes the model's weights); `peak_rss_bytes` is the
whole peak. On CUDA, `torch.cuda.max_memory_allocated` is reported instead.

Classification rows use a sequence-classification head on MRPC sentence pairs; with --lm-rows, rows
for the language-model head on the built-in chat data follow, where the frozen LM head is applied only
at the positions that carry loss. Every sample is exactly --seq-len real tokens (bench/samples.py).
Times are wall-clock; `cpu_time_per_sample_s` (process CPU time) is reported beside them because a
shared machine inflates wall time unevenly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import peak_rss_bytes, reset_peak_rss, rss_bytes, write_report

DEFAULT_CLASSIFICATION_DATA = "../shared/data/mrpc/train.tsv"


def worker(args) -> dict:
    after_imports_pre = rss_bytes()
    import torch

    from bench.samples import chat_samples, classification_samples
    from pac.data.batching import collate, to_device
    from pac.heads import HeadConfig
    from pac.models.backbone import load_backbone
    from pac.techniques.build import TechniqueConfig, build_model, trainable_parameters

    torch.manual_seed(0)
    after_imports = rss_bytes()
    device = "cuda" if args.device == "cuda" else "cpu"
    backbone = load_backbone(args.model, device=device)
    head = args.head
    needed = args.batch_size * (args.steps + 1)
    if head == "lm":
        items = chat_samples(backbone.tokenizer, args.seq_len, needed)
    else:
        items = classification_samples(backbone.tokenizer, backbone.family, args.seq_len, needed, args.data)
    model = build_model(backbone, TechniqueConfig(args.technique), HeadConfig(task=head))
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    peak_reset = reset_peak_rss()
    load_peak = peak_rss_bytes()
    forward_s = backward_s = step_s = 0.0

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return value, time.perf_counter() - start

    cpu_start = None
    for step in range(args.steps + 1):
        if step == 1:
            cpu_start = time.process_time()
        group = items[step * args.batch_size:(step + 1) * args.batch_size]
        batch = to_device(collate(group, backbone.tokenizer.pad_token_id, head), device)
        model.train()
        loss, f = timed(lambda: model(batch).loss)  # noqa: B023
        optimizer.zero_grad(set_to_none=True)
        _, b = timed(loss.backward)
        _, s = timed(optimizer.step)
        if step > 0:  # step 0 warms up (allocator, kernels, optimizer state)
            forward_s, backward_s, step_s = forward_s + f, backward_s + b, step_s + s
    samples = args.steps * args.batch_size
    cpu_per_sample = (time.process_time() - cpu_start) / samples
    row = {
        "technique": args.technique, "model": args.model, "head": head, "device": device,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps,
        "time_per_sample_s": (forward_s + backward_s + step_s) / samples,
        "forward_s": forward_s / samples, "backward_s": backward_s / samples, "optimizer_s": step_s / samples,
        "cpu_time_per_sample_s": cpu_per_sample,
        "trainable_params": sum(p.numel() for p in params),
        "rss_after_imports_bytes": after_imports, "rss_before_torch_bytes": after_imports_pre,
    }
    if device == "cuda":
        row["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
        row.update(peak_rss_bytes=peak, peak_memory_bytes=peak - after_imports,
                   peak_counts_training_only=peak_reset, load_peak_rss_bytes=load_peak)
    return row


def run_fresh(args, technique: str, head: str) -> dict:
    command = [sys.executable, "-m", "bench.techniques", "--worker", "--technique", technique, "--head", head,
               "--model", args.model, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--steps", str(args.steps), "--device", args.device, "--data", args.data]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{technique}/{head} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['technique']}\n{r['head']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(rows) * 2), 4))
    forward = [r["forward_s"] * 1e3 for r in rows]
    backward = [(r["backward_s"] + r["optimizer_s"]) * 1e3 for r in rows]
    ax1.bar(labels, forward, label="forward")
    ax1.bar(labels, backward, bottom=forward, label="backward + optimizer")
    ax1.set_ylabel("ms per sample")
    ax1.legend()
    ax2.bar(labels, [r["peak_memory_bytes"] / 2**20 for r in rows], color="tab:green")
    ax2.set_ylabel("peak memory above imports (MiB)")
    fig.suptitle(f"{rows[0]['model']}: batch {rows[0]['batch_size']}, sequence {rows[0]['seq_len']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--techniques", default="full,lora,adapters,parallel")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--data", default=DEFAULT_CLASSIFICATION_DATA, help="classification data (TSV/CSV/JSONL)")
    parser.add_argument("--lm-rows", action="store_true", help="add language-model-head rows on chat data")
    parser.add_argument("--json", required=False, help="where to write the report")
    parser.add_argument("--png", help="chart path (default: the JSON path with .png)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--technique", help=argparse.SUPPRESS)
    parser.add_argument("--head", default="classification", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    techniques = [t for t in args.techniques.split(",") if t]
    heads = ["classification", "lm"] if args.lm_rows else ["classification"]
    rows = []
    for head in heads:
        for technique in techniques:
            row = run_fresh(args, technique, head)
            print(f"{technique:9s} {head:14s} {row['time_per_sample_s'] * 1e3:8.1f} ms/sample "
                  f"(fwd {row['forward_s'] * 1e3:.1f}, bwd {row['backward_s'] * 1e3:.1f}) "
                  f"peak {row['peak_memory_bytes'] / 2**20:8.1f} MiB", flush=True)
            rows.append(row)
    config = {k: getattr(args, k) for k in ("model", "techniques", "batch_size", "seq_len", "steps", "device", "data")}
    config["lm_rows"] = args.lm_rows
    if args.json:
        write_report(args.json, "techniques", config, rows)
        plot(rows, Path(args.png) if args.png else Path(args.json).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
