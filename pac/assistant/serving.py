"""Answering with a deployed adapter: its backbone from the device's model store, at the quantisation it
was trained at, with the adapter attached; chat answers are decoded in waves (pac/assistant/batching.py),
classification and regression in batches.

One model is held at a time (the last one asked for); the daemon runs one wave or batch at a time. PyTorch
and the model code are imported by the first request that loads a model, so an idle daemon holds neither.
"""

from __future__ import annotations

from pac.assistant.messages import MAX_TEXTS, Result
from pac.assistant.store import Deployed, ModelStore
from pac.errors import AdapterMismatchError, ConfigError

CLASSIFY_SEQ_LEN = 512


class Assistant:
    """What the daemon's Assistant service answers with."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._backbone: tuple[tuple[str, str], object] | None = None  # ((name, quantization), backbone)
        self._loaded: tuple[str, object] | None = None  # (adapter id, tuned model) on that backbone
        self._fingerprints: dict[str, str] = {}  # backbone name -> fingerprint of this device's copy

    def backbone(self, name: str, quantization: str):
        """The backbone `name` from this device's model store at `quantization`; the one held is reused."""
        if self._backbone is None or self._backbone[0] != (name, quantization):
            from pac.models.backbone import load_backbone
            from pac.quant import quantize_backbone

            self._backbone = self._loaded = None  # the previous one goes before the next one loads
            backbone = load_backbone(name)  # ModelNotFoundError names it
            self._fingerprints[name] = backbone.fingerprint()  # of the weights as stored, before quantising
            quantize_backbone(backbone, quantization)
            self._backbone = ((name, quantization), backbone)
        return self._backbone[1]

    def check_backbone(self, name: str, fingerprint: str, quantization: str = "none") -> None:
        """Refuse an adapter for a backbone this device lacks, or holds with other weights."""
        if name not in self._fingerprints:
            self.backbone(name, quantization)
        mine = self._fingerprints[name]
        if mine != fingerprint:
            raise AdapterMismatchError(
                f"the adapter needs backbone {name!r} with fingerprint {fingerprint[:12]}; this device's model "
                f"store has {name!r} with fingerprint {mine[:12]} (other weights): install the same model here")

    def model(self, deployed: Deployed):
        """The backbone and the tuned model of `deployed`, loaded (the one held is reused)."""
        from pac.adapter import load_adapter, tuned_top_layers

        if self._loaded is not None and self._loaded[0] != deployed.id and (
                self._loaded[1].top is not None or tuned_top_layers(self.store.path(deployed))):
            self._backbone = self._loaded = None  # tuned top layers live in the backbone's modules: a fresh one
        backbone = self.backbone(deployed.backbone, deployed.quantization)
        if self._loaded is None or self._loaded[0] != deployed.id:
            self._loaded = (deployed.id, load_adapter(self.store.path(deployed), backbone).eval())
        return backbone, self._loaded[1]

    def classify(self, deployed: Deployed, texts: list[str], pairs: list[str]) -> list[Result]:
        import torch

        from pac.data.batching import collate, encode_example
        from pac.data.readers import Example

        if not texts or len(texts) > MAX_TEXTS:
            raise ConfigError(f"texts: send 1 to {MAX_TEXTS} texts, got {len(texts)}")
        if pairs and len(pairs) != len(texts):
            raise ConfigError(f"second_texts: one per text ({len(texts)}) or none, got {len(pairs)}")
        backbone, model = self.model(deployed)
        task = "regression" if deployed.task == "regression" else "classification"
        items = [encode_example(Example(text=t, text_pair=pairs[i] if pairs else None, label=0, score=0.0),
                                backbone.tokenizer, task, backbone.family, CLASSIFY_SEQ_LEN, i)
                 for i, t in enumerate(texts)]
        batch = {k: v.to(backbone.device) for k, v in collate(items, backbone.tokenizer.pad_token_id or 0,
                                                               task).items()}
        with torch.no_grad():
            logits = model(batch).logits.float()
        if task == "regression":
            return [Result(score=float(v)) for v in logits.reshape(-1)]
        results = []
        for row in torch.softmax(logits, dim=-1):
            order = row.argsort(descending=True).tolist()
            results.append(Result(tuple((_label(deployed, i), i, float(row[i])) for i in order)))
        return results


def _label(deployed: Deployed, index: int) -> str:
    return deployed.labels[index] if index < len(deployed.labels) else str(index)
