"""A job's data and initial model, prepared on the controller as a single-device run would prepare them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pac.cache import sample_key
from pac.data.batching import Encoded
from pac.data.prepare import encode_job_data, encode_validation, read_job_data
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.models.registry import resolve_model
from pac.quant import quantize_backbone, quantize_layer
from pac.techniques.build import build_model, trainable_parameters
from pac.techniques.top import fit_top


@dataclass
class Prepared:
    backbone: Any
    model: Any  # ParallelAdaptersModel with the initial side network and head
    fingerprint: str
    task: str
    head: HeadConfig
    train_items: list[Encoded]
    eval_items: list[Encoded]
    keys: list[str]
    pad_id: int
    validation_items: list[Encoded] = field(default_factory=list)  # carved out of the training file
    technique: Any = None  # TechniqueConfig as built (tuned top layers at most the model's last stack)
    padded_tokens: float | None = None  # what the seeded mini-batches pad to, on average (the planner's times)
    model_name: str = ""  # as the job names it (a device loads it by this name)
    seed: int = 0
    lm_head: Any = None  # a language-model job's frozen LM head (FrozenLMHead), sent to phase 2's members
    computed_tokens: float | None = None  # a sample's real tokens, where the frozen layers skip padding

    def tokens(self) -> dict[str, float | None]:
        """What `Job.to_training_job` costs a sample's layers at."""
        return {"padded_tokens": self.padded_tokens, "computed_tokens": self.computed_tokens}


def prepare(job, log_line: Callable[[str], None] = print, whole: bool = False) -> Prepared:
    """Encode the data and initialise the side network, head and tuned top layers exactly as a
    single-device run of the same job would (`pac.train.finetune.run_finetune`), so the result is
    comparable, without holding the backbone: the side network is pruned from its layers read one at a
    time, and this machine keeps only what trains or scores here (the tuned top layers, the final norm,
    a language model's head; `load_controller_model`).

    `whole`: load the whole backbone and keep it in the model (to train the same job in one process)."""
    training, data = job.training, job.data
    torch.manual_seed(training.seed)
    examples = read_job_data(data.train, data.eval, data.table_format(), data.train_limit, data.eval_limit,
                             training.seed, None if data.task == "auto" else data.task, data.num_labels,
                             data.validation)
    technique = training.technique_config()
    if technique.name != "parallel":
        raise ConfigError(f"{job.source}: pacctl train runs PAC's technique (parallel), not {technique.name!r}")
    if whole:
        from pac.worker.spec import load_model

        backbone, fingerprint = load_model(job.model.name_or_path, job.model.quantization, training.seed)
    else:
        backbone, fingerprint = load_controller_model(job.model.name_or_path, job.model.quantization,
                                                      training.seed, technique, examples.task == "lm")
    train_items, eval_items = encode_job_data(examples, backbone.tokenizer, backbone.family, training.seq_len)
    validation_items = encode_validation(examples, backbone.tokenizer, backbone.family, training.seq_len)
    if not train_items:
        raise ConfigError(f"{job.source}: data.train {data.train} holds no examples")
    task, tokenizer = examples.task, backbone.tokenizer
    head = HeadConfig(task=task, num_labels=examples.num_labels)
    technique = fit_top(technique, backbone, log_line)
    model = build_model(backbone, technique, head)
    lm_head = backbone.lm_head() if task == "lm" else None  # phase 2's members are sent it
    if not whole:
        model.release_backbone()  # the tuned top layers keep theirs; evaluation scores from cached states
        backbone.open_layer = None  # the checkpoint is not read here again
    keys = [sample_key(item.input_ids, item.decoder_ids) for item in train_items]
    log_line(f"{backbone.name}: {task}, {len(train_items)} training / {len(eval_items)} evaluation examples, "
             f"{sum(p.numel() for p in trainable_parameters(model)):,} trainable parameters"
             + (f" ({model.top.count} top layers tuned)" if model.top is not None else ""))
    return Prepared(backbone, model, fingerprint, task, head, train_items, eval_items, keys,
                    tokenizer.pad_token_id, validation_items, technique,
                    padded_tokens(train_items, training.batch_size, training.seed),
                    job.model.name_or_path, training.seed, lm_head,
                    real_tokens(train_items) if backbone.unpadded else None)


def load_controller_model(name: str, quantization: str, seed: int, technique, lm: bool):
    """(backbone, fingerprint) as the controller holds it: every layer's weights on meta (read one at a
    time through `backbone.open_layer`) but the tuned top layers' and what runs around them here from
    cached states (norms, position embeddings; not the word embeddings), and, for a language-model task,
    the LM head's. Quantisation: a 16-bit one casts what is
    held; int8 and 4-bit replace the layers' linear weights, of which the controller holds none."""
    from pac.models.partial import load_held
    from pac.quant import HALF_DTYPES

    def held(backbone) -> list:
        top = fit_top(technique, backbone, lambda _: None).top.count
        stack = backbone.stacks[-1]
        modules = list(stack[len(stack) - top:]) if top else []
        if backbone.model_type == "t5":  # the relative position bias every layer of a stack reuses
            modules += [s[0].layer[0].SelfAttention.relative_attention_bias for s in backbone.stacks]
        # Outside the layers: what runs around the tuned layers here (position and token-type embeddings,
        # norms), not the word embeddings or, unless the task is a language model's, the LM head.
        in_layers = {id(p) for s in backbone.stacks for layer in s for p in layer.parameters()}
        words = backbone.model.get_input_embeddings()
        head = backbone.model.get_output_embeddings() if backbone.has_lm_head else None
        for module in backbone.model.modules():
            direct = [p for p in module.parameters(recurse=False) if id(p) not in in_layers]
            if direct and module is not words and (module is not head or lm):
                modules.append(module)
        if lm and head is not None:
            modules.append(head)
        return modules

    backbone = load_held(name, held, seed=seed)
    fingerprint = backbone.fingerprint()
    if quantization in HALF_DTYPES or resolve_model(name).tiny:
        quantize_backbone(backbone, quantization)  # 16 bits: the meta weights too, so layers are read so
    else:
        _open_quantized(backbone, quantization)
    backbone.quantization = quantization
    return backbone, fingerprint


def _open_quantized(backbone, quantization: str) -> None:
    """int8 / 4-bit: a layer read for pruning is quantised while it is open, as the whole backbone's
    layers would be (the side network starts from the weights the devices run)."""
    import contextlib

    from pac.quant import restore_layer

    if quantization == "none":
        return
    bits, read = (8 if quantization == "int8" else 4), backbone.open_layer

    @contextlib.contextmanager
    def open_layer(layer):
        with read(layer):
            replaced = quantize_layer(layer, bits)
            try:
                yield layer
            finally:
                restore_layer(replaced)

    backbone.open_layer = open_layer


def padded_tokens(items: list[Encoded], batch_size: int, seed: int) -> float:
    """Tokens a sample's mini-batch pads to, on average over the first epoch's seeded mini-batches (the
    longer stack's for an encoder-decoder model)."""
    from pac.train.loop import batches

    groups = batches(items, batch_size, torch.Generator().manual_seed(seed))
    longest = [max(max(lengths_of(item)) for item in group) for group in groups]
    return sum(n * len(g) for n, g in zip(longest, groups, strict=True)) / max(1, len(items))


def real_tokens(items: list[Encoded]) -> float:
    """A sample's tokens, on average (the longer stack's for an encoder-decoder model)."""
    return sum(max(lengths_of(item)) for item in items) / max(1, len(items))


def lengths_of(item: Encoded) -> list[int]:
    return [len(item.input_ids)] + ([len(item.decoder_ids)] if item.decoder_ids is not None else [])
