"""A model too large for any one device: PAC against torchrun FSDP (gloo) + LoRA and DDP + LoRA, on the
same memory budget per process.

    .venv/bin/python -m bench.large_model --devices 3 --budget-mib 1000 --json bench/results/large-model.json

The model is a 28-layer Llama 1024 wide with random weights (1.27 GB of fp32 weights, more than the
budget), written once to a model store under --work (PAC_MODELS), with a small word-piece tokenizer; the
data are generated sentences of its words with a parity label (the task is arbitrary: what is measured is
time and memory, and that every system trains). PAC: `pacctl train` (its own process) on --devices paired
daemons with --budget-mib each and the controller's budget the same; the planner plans it. FSDP: FSDP2
shards every layer and the model, each rank reading only its rows of each weight (bench/ddp_lora.py
`sharded_lora_model`). DDP: every rank loads the whole model. Peak memory is each process's VmHWM: the
daemons' and the ranks' and the controller's own (metrics.json). Wall times include start-up and loading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import process_peak_bytes, write_report

REPO = Path(__file__).resolve().parents[1]
MODEL = "big-llama"
MIB = 1 << 20


def scaled_up_llama(directory: Path, layers: int = 28) -> int:
    """A Llama of `layers` layers 1024 wide (random weights, safetensors, a small word-piece tokenizer)
    in `directory`; returns the bytes of its weights."""
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=512, hidden_size=1024, num_hidden_layers=layers,
                                      num_attention_heads=16, num_key_value_heads=4, intermediate_size=2816,
                                      max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                      tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    del model
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(507)]
    (directory / "vocab.txt").write_text("\n".join(vocab))
    transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), bos_token="[CLS]",
                                   eos_token="[SEP]").save_pretrained(directory)
    return (directory / "model.safetensors").stat().st_size


def write_data(path: Path, count: int, offset: int = 0) -> Path:
    rows = [{"text": " ".join(f"w{(7 * i + 3 * j) % 500}" for j in range(8 + i % 9)), "label": i % 2}
            for i in range(offset, offset + count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_job(path: Path, addresses: list[str], train: Path, evaluation: Path, work: Path, budget_mib: int,
              epochs: int, batch_size: int, seq_len: int, training: dict | None = None,
              insecure: bool = False) -> Path:
    """The job file of MODEL on `addresses`: classification, an fp32 cache, the controller's budget as a
    daemon's; its cache and outputs under `work` (`work/pac`). `training`: more [training] keys."""
    extra = "".join(f"{key} = {value!r}\n" for key, value in (training or {}).items())
    path.write_text(f"""version = 1
[model]
name_or_path = "{MODEL}"
[data]
train = "{train}"
eval = "{evaluation}"
task = "classification"
[training]
epochs = {epochs}
batch_size = {batch_size}
seq_len = {seq_len}
{extra}[cache]
precision = "fp32"
directory = "{work / 'cache'}"
[devices]
mode = "list"
addresses = {json.dumps(addresses)}
insecure = {"true" if insecure else "false"}
controller_memory_budget = "{budget_mib}MiB"
[output]
directory = "{work / 'pac'}"
""")
    return path


def run_pac(args, work: Path, train: Path, evaluation: Path) -> dict:
    from pac.cluster.local import LocalCluster

    out = work / "pac"
    with LocalCluster(work / "cluster", args.devices, memory_budget=f"{args.budget_mib}MiB") as cluster:
        job = write_job(work / "job.toml", [d.address for d in cluster.daemons], train, evaluation, work,
                        args.budget_mib, args.epochs, args.batch_size, args.seq_len,
                        {"learning_rate": args.lr, "seed": args.seed})
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pacctl", "train", str(job), "--home", str(work / "cluster" / "home")],
                              cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
        wall = time.perf_counter() - began
        if done.returncode != 0:
            raise SystemExit(f"pacctl train failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        peaks = [process_peak_bytes(d.process.pid) for d in cluster.daemons]
    metrics = json.loads((out / "metrics.json").read_text())
    return {"system": "pac", "wall_time_s": wall, "training_time_s": metrics["training_time_s"],
            "epoch_times_s": metrics["epoch_times_s"], "final_metric": metrics["eval"],
            "peak_memory_bytes_per_device": peaks, "controller_peak_bytes": metrics["controller_peak_rss_bytes"],
            "plan": metrics["plan"]}


def run_torchrun(args, sharding: str, train: Path, evaluation: Path) -> dict:
    from bench.ddp_lora import run_ddp_lora

    try:
        row = run_ddp_lora(args.devices, MODEL, train, evaluation, None, None, args.epochs, args.batch_size,
                           args.seq_len, args.lr, args.seed, threads=1, sharding=sharding, timeout_s=args.timeout)
    except RuntimeError as error:  # e.g. killed for memory: the row says so
        return {"system": f"{sharding}-lora", "failed": str(error)[-2000:]}
    return {**row, "wall_time_s": row["wall_time_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--budget-mib", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--eval-samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--systems", default="pac,fsdp,ddp")
    parser.add_argument("--work", type=Path, default=Path("runs/large-model"))
    parser.add_argument("--json", type=Path, default=Path("bench/results/large-model.json"))
    args = parser.parse_args(argv)
    work = args.work.resolve()
    store = work / "models"
    os.environ["PAC_MODELS"] = str(store)  # the daemons, the controller and the ranks find it by name
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not (store / MODEL / "model.safetensors").is_file():
        code = ("import sys; from pathlib import Path; from bench.large_model import scaled_up_llama; "
                f"print(scaled_up_llama(Path(sys.argv[1]), {args.layers}))")
        subprocess.run([sys.executable, "-c", code, str(store / MODEL)], cwd=REPO, check=True)  # not in this process
    weights = (store / MODEL / "model.safetensors").stat().st_size
    train = write_data(work / "train.jsonl", args.samples)
    evaluation = write_data(work / "eval.jsonl", args.eval_samples, offset=10_000)
    rows = []
    for system in args.systems.split(","):
        print(f"{system} ...", file=sys.stderr, flush=True)
        row = run_pac(args, work, train, evaluation) if system == "pac" else run_torchrun(args, system, train,
                                                                                          evaluation)
        peaks = row.get("peak_memory_bytes_per_device") or []
        row["within_budget"] = bool(peaks) and max(peaks + [row.get("controller_peak_bytes", 0)]) <= \
            args.budget_mib * MIB
        rows.append(row)
        print(f"  {system}: {json.dumps({k: row.get(k) for k in ('wall_time_s', 'epoch_times_s', 'within_budget')})}"
              f" peaks {[round(p / MIB) for p in peaks]} MiB", file=sys.stderr, flush=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["weights_bytes"] = weights
    write_report(args.json, "large-model", config, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
