"""Epochs from the activation cache against LoRA and against Parallel Adapters' first epoch; and the
quantised backbones.

    .venv/bin/python -m bench.cache --model NAME --precisions fp32,fp16,int8 --samples N \
        --batch-size B --seq-len S --json PATH

Rows (`technique`): `lora` (one epoch of LoRA), `parallel` (Parallel Adapters' first epoch: backbone
forward, side network, writing the cache), `parallel-cached` per precision (an epoch that reads the
cache: a fresh process that never imports or builds the backbone, only the side network and head,
loaded from the adapter saved by the first epoch) and per `--side-precisions` entry (the side network's
arithmetic: fp32, or bf16 autocast; `side_precision` in the row), and `quantized-backbone` per
quantisation (forward time and memory of the frozen backbone alone). With bf16 among the side
precisions, a second `lora` row trains LoRA under the same bf16 autocast (`side_precision` "bf16" there:
the backbone's arithmetic), so the comparison can be made like for like. Every row is a fresh process; memory is counted as in
bench.techniques (peak RSS above the after-imports RSS, the peak mark reset after loading).
All samples are exactly --seq-len real tokens; the head is a sequence-classification head.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import peak_rss_bytes, reset_peak_rss, rss_bytes, write_report


def _batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def _timed_epoch(step, groups) -> float:
    started = time.perf_counter()
    for group in groups:
        step(group)
    return time.perf_counter() - started


def worker_backbone(args) -> dict:
    """lora / parallel (first epoch, writing the cache) / quantized-backbone rows."""
    import torch

    from bench.samples import classification_samples
    from pac.adapter import save_adapter
    from pac.cache import ActivationCache
    from pac.data.batching import collate
    from pac.heads import HeadConfig
    from pac.models.backbone import load_backbone
    from pac.quant import quantize_backbone
    from pac.techniques.build import TechniqueConfig, build_model, trainable_parameters
    from pac.train.cached import CachedStates, cache_key_for

    after_imports = rss_bytes()
    torch.manual_seed(0)
    backbone = load_backbone(args.model)
    fingerprint = backbone.fingerprint()
    quantize_backbone(backbone, args.quantization)
    items = classification_samples(backbone.tokenizer, backbone.family, args.seq_len, args.samples, args.data)
    pad = backbone.tokenizer.pad_token_id
    groups = [collate(g, pad, "classification") for g in _batches(items, args.batch_size)]
    row = {"model": args.model, "precision": None, "quantization": args.quantization}
    if args.role == "quantized-backbone":
        backbone.run(groups[0])  # warm-up
        reset_peak_rss()
        elapsed = _timed_epoch(backbone.run, groups)
        row.update(technique="quantized-backbone", forward_s=elapsed / len(items))
    else:
        top = args.top_layers if args.role == "parallel" else 0
        side_layers = () if args.no_side and top else None
        model = build_model(backbone, TechniqueConfig(args.role, top_layers=top, side_layers=side_layers),
                            HeadConfig("classification"))
        optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
        states = None
        if args.role == "parallel":
            cache = ActivationCache(args.cache_dir, cache_key_for(backbone, model.side.spec, args.quantization,
                                                                  fingerprint), args.precision, keep=True)
            states = CachedStates(cache)
        item_groups = _batches(items, args.batch_size)

        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.side_precision == "bf16")

        def step(index):
            batch = groups[index]
            with autocast:
                out = states.forward(model, item_groups[index], batch) if states else model(batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()

        reset_peak_rss()
        elapsed = _timed_epoch(step, range(len(groups)))
        row.update(technique=args.role, precision=args.precision if states else None,
                   side_precision=args.side_precision, top_layers=top, side_network=not (args.no_side and top))
        if states:
            cache.flush()
            row["cache_bytes_per_sample"] = cache.manifest()["record_bytes"] / len(items)
            save_adapter(model, Path(args.cache_dir) / "adapter.safetensors")
            Path(args.cache_dir, "items.json").write_text(json.dumps(
                [{"input_ids": it.input_ids, "target": it.target, "decoder_ids": it.decoder_ids} for it in items]))
            cache.close()
    peak = peak_rss_bytes()
    row.update(time_per_sample_s=row.get("time_per_sample_s", elapsed / len(items)), peak_rss_bytes=peak,
               peak_memory_bytes=peak - after_imports, rss_after_imports_bytes=after_imports,
               samples=len(items), batch_size=args.batch_size, seq_len=args.seq_len)
    return row


def worker_cached(args) -> dict:
    """An epoch from the cache in a process that never imports transformers' model code (with tuned top
    layers: that loads the backbone, keeps the tuned layers and drops the rest before the measurement)."""
    import torch

    from pac.adapter import load_side_model
    from pac.cache import ActivationCache, CacheKey
    from pac.data.batching import Encoded, collate
    from pac.train.cached import CachedStates

    after_imports = rss_bytes()
    if args.top_layers:
        import gc

        from bench.common import release_freed_memory
        from pac.adapter import load_adapter
        from pac.models.backbone import load_backbone

        model = load_adapter(Path(args.cache_dir) / "adapter.safetensors", load_backbone(args.model))
        model.release_backbone()  # the tuned layers and the final norm stay
        gc.collect()
        release_freed_memory()
    else:
        model = load_side_model(Path(args.cache_dir) / "adapter.safetensors")
    model.side.checkpoint_blocks = bool(args.checkpoint)
    model.side.compute_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.side_precision]
    key_dir = next(p for p in Path(args.cache_dir).iterdir() if p.is_dir() and p.name.endswith(args.precision))
    manifest = json.loads((key_dir / "manifest.json").read_text())
    cache = ActivationCache(args.cache_dir, CacheKey(**{**manifest["key"], "taps": tuple(
        tuple(t) for t in manifest["key"]["taps"])}), args.precision, read_mode=args.read_mode, keep=True)
    states = CachedStates(cache)
    items = [Encoded(tuple(r["input_ids"]), r["target"], None if r["decoder_ids"] is None else tuple(r["decoder_ids"]))
             for r in json.loads(Path(args.cache_dir, "items.json").read_text())]
    item_groups = _batches(items, args.batch_size)
    groups = [collate(g, 0, "classification") for g in item_groups]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(index):
        out = states.forward(model, item_groups[index], groups[index])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step(0)  # warm-up
    reset_peak_rss()
    elapsed = _timed_epoch(step, range(len(groups)))
    peak = peak_rss_bytes()
    assert states.backbone_runs == 0 and (args.top_layers or "transformers.models" not in " ".join(sys.modules))
    return {"technique": "parallel-cached", "model": args.model, "precision": args.precision,
            "quantization": args.quantization, "time_per_sample_s": elapsed / len(items),
            "peak_rss_bytes": peak, "peak_memory_bytes": peak - after_imports,
            "rss_after_imports_bytes": after_imports, "cache_bytes_per_sample": manifest["record_bytes"] / len(items),
            "read_mode": args.read_mode, "samples": len(items), "batch_size": args.batch_size, "seq_len": args.seq_len,
            "activation_checkpointing": bool(args.checkpoint), "side_precision": args.side_precision,
            "top_layers": args.top_layers}


def fresh(args, role: str, **extra) -> dict:
    command = [sys.executable, "-m", "bench.cache", "--worker", role, "--model", args.model, "--samples",
               str(args.samples), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--data", args.data, "--read-mode", args.read_mode, "--top-layers", str(args.top_layers)]
    command += ["--no-side"] if args.no_side else []
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{role} {extra} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{row['technique']:18s} {row.get('precision') or row['quantization']:5s} "
          f"{'ckpt' if row.get('activation_checkpointing') else '    '} {row.get('side_precision') or '':4s} "
          f"{row['time_per_sample_s'] * 1e3:9.2f} ms/sample  peak {row['peak_memory_bytes'] / 2**20:8.1f} MiB",
          flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--quantizations", default="none,int8,int4")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--data", default="../shared/data/mrpc/train.tsv")
    parser.add_argument("--read-mode", choices=["stream", "mmap"], default="stream")
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp16", help=argparse.SUPPRESS)
    parser.add_argument("--quantization", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both",
                        help="epochs from the cache with side-block activation checkpointing off, on, or both rows")
    parser.add_argument("--checkpoint", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--side-precisions", default="fp32",
                        help="the side network's arithmetic in epochs from the cache: fp32 and/or bf16 (autocast)")
    parser.add_argument("--side-precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--top-layers", type=int, default=0,
                        help="Parallel Adapters with the backbone's last N layers tuned too (from the cache)")
    parser.add_argument("--no-side", action="store_true", help="with --top-layers: the tuned layers alone")
    args = parser.parse_args(argv)
    if args.worker:
        args.role = args.worker
        print(json.dumps(worker_cached(args) if args.worker == "cached" else worker_backbone(args)))
        return 0
    side_precisions = args.side_precisions.split(",")
    rows = [fresh(args, "lora")]
    if "bf16" in side_precisions:
        rows.append(fresh(args, "lora", side_precision="bf16"))
    for precision in args.precisions.split(","):
        with tempfile.TemporaryDirectory(prefix="pac-bench-cache-") as directory:
            first = fresh(args, "parallel", precision=precision, cache_dir=directory)
            if precision == args.precisions.split(",")[0]:
                rows.append(first)
            modes = {"off": [0], "on": [1], "both": [0, 1]}[args.checkpointing]
            for mode in modes:
                for side_precision in side_precisions:
                    rows.append(fresh(args, "cached", precision=precision, cache_dir=directory, checkpoint=mode,
                                      side_precision=side_precision))
    for quantization in filter(None, args.quantizations.split(",")):
        rows.append(fresh(args, "quantized-backbone", quantization=quantization))
    if args.json:
        config = {k: getattr(args, k) for k in ("model", "precisions", "quantizations", "samples", "batch_size",
                                                "seq_len", "data", "read_mode", "checkpointing", "side_precisions",
                                                "top_layers", "no_side")}
        write_report(args.json, "cache", config, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
