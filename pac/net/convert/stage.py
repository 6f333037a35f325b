"""pac.v1 stage.proto <-> the device worker's own types (pac.worker.spec) and the configs they carry.

A `*_from_proto` checks what the domain types do not (a stage within its pipeline, a replica within its
stage) and raises ConfigError naming the field.
"""

from __future__ import annotations

from pac.data.batching import Encoded
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.side.network import SideConfig, SideSpec
from pac.side.weights import BlockStyle
from pac.techniques.top import TopConfig
from pac.train.loop import TrainConfig
from pac.v1 import stage_pb2
from pac.worker.device_job import DeviceJob
from pac.worker.spec import EpochStep, GatherPlan, GatherSample, MicroIn, Phase2Spec, StageSpec, StepReport
from pac.worker.tensors import pack, unpack

_TRAIN_FIELDS = ("epochs", "batch_size", "learning_rate", "weight_decay", "warmup_fraction", "seed",
                 "max_grad_norm", "activation_checkpointing", "side_precision", "allreduce_precision")
_STYLE_FIELDS = ("norm", "norm_eps", "activation", "gated_mlp", "pre_norm", "causal", "num_heads", "num_kv_heads",
                 "head_dim")
_SIDE_SPEC_FIELDS = ("family", "hidden_size", "width", "heads", "head_dim", "mlp_inner", "bias", "top_layers")
_TOP_FIELDS = ("count", "tuning", "targets", "rank", "alpha")
_BASIC_FIELDS = ("job_id", "model", "quantization", "seed", "total_steps", "pad_id", "cache_keep", "timeout_s")
_STAGE_FIELDS = ("stage", "replica", "codec", "steps_done", "run_ahead")  # carried as they are
_PHASE2_FIELDS = ("steps_done", "rank", "fingerprint", "tokenizer_fingerprint", "cache_precision", "holds_only")


def _checked(kind: type, where: str, **fields):
    """`kind(**fields)`; its ConfigError names `where`."""
    try:
        return kind(**fields)
    except (ConfigError, TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None


# ---- the configs -------------------------------------------------------------------------------------
def side_config_to_proto(config: SideConfig) -> stage_pb2.SideConfig:
    message = stage_pb2.SideConfig(reduction_factor=config.reduction_factor)
    if config.layers is not None:
        message.layers.indices.extend(config.layers)
        message.layers.SetInParent()
    return message


def side_config_from_proto(message: stage_pb2.SideConfig) -> SideConfig:
    layers = tuple(message.layers.indices) if message.HasField("layers") else None
    return _checked(SideConfig, "side", reduction_factor=message.reduction_factor, layers=layers)


def top_to_proto(config: TopConfig) -> stage_pb2.TopLayers | None:
    return stage_pb2.TopLayers(**{name: getattr(config, name) for name in _TOP_FIELDS}) if config.count else None


def top_from_proto(message: stage_pb2.StageSpec | stage_pb2.Phase2Spec) -> TopConfig:
    if not message.HasField("top"):
        return TopConfig()
    return _checked(TopConfig, "top", **{name: getattr(message.top, name) for name in _TOP_FIELDS})


def head_to_proto(config: HeadConfig) -> stage_pb2.HeadConfig:
    return stage_pb2.HeadConfig(task=config.task, num_labels=config.num_labels, pooling=config.pooling)


def head_from_proto(message: stage_pb2.HeadConfig) -> HeadConfig:
    return _checked(HeadConfig, "head", task=message.task, num_labels=message.num_labels, pooling=message.pooling)


def train_to_proto(config: TrainConfig) -> stage_pb2.TrainConfig:
    return stage_pb2.TrainConfig(**{name: getattr(config, name) for name in _TRAIN_FIELDS})


def train_from_proto(message: stage_pb2.TrainConfig) -> TrainConfig:
    return _checked(TrainConfig, "train", **{name: getattr(message, name) for name in _TRAIN_FIELDS})


def side_spec_to_proto(spec: SideSpec) -> stage_pb2.SideSpec:
    style = stage_pb2.BlockStyle(**{name: getattr(spec.style, name) for name in _STYLE_FIELDS})
    if spec.style.rope_theta is not None:
        style.rope_theta = spec.style.rope_theta
    return stage_pb2.SideSpec(**{name: getattr(spec, name) for name in _SIDE_SPEC_FIELDS}, style=style,
                              stack_sizes=list(spec.stack_sizes),
                              taps=[stage_pb2.LayerList(indices=list(t)) for t in spec.taps])


def side_spec_from_proto(message: stage_pb2.SideSpec) -> SideSpec:
    style = message.style
    rope = style.rope_theta if style.HasField("rope_theta") else None
    return _checked(SideSpec, "side_spec", **{name: getattr(message, name) for name in _SIDE_SPEC_FIELDS},
                    style=_checked(BlockStyle, "side_spec.style", rope_theta=rope,
                                   **{name: getattr(style, name) for name in _STYLE_FIELDS}),
                    stack_sizes=tuple(message.stack_sizes), taps=tuple(tuple(t.indices) for t in message.taps))


# ---- the specs -------------------------------------------------------------------------------------
def basics_to_proto(spec: StageSpec | Phase2Spec) -> stage_pb2.JobBasics:
    return stage_pb2.JobBasics(**{name: getattr(spec, name) for name in _BASIC_FIELDS}, head=head_to_proto(spec.head),
                               train=train_to_proto(spec.train), cache_directory=spec.cache_directory or "")


def basics_from_proto(message: stage_pb2.JobBasics) -> dict:
    """The shared fields of a StageSpec or Phase2Spec, as keyword arguments."""
    return dict(**{name: getattr(message, name) for name in _BASIC_FIELDS}, head=head_from_proto(message.head),
                train=train_from_proto(message.train), cache_directory=message.cache_directory or None)


def stage_spec_to_proto(spec: StageSpec) -> stage_pb2.StageSpec:
    return stage_pb2.StageSpec(
        job=basics_to_proto(spec), **{name: getattr(spec, name) for name in _STAGE_FIELDS}, first_layer=spec.first,
        end_layer=spec.end, side=side_config_to_proto(spec.side), top=top_to_proto(spec.top),
        stages=[stage_pb2.StageReplicas(shares=list(shares), addresses=list(addresses))
                for shares, addresses in zip(spec.shares, spec.addresses, strict=True)],
        cache_precision=spec.cache_precision or "", evaluation_precision=spec.evaluation_precision or "")


def stage_spec_from_proto(message: stage_pb2.StageSpec) -> StageSpec:
    stages = list(message.stages)
    for s, group in enumerate(stages):
        if not group.shares or len(group.shares) != len(group.addresses):
            raise ConfigError(f"stage spec: stages[{s}] has {len(group.shares)} shares for {len(group.addresses)} "
                              f"addresses (one share per replica, at least one)")
    if message.stage >= len(stages):
        raise ConfigError(f"stage spec: stage {message.stage} of a pipeline of {len(stages)} stages")
    if message.replica >= len(stages[message.stage].addresses):
        raise ConfigError(f"stage spec: replica {message.replica} of a stage of "
                          f"{len(stages[message.stage].addresses)} replicas")
    if message.first_layer >= message.end_layer:
        raise ConfigError(f"stage spec: layers [{message.first_layer}, {message.end_layer}) are empty")
    top = top_from_proto(message)
    side = side_config_from_proto(message.side)
    return StageSpec(
        **basics_from_proto(message.job), **{name: getattr(message, name) for name in _STAGE_FIELDS},
        first=message.first_layer, end=message.end_layer, top=top,
        side=_checked(SideConfig, "side", reduction_factor=side.reduction_factor, layers=side.layers,
                      top_layers=top.count),
        shares=[list(g.shares) for g in stages], addresses=[list(g.addresses) for g in stages],
        cache_precision=message.cache_precision or None, evaluation_precision=message.evaluation_precision or None)


def phase2_spec_to_proto(spec: Phase2Spec) -> stage_pb2.Phase2Spec:
    message = stage_pb2.Phase2Spec(job=basics_to_proto(spec), **{name: getattr(spec, name) for name in _PHASE2_FIELDS},
                                   side_spec=side_spec_to_proto(spec.side_spec), members=list(spec.members),
                                   top=top_to_proto(spec.top))
    if spec.lm_head_scale is not None:
        message.lm_head_scale = spec.lm_head_scale
    return message


def phase2_spec_from_proto(message: stage_pb2.Phase2Spec) -> Phase2Spec:
    if message.rank >= len(message.members):
        raise ConfigError(f"phase-2 spec: rank {message.rank} of {len(message.members)} members")
    return Phase2Spec(
        **basics_from_proto(message.job), **{name: getattr(message, name) for name in _PHASE2_FIELDS},
        side_spec=side_spec_from_proto(message.side_spec), members=list(message.members), top=top_from_proto(message),
        lm_head_scale=message.lm_head_scale if message.HasField("lm_head_scale") else None)


# ---- one mini-batch --------------------------------------------------------------------------------
def micro_to_proto(micro: MicroIn) -> stage_pb2.MicroBatch:
    message = stage_pb2.MicroBatch(index=micro.index, rows=micro.rows)
    if micro.batch is not None:
        message.tensors = pack(micro.batch)
        message.sample_keys.extend(micro.keys)
        message.lengths.extend(n for row in micro.lengths for n in row)
    return message


def micro_from_proto(message: stage_pb2.MicroBatch, stacks: int) -> MicroIn:
    """A micro-batch of a model with `stacks` stacks (each row has one length per stack)."""
    if len(message.lengths) != stacks * len(message.sample_keys):
        raise ConfigError(f"micro-batch {message.index}: {len(message.lengths)} lengths for "
                          f"{len(message.sample_keys)} rows of {stacks} stack(s)")
    lengths = [list(message.lengths[i:i + stacks]) for i in range(0, len(message.lengths), stacks)]
    return MicroIn(message.index, message.rows, unpack(message.tensors) if message.tensors else None,
                   list(message.sample_keys), lengths)


def events_to_proto(events: list[dict]) -> list[stage_pb2.TimelineEvent]:
    return [stage_pb2.TimelineEvent(op=e["op"], micro=e["micro"], start_s=e["start_s"], end_s=e["end_s"])
            for e in events]


def events_from_proto(messages) -> list[dict]:
    return [{"op": e.op, "micro": e.micro if e.HasField("micro") else None, "start_s": e.start_s, "end_s": e.end_s}
            for e in messages]


# ---- phase 2 ---------------------------------------------------------------------------------------
def sample_to_proto(item: Encoded) -> stage_pb2.Sample:
    message = stage_pb2.Sample(input_ids=list(item.input_ids))
    if isinstance(item.target, tuple):
        message.tokens.ids.extend(item.target)
        message.tokens.SetInParent()
    elif isinstance(item.target, float):
        message.score = item.target
    else:
        message.label = item.target
    if item.decoder_ids is not None:
        message.decoder_ids.ids.extend(item.decoder_ids)
        message.decoder_ids.SetInParent()
    return message


def sample_from_proto(message: stage_pb2.Sample, where: str) -> Encoded:
    which = message.WhichOneof("target")
    if which is None:
        raise ConfigError(f"{where}: the sample has no target (label, score or tokens)")
    target = tuple(message.tokens.ids) if which == "tokens" else getattr(message, which)
    decoder = tuple(message.decoder_ids.ids) if message.HasField("decoder_ids") else None
    return Encoded(tuple(message.input_ids), target, decoder)


def gather_to_proto(job_id: str, plan: GatherPlan, timeout_s: float) -> stage_pb2.GatherCacheRequest:
    return stage_pb2.GatherCacheRequest(
        job_id=job_id, timeout_s=timeout_s, self_address=plan.me, stages=plan.stages,
        samples=[stage_pb2.GatherSample(key=s.key, sample=sample_to_proto(s.item), sources=list(s.sources),
                                        whole=s.whole) for s in plan.samples])


def gather_from_proto(message: stage_pb2.GatherCacheRequest) -> GatherPlan:
    samples = []
    for i, s in enumerate(message.samples):
        if len(s.sources) != message.stages:
            raise ConfigError(f"samples[{i}]: {len(s.sources)} sources for {message.stages} stages")
        samples.append(GatherSample(s.key, sample_from_proto(s.sample, f"samples[{i}]"), tuple(s.sources), s.whole))
    return GatherPlan(message.self_address, message.stages, tuple(samples))


def steps_to_proto(steps: list[EpochStep]) -> list[stage_pb2.EpochStep]:
    return [stage_pb2.EpochStep(keys=list(s.keys), loss_total=s.loss_total) for s in steps]


def steps_from_proto(messages) -> list[EpochStep]:
    return [EpochStep(tuple(m.keys), m.loss_total) for m in messages]


def report_to_proto(report: StepReport) -> stage_pb2.StepReport:
    return stage_pb2.StepReport(step=report.step, loss=report.loss, samples=report.samples, seconds=report.seconds,
                                allreduce_s=report.allreduce_s)


def report_from_proto(message: stage_pb2.StepReport) -> StepReport:
    return StepReport(message.step, message.loss, message.samples, message.seconds, message.allreduce_s)


def record_header(key: str, shapes: list) -> stage_pb2.CacheRecordHeader:
    """The header of one cache record a device sends a peer: its key and its tensors' shapes."""
    return stage_pb2.CacheRecordHeader(key=key, shapes=[stage_pb2.Shape(dims=list(s)) for s in shapes])


def record_from_header(header: stage_pb2.CacheRecordHeader) -> tuple[str, list[tuple[int, ...]]]:
    return header.key, [tuple(s.dims) for s in header.shapes]


# ---- what a device holds ---------------------------------------------------------------------------
def status_to_proto(job: DeviceJob | None) -> stage_pb2.StageStatusReply:
    if job is None:
        return stage_pb2.StageStatusReply()
    reply = stage_pb2.StageStatusReply(job_id=job.job_id, phase="phase2" if job.phase2 is not None else "phase1",
                                       step=job.step)
    if job.stage is not None:
        spec, shard = job.stage.spec, job.stage.shard
        reply.stage.CopyFrom(stage_pb2.HeldStage(stage=spec.stage, replica=spec.replica, first_layer=spec.first,
                                                 end_layer=spec.end, shard_records=len(shard) if shard is not None else 0))
    if job.phase2 is not None:
        reply.member.CopyFrom(stage_pb2.HeldMember(rank=job.phase2.spec.rank, cache_records=len(job.phase2.cache)))
    return reply
