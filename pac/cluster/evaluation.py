"""Scores after every epoch, on the controller: the evaluation data (metrics.json, status.json, the loss
plot) and the validation split carved from the training file (the best epoch, early stopping).

The controller does not hold the backbone. When the phase-1 stages are loaded, before training, their
devices run the evaluation data and validation split through the backbone (the forward alone) and the
controller gathers the samples' cache records into an activation cache under the output directory, at
the job's cache precision (float32 for a job without a cache; removed at the end). After each epoch's
checkpoint the controller loads the trained side network and head (and tuned top layers) into its model
and scores from that cache, running only what trains. A job resumed in phase 2 whose evaluation cache is
gone loads the whole backbone here once to compute the records (it says so). The last epoch's score is
the job's final one (not computed twice).

With a validation split the best epoch's weights are kept (OUT/best.safetensors, written whole, so a
resumed job still has them) and end in the adapter; `training.patience` stops the job after that many
epochs without a better validation score.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import torch

from pac.metrics import better
from pac.techniques.top import TRAINED_PREFIXES, load_trained, state_from_adapter
from pac.train.loop import evaluate

BEST = "best.safetensors"


class StopEarly(Exception):
    """No better validation score for `training.patience` epochs: the job ends with the best epoch."""


def evaluation_precision(cache_precision: str) -> str:
    """The precision of the evaluation cache and of the records the stages write for it: the job's cache
    precision, whether or not a run caches its training data (float32 for `cache.precision = "none"`)."""
    return cache_precision if cache_precision != "none" else "fp32"


class EpochEvaluation:
    def __init__(self, prepared, precision: str, quantization: str, output_dir: Path, patience: int = 0) -> None:
        self.prepared, self.output_dir, self.patience = prepared, output_dir, patience
        self.directory = output_dir / ".evaluation-cache"
        self.precision = evaluation_precision(precision)  # the stages' evaluation shards' too
        self.quantization = quantization
        self.log = print
        self.states = None
        self.last: tuple[int, dict] | None = None  # (step, entry) of the newest evaluation
        self.best: dict | None = None  # the entry of the best validation score so far
        self.seconds = 0.0  # spent computing the evaluation records and scoring (metrics.json evaluation_s)

    @property
    def wanted(self) -> bool:
        return bool(self.prepared.eval_items or self.prepared.validation_items)

    def _states(self):
        if self.states is None:
            from pac.cache import ActivationCache
            from pac.train.cached import CachedStates, cache_key_for

            p = self.prepared
            key = cache_key_for(p.backbone, p.model.side.spec, self.quantization, p.fingerprint)
            self.states = CachedStates(ActivationCache(self.directory, key, self.precision),
                                       load_backbone=self._load_backbone)
        return self.states

    def _load_backbone(self):
        from pac.worker.spec import load_model

        p = self.prepared
        self.log(f"the evaluation cache lacks records and no stage is loaded: loading {p.backbone.name} whole "
                 "on this machine to compute them")
        return load_model(p.model_name, self.quantization, p.seed)[0]

    def _items(self) -> list:
        return self.prepared.eval_items + self.prepared.validation_items

    async def prefill(self, run) -> None:
        """Put the records of every evaluation and validation sample not yet cached in the evaluation cache:
        `await run(items, keys, cache)` computes them (the phase-1 stages)."""
        from pac.cache import sample_key

        began = time.perf_counter()
        cache = self._states().cache
        items = [item for item in self._items() if sample_key(item.input_ids, item.decoder_ids) not in cache]
        unique = list({sample_key(i.input_ids, i.decoder_ids): i for i in items}.items())
        if unique:
            await run([item for _, item in unique], [key for key, _ in unique], cache)
        self.seconds += time.perf_counter() - began

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        load_trained(self.prepared.model, state)

    def score(self, state: dict[str, torch.Tensor], which: str = "eval") -> dict[str, float]:
        """The evaluation data (or the validation split) scored with `state` (side network and head)."""
        p = self.prepared
        self._load(state)
        items = p.eval_items if which == "eval" else p.validation_items
        return evaluate(p.model, items, p.task, p.pad_id, states=self._states())

    def _entry(self, epoch: int, step: int, state: dict[str, torch.Tensor]) -> dict:
        entry = {"epoch": epoch, "step": step}
        for which in ("eval", "validation"):
            if (self.prepared.eval_items if which == "eval" else self.prepared.validation_items):
                entry[which] = self.score(state, which)
        if "validation" in entry and better(entry["validation"], (self.best or {}).get("validation")):
            self.best = entry
            self._load(state)
            self._save_best()
        return entry

    def _save_best(self) -> None:
        import os

        from pac.adapter import save_adapter

        partial = self.output_dir / f".{BEST}.partial"
        save_adapter(self.prepared.model, partial, extra={"task": self.prepared.task, "best": self.best})
        os.replace(partial, self.output_dir / BEST)

    async def after_epoch(self, epoch: int, step: int, state: dict[str, torch.Tensor]) -> dict:
        """Score `state` after `epoch`: {"epoch", "step", "eval": metrics, "validation": metrics}."""
        began = time.perf_counter()
        entry = await asyncio.to_thread(self._entry, epoch, step, state)
        self.seconds += time.perf_counter() - began
        self.last = (step, entry)
        return entry

    def should_stop(self, epoch: int, epochs: int) -> bool:
        return bool(self.patience and self.best and epoch - self.best["epoch"] >= self.patience and epoch < epochs)

    def best_state(self) -> dict[str, torch.Tensor] | None:
        """The best epoch's side network and head (from OUT/best.safetensors), or None without a validation split."""
        path = self.output_dir / BEST
        if self.best is None or not path.exists():
            return None
        from safetensors.torch import load_file

        return {k: v for k, v in state_from_adapter(load_file(str(path))).items() if k.startswith(TRAINED_PREFIXES)}

    def resumed(self, evaluations: list[dict]) -> None:
        """A resumed job: the best epoch so far from its history (its weights are in OUT/best.safetensors)."""
        scored = [e for e in evaluations if "validation" in e]
        for entry in scored:
            if better(entry["validation"], (self.best or {}).get("validation")):
                self.best = entry
        if self.best is not None and not (self.output_dir / BEST).exists():
            self.best = None  # the weights are gone: the best is chosen among the epochs still to come

    def final(self, step: int) -> dict[str, float] | None:
        """The evaluation data's score of the state after `step` if it was computed, else None."""
        if self.best is not None:
            return self.best.get("eval")
        return self.last[1].get("eval") if self.last is not None and self.last[0] == step else None

    def close(self) -> None:
        if self.states is not None:
            self.states.cache.close()
            self.states = None
        shutil.rmtree(self.directory, ignore_errors=True)
