"""Serving the tuned model: time to first token and tokens per second, over gRPC and in process.

    .venv/bin/python -m bench.serve --model smollm2-135m --json bench/results/serve-smollm2-135m.json

Rows carry `impl`, `prompt`, `clients`, `ttft_s`, `tokens_per_s`, `peak_memory_bytes`:
- `tuned-grpc`: the tuned model (backbone + side network, key/value caches) answering through a `pacd`'s
  Assistant.Generate over mutual TLS, 1, 4 and 16 clients at once (requests that wait together are
  decoded together, pac/assistant/batching.py). `ttft_s` is the mean over the clients, `ttft_max_s` the
  worst, `tokens_per_s` all clients' tokens over the wall time, `peak_memory_bytes` the daemon's peak RSS.
- in process, one answer at a time, the bench's own peak RSS: `tuned-cached` (what the daemon runs),
  `untuned-cached`, `untuned-hf-generate` (transformers' `generate` with its own cache, greedy) and
  `tuned-recompute` (the whole sequence through both models again for every token). Each runs
  `--repeats` times, interleaved with the others (this machine's speed drifts); the median is reported
  with the range.

Every answer is greedy, `--tokens` long at most. The adapter is the backbone's own pruned side network
with a random (seeded) output projection: decoding speed does not depend on what it learned. Prompts:
`short` is one question in the chat template; `home` adds a system prompt listing a household's devices
and their states, as a home-automation client sends (a few hundred tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from bench.common import peak_rss_bytes, reset_peak_rss, write_report  # noqa: E402

QUESTION = "Tell me a long story about the kitchen and everything that happens in it during the day."
HOME = ("You are the assistant of a household. Devices and their states: "
        + "; ".join(f"{room} light: {'on' if i % 2 else 'off'}, {room} temperature: {18 + i % 5} C, "
                    f"{room} window: {'open' if i % 3 == 0 else 'closed'}"
                    for i, room in enumerate(["kitchen", "hall", "living room", "bedroom", "bathroom", "attic",
                                              "garage", "office", "nursery", "cellar"]))
        + ". Answer briefly and kindly.")
PROMPTS = {"short": [{"role": "user", "content": QUESTION}],
           "home": [{"role": "system", "content": HOME}, {"role": "user", "content": QUESTION}]}


def tuned_model(name: str, seed: int, quantization: str = "none"):
    import torch

    from pac.heads import HeadConfig
    from pac.models.backbone import load_backbone
    from pac.quant import quantize_backbone
    from pac.techniques.build import TechniqueConfig, build_model

    backbone = load_backbone(name)
    backbone.fingerprint()  # of the stored weights, as an adapter names them
    quantize_backbone(backbone, quantization)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("lm")).eval()
    with torch.no_grad():
        model.side.up.weight.copy_(torch.randn(model.side.up.weight.shape,
                                               generator=torch.Generator().manual_seed(seed)) * 0.02)
    return backbone, model


def _timed(run) -> tuple[float, int, float]:
    began = time.perf_counter()
    first, tokens = None, 0
    for piece in run():
        tokens += piece if isinstance(piece, int) else piece.tokens
        first = first if first is not None else time.perf_counter() - began
    return first or 0.0, tokens, time.perf_counter() - began


def in_process(backbone, model, prompt: str, messages, tokens: int, repeats: int) -> list[dict]:
    import torch

    from pac.assistant.decode import Decoding, Sampling, answer
    from pac.train.generate import generate_recomputing

    ids = backbone.tokenizer.chat_ids(messages)
    sampling = Sampling(max_new_tokens=tokens)

    def hf_generate():
        prompt_ids = torch.tensor([ids])
        with torch.no_grad():
            out = backbone.model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=False,
                                          max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
        return [out.shape[1] - len(ids)]  # no first token apart (nor for recomputing): no ttft

    impls = {
        "tuned-cached": lambda: answer(Decoding(backbone, model, ids), backbone.tokenizer, sampling),
        "untuned-cached": lambda: answer(Decoding(backbone, None, ids), backbone.tokenizer, sampling),
        "untuned-hf-generate": hf_generate,
        "tuned-recompute": lambda: [len(generate_recomputing(backbone, ids, model, tokens))],
    }
    runs: dict[str, list[tuple[float, int, float, int]]] = {impl: [] for impl in impls}
    for _ in range(repeats):  # interleaved, so a drift in the machine's speed touches every impl alike
        for impl, run in impls.items():
            reset_peak_rss()
            ttft, generated, seconds = _timed(run)
            runs[impl].append((ttft, generated, seconds, peak_rss_bytes()))
    rows = []
    for impl, measured in runs.items():
        rates = sorted(generated / seconds for _, generated, seconds, _ in measured)
        rows.append({"impl": impl, "prompt": prompt, "prompt_tokens": len(ids), "clients": 1,
                     "ttft_s": statistics.median(m[0] for m in measured) if impl.endswith("cached") else None,
                     "generated_tokens": measured[0][1], "tokens_per_s": statistics.median(rates),
                     "tokens_per_s_range": [rates[0], rates[-1]], "repeats": len(measured),
                     "peak_memory_bytes": max(m[3] for m in measured)})
        print(f"{impl:>20} {prompt:>5}: {measured[0][1]} tokens, {statistics.median(rates):.1f} tokens/s "
              f"(range {rates[0]:.1f}-{rates[-1]:.1f} over {len(measured)})", flush=True)
    return rows


async def _crowd(daemon, identity, messages, clients: int, tokens: int) -> tuple[list[float], int, float]:
    """`clients` clients, each connected already, ask at the same moment."""
    from pac.assistant.messages import Sampling
    from pac.net.assistant_client import AssistantClient, Usage

    connected = [AssistantClient(daemon.address, identity, daemon.node_id) for _ in range(clients)]
    for client in connected:
        await client.__aenter__()
        await client.info()  # the channel is up (TLS done) before the clock starts

    async def one(client) -> tuple[float, int]:
        async for item in client.generate(messages, Sampling(max_new_tokens=tokens)):
            if isinstance(item, Usage):
                return item.time_to_first_token_s, item.generated_tokens
        raise RuntimeError("no usage")

    try:
        began = time.perf_counter()
        done = await asyncio.gather(*(one(c) for c in connected))
        return [t for t, _ in done], sum(n for _, n in done), time.perf_counter() - began
    finally:
        for client in connected:
            await client.__aexit__(None, None, None)


async def _served_rows(daemon, identity, adapter: Path, args) -> list[dict]:
    """Every gRPC row, in one event loop (gRPC's channels outlive a loop badly)."""
    from bench.cluster import _peak, _reset_peak
    from pac.assistant.store import Provenance
    from pac.net.assistant_client import AssistantClient

    async with AssistantClient(daemon.address, identity, daemon.node_id) as c:
        await c.deploy(adapter, Provenance(name="bench"))
    await _crowd(daemon, identity, PROMPTS["short"], 1, 4)  # the daemon loads the model once
    rows = []
    for prompt, messages in _prompts(args).items():
        for clients in args.clients:
            _reset_peak(daemon.process.pid)
            ttfts, generated, seconds = await _crowd(daemon, identity, messages, clients, args.tokens)
            rows.append({"impl": "tuned-grpc", "prompt": prompt, "clients": clients,
                         "ttft_s": statistics.mean(ttfts), "ttft_max_s": max(ttfts), "generated_tokens": generated,
                         "seconds": seconds, "tokens_per_s": generated / seconds,
                         "peak_memory_bytes": _peak(daemon.process.pid)})
            print(f"{'tuned-grpc':>20} {prompt:>5}: {clients:2d} clients, ttft {statistics.mean(ttfts):.2f} s "
                  f"(max {max(ttfts):.2f}), {generated / seconds:.1f} tokens/s", flush=True)
    return rows


def over_grpc(args, adapter: Path) -> list[dict]:
    from pac.cluster.local import LocalCluster

    with tempfile.TemporaryDirectory() as root, LocalCluster(Path(root), 1, memory_budget="8GiB") as cluster:
        return asyncio.run(_served_rows(cluster.daemons[0], cluster.identity, adapter, args))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    local = [r for r in rows if r["clients"] == 1 and r["impl"] != "tuned-grpc"]
    labels = [f"{r['impl']}\n{r['prompt']}" for r in local]
    left.barh(labels, [r["tokens_per_s"] for r in local])
    left.set_xlabel("tokens per second (one answer, in process)")
    for prompt in PROMPTS:
        served = [r for r in rows if r["impl"] == "tuned-grpc" and r["prompt"] == prompt]
        right.plot([r["clients"] for r in served], [r["ttft_s"] for r in served], marker="o", label=f"{prompt}: mean")
        right.plot([r["clients"] for r in served], [r["ttft_max_s"] for r in served], marker="x", linestyle="--",
                   label=f"{prompt}: worst")
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent clients (gRPC)")
    right.set_ylabel("time to first token (s)")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _prompts(args) -> dict:
    return {name: PROMPTS[name] for name in args.prompts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each in-process impl (median reported)")
    parser.add_argument("--quantization", default="none", help="of the backbone (none, bf16, fp16, int8, int4)")
    parser.add_argument("--prompts", type=lambda s: s.split(","), default=list(PROMPTS), help="short,home")
    parser.add_argument("--skip-grpc", action="store_true", help="the in-process rows only")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    from pac.adapter import save_adapter

    backbone, model = tuned_model(args.model, args.seed, args.quantization)
    rows = []
    for prompt, messages in _prompts(args).items():
        rows += in_process(backbone, model, prompt, messages, args.tokens, args.repeats)
    if not args.skip_grpc:
        with tempfile.TemporaryDirectory() as scratch:
            adapter = save_adapter(model, Path(scratch) / "adapter.safetensors",
                                   extra={"task": "lm", "quantization": args.quantization})
            del backbone, model  # the daemon loads its own copy: the bench's would only take memory
            rows += over_grpc(args, adapter)
    write_report(args.json, "serve", {"model": args.model, "tokens": args.tokens, "clients": args.clients,
                                      "seed": args.seed, "repeats": args.repeats, "quantization": args.quantization,
                                      "prompts": _prompts(args)}, rows)
    plot(rows, args.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
