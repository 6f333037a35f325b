"""The frozen backbone's forward on padded mini-batches: layers that skip the padding against the model's own.

    .venv/bin/python -m bench.padding --model minilm --quantization bf16 --json bench/results/padding-minilm.json

MRPC sentence pairs in the training file's order, tokenised as a job does and collated into mini-batches
of `--batch-size` (each padded to its longest sample); one torch thread. Per row: `Backbone.run` over the
mini-batches with the encoder layers computing real tokens only (pac.models.unpadded) and with the model's
own forward (the same backbone, its layers' forward restored), alternating passes, the fastest of
`--repeats` each (the first mini-batch of a pass is a warm-up, not timed); the share of real tokens; and
the largest difference between the two at real positions (every tapped state and the final one).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

from bench.common import write_report

DATA = "../shared/data/mrpc/train.tsv"


def _pairs(path: str, count: int) -> list[tuple[str, str]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [(row[3], row[4]) for row in rows[:count]]


def _pass(backbone, batches) -> tuple[float, list]:
    outputs, elapsed = [], 0.0
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        outputs.append(backbone.run(batch))
        if index:
            elapsed += time.perf_counter() - started
    return elapsed, outputs


def _largest_difference(batches, ours, theirs) -> float:
    worst = 0.0
    for batch, a, b in zip(batches, ours, theirs, strict=True):
        real = batch["attention_mask"].bool()
        pairs = [*zip(a.taps[0], b.taps[0], strict=True), (a.final, b.final)]
        worst = max(worst, *((x[real].float() - y[real].float()).abs().max().item() for x, y in pairs))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.padding", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--quantization", default="bf16", choices=["none", "bf16"])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch

    from pac.data.batching import Encoded, collate
    from pac.models.backbone import load_backbone
    from pac.quant import quantize_backbone

    torch.set_num_threads(1)
    backbone = load_backbone(args.model)
    quantize_backbone(backbone, args.quantization)
    if not backbone.unpadded:
        print(f"{args.model}: its layers run the model's own forward (pac.models.unpadded does not apply)",
              file=sys.stderr)
        return 1
    tokenizer, pad = backbone.tokenizer, backbone.tokenizer.pad_token_id
    items = [Encoded(tuple(tokenizer.encode_pair(a, b)[: args.seq_len]), 0) for a, b in _pairs(args.data, args.samples)]
    groups = [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    batches = [collate(group, pad, "classification") for group in groups]
    skipping, own = [], []
    layers = backbone.stacks[0]
    for _ in range(args.repeats):
        elapsed, ours = _pass(backbone, batches)
        skipping.append(elapsed)
        forwards = [layer.__dict__.pop("forward") for layer in layers]  # the model's own forward
        elapsed, theirs = _pass(backbone, batches)
        own.append(elapsed)
        for layer, forward in zip(layers, forwards, strict=True):
            layer.forward = forward
    real = sum(len(item.input_ids) for item in items)
    padded = sum(batch["attention_mask"].numel() for batch in batches)
    timed = len(batches) - 1
    row = {"model": args.model, "quantization": args.quantization, "batch_size": args.batch_size,
           "mini_batches_timed": timed, "real_token_share": real / padded,
           "skipping_padding_s_per_mini_batch": min(skipping) / timed,
           "own_forward_s_per_mini_batch": min(own) / timed, "ratio": min(skipping) / min(own),
           "largest_difference_at_real_positions": _largest_difference(batches, ours, theirs)}
    print(f"{args.model} {args.quantization}, batch {args.batch_size}: {row['skipping_padding_s_per_mini_batch']*1e3:.1f} "
          f"against {row['own_forward_s_per_mini_batch']*1e3:.1f} ms per mini-batch ({row['ratio']:.3f}); "
          f"real tokens {row['real_token_share']:.3f} of the padded; largest difference "
          f"{row['largest_difference_at_real_positions']:g}", file=sys.stderr)
    if args.json:
        write_report(args.json, "padding", vars(args), [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
