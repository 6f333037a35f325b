"""The baseline a user would otherwise run on a cluster: `torchrun` DDP (gloo) training LoRA.

    .venv/bin/python -m bench.ddp_lora run --devices N --model minilm \
        --train ../shared/data/mrpc/train.tsv --eval ../shared/data/mrpc/test.tsv \
        --samples S --eval-samples E --epochs 3 --batch-size 16 --seq-len 128 --lr 5e-4 --seed 0 \
        [--threads T] --json PATH

`run` launches `python -m torch.distributed.run --nproc-per-node N ... -m bench.ddp_lora worker ...` on
this host (one process per "device") and times it; `run_ddp_lora()` is the same from Python.

The model is the project's own LoRA (TechniqueConfig("lora"): r=8, alpha=16, q/v projections) with a
classification head, built by build_model around load_backbone; the data are the project's (the same
seeded subset as pac.train.finetune for the same --samples and --seed, encoded by encode_example). Every
rank holds the whole model. Each global mini-batch of B samples (the order of pac.train.loop.batches
with the seed) is cut into `world` contiguous near-equal parts, one per rank; rank r's mean loss is
scaled by world * rows_r / B, so DDP's gradient average equals the single-process mean-loss gradient
of the whole mini-batch. Then gradient clipping at TrainConfig's max_grad_norm and AdamW with the
linear warm-up / decay of make_optimizer, as in pac.train.loop.train.

Figures: `epoch_times_s` (barrier before and after each epoch); `total_time_s`, from the launch of
torchrun (process start-up, imports, model load and rendezvous included) to the end of the last epoch,
and `wall_time_s`, launch to exit (rank 0's evaluation included); `peak_memory_bytes_per_device`, each
rank's whole-process peak RSS at the end of training; `final_metric`, rank 0's pac.train.loop.evaluate
on the eval subset after training.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import peak_rss_bytes, write_report

BENCH = "ddp-lora"
SYSTEM = "ddp-lora"
DEFAULT_TRAIN = "../shared/data/mrpc/train.tsv"
DEFAULT_EVAL = "../shared/data/mrpc/test.tsv"  # MRPC as shared has train.tsv and test.tsv, no dev.tsv
REPO = Path(__file__).resolve().parents[1]


# ---- pieces shared by the worker and by tests that check it against single-process training -------

def rank_slices(batch_rows: int, world: int) -> list[tuple[int, int]]:
    """Contiguous near-equal [start, end) parts of a mini-batch, one per rank (the first get one more)."""
    base, extra = divmod(batch_rows, world)
    slices, start = [], 0
    for rank in range(world):
        end = start + base + (1 if rank < extra else 0)
        slices.append((start, end))
        start = end
    return slices


def disable_dropout(model) -> None:
    """p = 0 on every dropout module (BERT's attention reads its dropout module's p as well)."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def prepare(model_name: str, train_file: str, eval_file: str | None, samples: int | None,
            eval_samples: int | None, seq_len: int, seed: int, sharded: tuple[int, int] | None = None):
    """(model, pad_id, task, train_items, eval_items), as pac.train.finetune.run_finetune loads and builds them.
    `sharded` (rank, world): the FSDP model of `sharded_lora_model` instead, never held whole."""
    import torch

    from pac.data.batching import encode_example
    from pac.data.prepare import subset
    from pac.data.readers import infer_task, read_examples
    from pac.heads import HeadConfig
    from pac.models.backbone import load_backbone
    from pac.techniques.build import TechniqueConfig, build_model

    train_examples = subset(read_examples(train_file), samples, seed)
    eval_examples = subset(read_examples(eval_file), eval_samples, seed) if eval_file else []
    task = infer_task(train_examples)
    if task != "classification":
        raise SystemExit(f"{train_file}: the ddp-lora baseline trains a classification head, the data are {task}")
    labels = {e.label for e in train_examples if e.label is not None}
    num_labels = max(labels) + 1 if labels else 2
    if sharded is not None:
        model, tokenizer = sharded_lora_model(model_name, task, num_labels, seed, *sharded)
        family = model.backbone.family
    else:
        torch.manual_seed(seed)
        backbone = load_backbone(model_name, seed=seed)
        tokenizer, family = backbone.tokenizer, backbone.family
    train_items, eval_items = (
        [encode_example(e, tokenizer, task, family, seq_len, i) for i, e in enumerate(examples)]
        for examples in (train_examples, eval_examples)
    )
    if sharded is None:
        model = build_model(backbone, TechniqueConfig("lora"), HeadConfig(task=task, num_labels=num_labels))
    return model, tokenizer.pad_token_id, task, train_items, eval_items


def sharded_lora_model(model_name: str, task: str, num_labels: int, seed: int, rank: int, world: int):
    """The same LoRA model sharded with FSDP2 (`fully_shard`, each layer then the whole) and never held
    whole: built with its weights on meta (pac.models.partial), sharded, then each rank reads every frozen
    weight from the checkpoint one tensor at a time and keeps its rows (FSDP's dim-0 chunk). LoRA's A
    factors are drawn from a generator seeded by the seed and the name (the same on every rank), B is zero,
    the head as build_model makes it after torch.manual_seed(seed). Returns (model, tokenizer)."""
    import math

    import torch
    from torch.distributed.fsdp import fully_shard

    from pac.heads import HeadConfig
    from pac.models.backbone import Backbone
    from pac.models.imports import MODEL_CODE
    from pac.models.partial import Checkpoint, skeleton
    from pac.models.registry import resolve_model
    from pac.techniques.build import TechniqueConfig, build_model

    source = resolve_model(model_name)
    with MODEL_CODE:
        meta, tokenizer, config = skeleton(source)
        checkpoint = Checkpoint(source, meta, config)
    torch.manual_seed(seed)
    backbone = Backbone(source.name, meta, tokenizer, source)
    model = build_model(backbone, TechniqueConfig("lora"), HeadConfig(task=task, num_labels=num_labels))
    real = {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]
            if not t.is_meta}  # the head and the buffers the constructor computed
    for stack in backbone.stacks:
        for layer in stack:
            fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in real:
                buffer.copy_(real[name])
        for name, parameter in model.named_parameters():
            key = name.removeprefix("model.").replace(".base_layer", "")
            if name in real:
                full = real[name]
            elif "lora_A" in name:
                full = torch.empty(parameter.shape)
                generator = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, name)))
                bound = 1 / math.sqrt(parameter.shape[1])  # kaiming_uniform_(a=sqrt(5)), as peft's
                full.uniform_(-bound, bound, generator=generator)
            elif "lora_B" in name:
                full = torch.zeros(parameter.shape)
            else:
                full = checkpoint.read(key)
            local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
            chunks = full.to(local.dtype).chunk(world, dim=0)
            if rank < len(chunks) and local.numel():
                local.copy_(chunks[rank])
            del full
    return model, tokenizer


def trainable_state(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


# ---- the torchrun worker ----------------------------------------------------------------------------

def worker(args) -> int:
    import gc
    import math

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pac.data.batching import collate
    from pac.techniques.build import trainable_parameters
    from pac.train.loop import TrainConfig, batches, evaluate, make_optimizer

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    threads = args.threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)

    model, pad_id, task, train_items, eval_items = prepare(
        args.model, args.train, args.eval or None, args.samples, args.eval_samples, args.seq_len, args.seed,
        sharded=(rank, world) if args.sharding == "fsdp" else None)
    if args.no_dropout:
        disable_dropout(model)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed)
    params = trainable_parameters(model)
    # DDP broadcasts rank 0's parameters (all ranks built the same anyway); FSDP's model is sharded already
    ddp = DistributedDataParallel(model) if args.sharding == "ddp" else model
    steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch * config.epochs)
    torch.manual_seed(config.seed + rank)  # dropout: a different stream per rank, as different rows would get
    generator = torch.Generator().manual_seed(config.seed)  # the same global order on every rank
    first_grads = None
    epoch_times, epoch_losses = [], []
    for _epoch in range(config.epochs):
        ddp.train()
        loss_sum = torch.zeros(2, dtype=torch.float64)  # sum of per-sample losses, samples
        dist.barrier()
        started = time.perf_counter()
        for group in batches(train_items, config.batch_size, generator):
            start, end = rank_slices(len(group), world)[rank]
            rows = end - start
            # A rank with no rows (a last batch smaller than the world) still joins the gradient
            # all-reduce: one row with weight zero.
            mine = group[start:end] if rows else group[:1]
            batch = collate(mine, pad_id, task)
            loss = ddp(batch).loss
            optimizer.zero_grad(set_to_none=True)
            (loss * (world * rows / len(group))).backward()
            if args.save_state and first_grads is None:
                first_grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                               if p.requires_grad}
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            loss_sum += torch.tensor([loss.item() * rows, rows], dtype=torch.float64)
        dist.barrier()
        epoch_times.append(time.perf_counter() - started)
        dist.all_reduce(loss_sum)  # outside the timed part
        epoch_losses.append(float(loss_sum[0] / loss_sum[1]))
    train_end = time.time()
    peaks = [None] * world
    dist.all_gather_object(peaks, peak_rss_bytes())
    sharded_final = None
    if args.sharding == "fsdp":  # every rank evaluates: each forward gathers every layer's shards
        sharded_final = evaluate(model, eval_items, task, pad_id) if eval_items else {}
    # Let DDP's reducer release the process group while the interpreter is alive, then tear the group
    # down together: a gloo group left to interpreter shutdown can abort a rank at exit.
    del ddp
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    if rank != 0:
        return 0
    if args.save_state:
        from safetensors.torch import save_file

        state = {f"param/{k}": v.contiguous() for k, v in trainable_state(model).items()}
        state.update({f"grad/{k}": v.contiguous() for k, v in (first_grads or {}).items()})
        save_file(state, args.save_state)
    if sharded_final is not None:
        final = sharded_final
    else:
        final = evaluate(model, eval_items, task, pad_id) if eval_items else {}
    row = {
        "system": SYSTEM if args.sharding == "ddp" else "fsdp-lora", "sharding": args.sharding, "devices": world, "epoch_times_s": epoch_times,
        "peak_memory_bytes_per_device": peaks, "final_metric": final,
        "train_samples": len(train_items), "eval_samples": len(eval_items),
        "model": args.model, "technique": "lora", "lora_rank": 8, "epochs": config.epochs,
        "batch_size": config.batch_size, "seq_len": args.seq_len, "lr": config.learning_rate,
        "seed": config.seed, "threads_per_device": threads, "backend": "gloo",
        "steps": steps_per_epoch * config.epochs, "epoch_train_loss": epoch_losses,
        "trainable_params": sum(p.numel() for p in params), "train_end_unix_s": train_end,
    }
    config_record = {k: getattr(args, k) for k in ("model", "train", "eval", "samples", "eval_samples",
                                                   "epochs", "batch_size", "seq_len", "lr", "seed")}
    write_report(args.json, BENCH, {**config_record, "devices": world, "threads": threads}, [row])
    return 0


# ---- the launcher -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ddp_lora(devices: int, model: str, train_file, eval_file, samples, eval_samples, epochs,
                 batch_size, seq_len, lr, seed, threads=None, timeout_s=3600, *,
                 save_state=None, dropout: bool = True, sharding: str = "ddp") -> dict:
    """Run the baseline with `devices` worker processes on this host; return its row plus
    `total_time_s` (launch to the end of the last epoch) and `wall_time_s` (launch to exit).

    `eval_file` may be None (no evaluation); `samples` / `eval_samples` None: the whole file.
    `threads`: torch threads per process (None: cpu_count // devices). For tests: `save_state` (a path)
    makes rank 0 write its trainable parameters (`param/NAME`) and the first step's all-reduced,
    unclipped gradients (`grad/NAME`) as safetensors; `dropout=False` sets every dropout p to 0.
    Raises RuntimeError, with the tail of the workers' output, if torchrun fails or times out."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    threads = threads or max(1, (os.cpu_count() or 1) // devices)
    with tempfile.TemporaryDirectory(prefix="ddp-lora-") as scratch:
        report_path = Path(scratch) / "report.json"
        log_path = Path(scratch) / "torchrun.log"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(devices),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                   "-m", "bench.ddp_lora", "worker", "--model", model, "--train", str(train_file),
                   "--epochs", str(epochs), "--batch-size", str(batch_size), "--seq-len", str(seq_len),
                   "--lr", repr(float(lr)), "--seed", str(seed), "--threads", str(threads),
                   "--json", str(report_path)]
        command += ["--eval", str(eval_file) if eval_file else ""]
        if samples is not None:
            command += ["--samples", str(samples)]
        if eval_samples is not None:
            command += ["--eval-samples", str(eval_samples)]
        if save_state:
            command += ["--save-state", str(save_state)]
        if not dropout:
            command += ["--no-dropout"]
        command += ["--sharding", sharding]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        with log_path.open("w") as log:
            launched = time.time()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # torchrun and its workers: the group we started
                process.wait()
                code = None
            exited = time.time()
        tail = log_path.read_text(errors="replace")[-6000:]
        if code is None:
            raise RuntimeError(f"{sharding}-lora with {devices} devices timed out after {timeout_s} s:\n{tail}")
        if code != 0 or not report_path.is_file():
            raise RuntimeError(f"{sharding}-lora with {devices} devices failed (exit {code}):\n{tail}")
        row = json.loads(report_path.read_text())["rows"][0]
    row["total_time_s"] = row.pop("train_end_unix_s") - launched
    row["wall_time_s"] = exited - launched
    return row


# ---- command line -----------------------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--train", default=DEFAULT_TRAIN)
    parser.add_argument("--eval", default=DEFAULT_EVAL, help="evaluation data ('' for none)")
    parser.add_argument("--samples", type=int, help="training samples (a seeded subset; default: all)")
    parser.add_argument("--eval-samples", type=int, help="evaluation samples (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads per process (default: cpu_count // devices)")
    parser.add_argument("--json", required=True, help="where to write the report")
    parser.add_argument("--save-state", help="rank 0's trainable parameters and first gradients (safetensors)")
    parser.add_argument("--no-dropout", action="store_true", help="dropout p = 0 (for equivalence tests)")
    parser.add_argument("--sharding", choices=("ddp", "fsdp"), default="ddp",
                        help="ddp: every rank holds the whole model; fsdp: FSDP2 shards it, never held whole")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="launch torchrun on this host and write the report")
    run.add_argument("--devices", type=int, required=True, help="worker processes")
    run.add_argument("--timeout", type=float, default=3600)
    _common(run)
    _common(sub.add_parser("worker", help="one torchrun rank (started by torchrun)"))
    args = parser.parse_args(argv)
    if args.command == "worker":
        return worker(args)
    row = run_ddp_lora(args.devices, args.model, args.train, args.eval or None, args.samples,
                       args.eval_samples, args.epochs, args.batch_size, args.seq_len, args.lr, args.seed,
                       threads=args.threads, timeout_s=args.timeout, save_state=args.save_state,
                       dropout=not args.no_dropout, sharding=args.sharding)
    config = {k: getattr(args, k) for k in ("devices", "model", "train", "eval", "samples", "eval_samples",
                                            "epochs", "batch_size", "seq_len", "lr", "seed")}
    config["threads"] = row["threads_per_device"]  # per process, as resolved
    write_report(args.json, BENCH, config, [row])
    print(f"{row['system']} {args.devices} devices: epochs {', '.join(f'{t:.1f}' for t in row['epoch_times_s'])} s, "
          f"total {row['total_time_s']:.1f} s, peak RSS "
          f"{', '.join(f'{b / 2**20:.0f}' for b in row['peak_memory_bytes_per_device'])} MiB, "
          f"eval {row['final_metric']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
