"""Measure what a LoRA layer costs beside PAC's: the backbone layer's backward (input gradients through the
frozen weights, LoRA factors' gradients) against its forward, and the bytes autograd keeps for it, per
batch size. The planner benchmark's LoRA baselines (like Eco-FL and EDDL) are costed from these.

    .venv/bin/python -m bench.lora_layers --model minilm --json bench/results/lora-layers-minilm.json

One torch thread, seq 128, LoRA rank 8 on every linear layer of each layer (pac.techniques.build's
`lora` technique with all targets), median of `--repeats` runs after a warm-up. Ratios are to the batch-1
forward of the same layers, as pac/planner/synthetic.py's BATCH_SCALING.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

BATCHES = (1, 2, 4, 8, 16, 32)


def _saved_bytes(run) -> int:
    """Bytes of the tensors autograd saves for backward while `run()` executes (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return sum(seen.values()), out


def measure(model: str, seq_len: int, repeats: int) -> dict:
    from peft import LoraConfig, inject_adapter_in_model

    from pac.models.backbone import load_backbone
    from pac.techniques.top import _lora_targets

    torch.set_num_threads(1)
    backbone = load_backbone(model)
    stack = backbone.stacks[0]
    layers = list(stack)
    frozen = {}  # PAC's backbone forward: no autograd, no LoRA
    for batch in BATCHES:
        x = torch.randn(batch, seq_len, backbone.hidden_size)
        runs = []
        for _ in range(repeats + 1):
            began = time.perf_counter()
            with torch.no_grad():
                _through(layers, x, None)
            runs.append(time.perf_counter() - began)
        frozen[batch] = statistics.median(runs[1:]) / len(layers)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=_lora_targets(backbone, 0, "all"))
    inject_adapter_in_model(config, backbone.model)
    for name, parameter in backbone.model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    hidden = backbone.hidden_size
    forward, backward, kept = {}, {}, {}
    for batch in BATCHES:
        x = torch.randn(batch, seq_len, hidden)
        runs = []
        for _ in range(repeats + 1):
            h = x.clone().requires_grad_()
            began = time.perf_counter()
            saved, out = _saved_bytes(lambda h=h: _through(layers, h, None))  # every token real: no mask
            middle = time.perf_counter()
            out.sum().backward()
            end = time.perf_counter()
            runs.append((middle - began, end - middle, saved))
        runs = runs[1:]
        forward[batch] = statistics.median(r[0] for r in runs) / len(layers)
        backward[batch] = statistics.median(r[1] for r in runs) / len(layers)
        kept[batch] = runs[0][2] / len(layers) / batch
    base = forward[1]
    kept_formula = 2.0 * (34 * seq_len * hidden + 5 * backbone.num_heads * seq_len * seq_len)
    lora_params = sum(p.numel() for n, p in layers[0].named_parameters() if "lora_" in n)
    return {
        "model": model, "seq_len": seq_len, "threads": 1, "repeats": repeats, "batches": list(BATCHES),
        "forward_s_per_layer": forward, "backward_s_per_layer": backward,
        "forward_scaling": [forward[b] / base for b in BATCHES],
        "backward_scaling": [backward[b] / base for b in BATCHES],  # LoRA backward(b) / forward(1)
        "frozen_forward_s_per_layer": frozen,
        # what the planner's LoRA baselines use: LoRA's forward and backward over PAC's frozen forward
        "forward_over_frozen": [forward[b] / frozen[b] for b in BATCHES],
        "backward_over_frozen": [backward[b] / frozen[b] for b in BATCHES],
        "kept_bytes_per_sample_per_layer": kept[max(BATCHES)],
        "kept_bytes_korthikanti_fp32": kept_formula,  # 2 x (34 s h + 5 a s^2): their 16-bit count, doubled
        "kept_over_korthikanti": kept[max(BATCHES)] / kept_formula,
        "lora_params_per_layer": lora_params,
        "layer_params": sum(p.numel() for n, p in layers[0].named_parameters() if "lora_" not in n),
    }


def _through(layers, hidden, mask):
    for layer in layers:
        out = layer(hidden, attention_mask=mask) if mask is not None else layer(hidden)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure(args.model, args.seq_len, args.repeats)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text, file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
