"""Exploration harness: the accuracy of tuning minilm's top n layers from frozen states computed once.

    .venv/bin/python -m bench.topscan --task mrpc --test --epochs 5 \
        --variants lora1:2e-3,lora2:2e-3,full1:1e-4,lora3:2e-3,lora3a:2e-3 --out PATH

Not the product's code path (that is pac.techniques.top, measured by bench.accuracy --top-layers): it
computes every layer's states of the training subset, the validation split and the test set once, then
for each variant trains the last n layers (a deep copy of the backbone kept to them) and the head from
those states, scoring validation and test after every epoch, so many variants cost one backbone pass.
The split is bench.accuracy's (500 validation, the next 2000 training, seed 0); the learning rate
decays to zero at the last of --epochs, so "after epoch 3 of 5" is not a 3-epoch run. A variant is
`loraN` (LoRA q, v on the last N layers), `loraNa` (LoRA on every linear layer of them), `fullN` (every
weight), a trailing `s` adds the side network (k = 8, pruned), then `:learning_rate`.
"""
import argparse
import copy
import json
import math
import time

import torch
from torch import nn

from bench.accuracy import TASKS, split_train
from pac.data.batching import collate, encode_example
from pac.data.readers import read_examples
from pac.heads import Head, HeadConfig
from pac.metrics import classification_metrics
from pac.models.backbone import load_backbone
from pac.pipeline.backbone_stage import BackboneStage
from pac.pipeline.layers import LayerSlice
from pac.pipeline.messages import HIDDEN
from pac.side.network import SideConfig, SideNetwork, side_spec
from pac.side.pruning import init_by_pruning
from pac.train.loop import TrainConfig, batches, make_optimizer

p = argparse.ArgumentParser()
p.add_argument("--task", default="mrpc")
p.add_argument("--variants", required=True)  # e.g. "lora1:2e-3,full1:1e-4,lora1s:2e-3"
p.add_argument("--seeds", default="0")
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--test", action="store_true")
p.add_argument("--out", required=True)
p.add_argument("--data-dir", default="../shared/data")
a = p.parse_args()
torch.set_num_threads(2)
train_file, eval_file, metric = TASKS[a.task]
exs = read_examples(f"{a.data_dir}/{train_file}")
val, tr = split_train(exs, 500, 2000, 0)
test = read_examples(f"{a.data_dir}/{eval_file}") if a.test else []
bb = load_backbone("minilm")
L = bb.num_layers
tok = bb.tokenizer
def enc(xs):
    return [encode_example(e, tok, "classification", bb.family, 128, i) for i, e in enumerate(xs)]
sets = {"train": enc(tr), "val": enc(val), "test": enc(test)}
t0 = time.time()
states = {}
with torch.no_grad():
    for name, items in sets.items():
        out = []
        for i in range(0, len(items), 64):
            g = items[i:i + 64]
            b = collate(g, tok.pad_token_id, "classification")
            o = bb.run(b)
            for r, it in enumerate(g):
                n = len(it.input_ids)
                out.append([t[r, :n].clone() for t in o.taps[0]])
        states[name] = out
print("states", time.time() - t0, flush=True)


def pad_states(group, idx_list, which):
    n = max(len(it.input_ids) for it in group)
    res = {}
    for i in idx_list:
        x = torch.zeros(len(group), n, bb.hidden_size)
        for r, s in enumerate(which):
            x[r, : s[i].shape[0]] = s[i]
        res[i] = x
    return res


class Top(nn.Module):
    def __init__(self, n, mode, side, allin=False):
        super().__init__()
        self.n = n
        if side:
            spec = side_spec(bb, SideConfig(8))
            self.side = init_by_pruning(SideNetwork(spec), bb)
        else:
            self.side = None
        clone = copy.deepcopy(bb)
        self.stage = BackboneStage(clone, LayerSlice(L - n, L, (L,)), release=True)
        self.model = clone.model
        if mode == "lora":
            from peft import LoraConfig, inject_adapter_in_model
            layers = "|".join(str(i) for i in range(L - n, L))
            cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                             target_modules=rf".*\.layer\.({layers})\..*({'query|key|value|dense' if allin else 'query|value'})$")
            inject_adapter_in_model(cfg, clone.model)
            for nm, q in clone.model.named_parameters():
                q.requires_grad_("lora_" in nm)
        else:
            for i in range(L - n, L):
                for q in clone.stacks[0][i].parameters():
                    q.requires_grad_(True)
        self.head = Head(HeadConfig("classification", 2), bb.hidden_size, bb.family)

    def forward(self, group, which, batch):
        need = list(range(L + 1)) if self.side is not None else [L - self.n]
        taps = pad_states(group, need, which)
        st = self.stage.run(batch, {HIDDEN: taps[L - self.n]}, grad=True)
        final = st.final
        if self.side is not None:
            full = [taps[i] if i <= L - self.n else st.taps[(0, i)] for i in range(L + 1)]
            final = final + self.side([full], [batch["attention_mask"]])
        return self.head(final, batch)


def evaluate(model, name):
    model.eval()
    preds, tg = [], []
    items, st = sets[name], states[name]
    with torch.no_grad():
        for i in range(0, len(items), 64):
            g = items[i:i + 64]
            b = collate(g, tok.pad_token_id, "classification")
            out = model(g, st[i:i + 64], b)
            preds += out.logits.argmax(-1).tolist()
            tg += b["labels"].tolist()
    model.train()
    m = classification_metrics(preds, tg)
    return m[metric]


results = []
for var in a.variants.split(","):
    name, lr = var.split(":")
    lr = float(lr)
    mode = "lora" if name.startswith("lora") else "full"
    side = name.endswith("s")
    allin = "a" in name[len(mode):]
    n = int(name[len(mode):].rstrip("s").rstrip("a"))
    for seed in [int(s) for s in a.seeds.split(",")]:
        torch.manual_seed(seed)
        model = Top(n, mode, side, allin)
        cfg = TrainConfig(epochs=a.epochs, batch_size=16, learning_rate=lr, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        index = {id(it): k for k, it in enumerate(sets["train"])}
        steps = math.ceil(2000 / 16)
        opt, sch = make_optimizer(model, cfg, steps * a.epochs)
        hist = []
        for ep in range(a.epochs):
            t = time.time()
            for g in batches(sets["train"], 16, gen):
                b = collate(g, tok.pad_token_id, "classification")
                which = [states["train"][index[id(it)]] for it in g]
                loss = model(g, which, b).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
                opt.step()
                sch.step()
            et = time.time() - t
            v = evaluate(model, "val")
            te = evaluate(model, "test") if a.test else None
            hist.append({"epoch": ep + 1, "val": v, "test": te, "time_s": et})
            print(name, lr, seed, hist[-1], flush=True)
        results.append({"variant": name, "lr": lr, "seed": seed, "history": hist})
        json.dump(results, open(a.out, "w"), indent=1)
