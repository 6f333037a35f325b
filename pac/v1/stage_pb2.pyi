from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SideConfig(_message.Message):
    __slots__ = ("reduction_factor", "layers")
    REDUCTION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    reduction_factor: int
    layers: LayerList
    def __init__(self, reduction_factor: _Optional[int] = ..., layers: _Optional[_Union[LayerList, _Mapping]] = ...) -> None: ...

class LayerList(_message.Message):
    __slots__ = ("indices",)
    INDICES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, indices: _Optional[_Iterable[int]] = ...) -> None: ...

class HeadConfig(_message.Message):
    __slots__ = ("task", "num_labels", "pooling")
    TASK_FIELD_NUMBER: _ClassVar[int]
    NUM_LABELS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    task: str
    num_labels: int
    pooling: str
    def __init__(self, task: _Optional[str] = ..., num_labels: _Optional[int] = ..., pooling: _Optional[str] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ("epochs", "batch_size", "learning_rate", "weight_decay", "warmup_fraction", "seed", "max_grad_norm", "activation_checkpointing", "side_precision", "allreduce_precision")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    SIDE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    ALLREDUCE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_fraction: float
    seed: int
    max_grad_norm: float
    activation_checkpointing: bool
    side_precision: str
    allreduce_precision: str
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., warmup_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., max_grad_norm: _Optional[float] = ..., activation_checkpointing: _Optional[bool] = ..., side_precision: _Optional[str] = ..., allreduce_precision: _Optional[str] = ...) -> None: ...

class BlockStyle(_message.Message):
    __slots__ = ("norm", "norm_eps", "activation", "gated_mlp", "pre_norm", "causal", "rope_theta", "num_heads", "num_kv_heads", "head_dim")
    NORM_FIELD_NUMBER: _ClassVar[int]
    NORM_EPS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    GATED_MLP_FIELD_NUMBER: _ClassVar[int]
    PRE_NORM_FIELD_NUMBER: _ClassVar[int]
    CAUSAL_FIELD_NUMBER: _ClassVar[int]
    ROPE_THETA_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    norm: str
    norm_eps: float
    activation: str
    gated_mlp: bool
    pre_norm: bool
    causal: bool
    rope_theta: float
    num_heads: int
    num_kv_heads: int
    head_dim: int
    def __init__(self, norm: _Optional[str] = ..., norm_eps: _Optional[float] = ..., activation: _Optional[str] = ..., gated_mlp: _Optional[bool] = ..., pre_norm: _Optional[bool] = ..., causal: _Optional[bool] = ..., rope_theta: _Optional[float] = ..., num_heads: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ...) -> None: ...

class SideSpec(_message.Message):
    __slots__ = ("family", "hidden_size", "width", "heads", "head_dim", "mlp_inner", "bias", "style", "stack_sizes", "taps", "top_layers")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    MLP_INNER_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    STACK_SIZES_FIELD_NUMBER: _ClassVar[int]
    TAPS_FIELD_NUMBER: _ClassVar[int]
    TOP_LAYERS_FIELD_NUMBER: _ClassVar[int]
    family: str
    hidden_size: int
    width: int
    heads: int
    head_dim: int
    mlp_inner: int
    bias: bool
    style: BlockStyle
    stack_sizes: _containers.RepeatedScalarFieldContainer[int]
    taps: _containers.RepeatedCompositeFieldContainer[LayerList]
    top_layers: int
    def __init__(self, family: _Optional[str] = ..., hidden_size: _Optional[int] = ..., width: _Optional[int] = ..., heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., mlp_inner: _Optional[int] = ..., bias: _Optional[bool] = ..., style: _Optional[_Union[BlockStyle, _Mapping]] = ..., stack_sizes: _Optional[_Iterable[int]] = ..., taps: _Optional[_Iterable[_Union[LayerList, _Mapping]]] = ..., top_layers: _Optional[int] = ...) -> None: ...

class TopLayers(_message.Message):
    __slots__ = ("count", "tuning", "targets", "rank", "alpha")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TUNING_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    count: int
    tuning: str
    targets: str
    rank: int
    alpha: int
    def __init__(self, count: _Optional[int] = ..., tuning: _Optional[str] = ..., targets: _Optional[str] = ..., rank: _Optional[int] = ..., alpha: _Optional[int] = ...) -> None: ...

class StageReplicas(_message.Message):
    __slots__ = ("shares", "addresses")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedScalarFieldContainer[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shares: _Optional[_Iterable[int]] = ..., addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class JobBasics(_message.Message):
    __slots__ = ("job_id", "model", "quantization", "seed", "total_steps", "pad_id", "head", "train", "cache_keep", "timeout_s", "cache_directory")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PAD_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEEP_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CACHE_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    quantization: str
    seed: int
    total_steps: int
    pad_id: int
    head: HeadConfig
    train: TrainConfig
    cache_keep: bool
    timeout_s: float
    cache_directory: str
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., quantization: _Optional[str] = ..., seed: _Optional[int] = ..., total_steps: _Optional[int] = ..., pad_id: _Optional[int] = ..., head: _Optional[_Union[HeadConfig, _Mapping]] = ..., train: _Optional[_Union[TrainConfig, _Mapping]] = ..., cache_keep: _Optional[bool] = ..., timeout_s: _Optional[float] = ..., cache_directory: _Optional[str] = ...) -> None: ...

class StageSpec(_message.Message):
    __slots__ = ("job", "stage", "replica", "first_layer", "end_layer", "side", "stages", "codec", "cache_precision", "steps_done", "top", "run_ahead", "evaluation_precision")
    JOB_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    FIRST_LAYER_FIELD_NUMBER: _ClassVar[int]
    END_LAYER_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CACHE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RUN_AHEAD_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_PRECISION_FIELD_NUMBER: _ClassVar[int]
    job: JobBasics
    stage: int
    replica: int
    first_layer: int
    end_layer: int
    side: SideConfig
    stages: _containers.RepeatedCompositeFieldContainer[StageReplicas]
    codec: str
    cache_precision: str
    steps_done: int
    top: TopLayers
    run_ahead: int
    evaluation_precision: str
    def __init__(self, job: _Optional[_Union[JobBasics, _Mapping]] = ..., stage: _Optional[int] = ..., replica: _Optional[int] = ..., first_layer: _Optional[int] = ..., end_layer: _Optional[int] = ..., side: _Optional[_Union[SideConfig, _Mapping]] = ..., stages: _Optional[_Iterable[_Union[StageReplicas, _Mapping]]] = ..., codec: _Optional[str] = ..., cache_precision: _Optional[str] = ..., steps_done: _Optional[int] = ..., top: _Optional[_Union[TopLayers, _Mapping]] = ..., run_ahead: _Optional[int] = ..., evaluation_precision: _Optional[str] = ...) -> None: ...

class Phase2Spec(_message.Message):
    __slots__ = ("job", "side_spec", "steps_done", "rank", "members", "fingerprint", "tokenizer_fingerprint", "lm_head_scale", "cache_precision", "holds_only", "top")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SIDE_SPEC_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LM_HEAD_SCALE_FIELD_NUMBER: _ClassVar[int]
    CACHE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    HOLDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    job: JobBasics
    side_spec: SideSpec
    steps_done: int
    rank: int
    members: _containers.RepeatedScalarFieldContainer[str]
    fingerprint: str
    tokenizer_fingerprint: str
    lm_head_scale: float
    cache_precision: str
    holds_only: bool
    top: TopLayers
    def __init__(self, job: _Optional[_Union[JobBasics, _Mapping]] = ..., side_spec: _Optional[_Union[SideSpec, _Mapping]] = ..., steps_done: _Optional[int] = ..., rank: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., fingerprint: _Optional[str] = ..., tokenizer_fingerprint: _Optional[str] = ..., lm_head_scale: _Optional[float] = ..., cache_precision: _Optional[str] = ..., holds_only: _Optional[bool] = ..., top: _Optional[_Union[TopLayers, _Mapping]] = ...) -> None: ...

class LoadStageChunk(_message.Message):
    __slots__ = ("spec", "tensors")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    spec: StageSpec
    tensors: bytes
    def __init__(self, spec: _Optional[_Union[StageSpec, _Mapping]] = ..., tensors: _Optional[bytes] = ...) -> None: ...

class LoadPhase2Chunk(_message.Message):
    __slots__ = ("spec", "tensors")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    spec: Phase2Spec
    tensors: bytes
    def __init__(self, spec: _Optional[_Union[Phase2Spec, _Mapping]] = ..., tensors: _Optional[bytes] = ...) -> None: ...

class StateChunk(_message.Message):
    __slots__ = ("info", "tensors")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    info: StateInfo
    tensors: bytes
    def __init__(self, info: _Optional[_Union[StateInfo, _Mapping]] = ..., tensors: _Optional[bytes] = ...) -> None: ...

class StateInfo(_message.Message):
    __slots__ = ("steps_done",)
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    steps_done: int
    def __init__(self, steps_done: _Optional[int] = ...) -> None: ...

class CacheRecordChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: CacheRecordHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[CacheRecordHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CacheRecordHeader(_message.Message):
    __slots__ = ("key", "shapes")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    key: str
    shapes: _containers.RepeatedCompositeFieldContainer[Shape]
    def __init__(self, key: _Optional[str] = ..., shapes: _Optional[_Iterable[_Union[Shape, _Mapping]]] = ...) -> None: ...

class Shape(_message.Message):
    __slots__ = ("dims",)
    DIMS_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dims: _Optional[_Iterable[int]] = ...) -> None: ...

class LoadReply(_message.Message):
    __slots__ = ("held_bytes", "load_s", "cached_records", "fingerprint")
    HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_S_FIELD_NUMBER: _ClassVar[int]
    CACHED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    held_bytes: int
    load_s: float
    cached_records: int
    fingerprint: str
    def __init__(self, held_bytes: _Optional[int] = ..., load_s: _Optional[float] = ..., cached_records: _Optional[int] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class MicroBatch(_message.Message):
    __slots__ = ("index", "rows", "tensors", "sample_keys", "lengths")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    index: int
    rows: int
    tensors: bytes
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, index: _Optional[int] = ..., rows: _Optional[int] = ..., tensors: _Optional[bytes] = ..., sample_keys: _Optional[_Iterable[str]] = ..., lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class RunStepRequest(_message.Message):
    __slots__ = ("job_id", "step", "loss_total", "micro_batches", "timeout_s", "apply", "max_grad_norm", "evaluate", "ahead", "apply_before")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCHES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    AHEAD_FIELD_NUMBER: _ClassVar[int]
    APPLY_BEFORE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    loss_total: int
    micro_batches: _containers.RepeatedCompositeFieldContainer[MicroBatch]
    timeout_s: float
    apply: bool
    max_grad_norm: float
    evaluate: bool
    ahead: bool
    apply_before: float
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., loss_total: _Optional[int] = ..., micro_batches: _Optional[_Iterable[_Union[MicroBatch, _Mapping]]] = ..., timeout_s: _Optional[float] = ..., apply: _Optional[bool] = ..., max_grad_norm: _Optional[float] = ..., evaluate: _Optional[bool] = ..., ahead: _Optional[bool] = ..., apply_before: _Optional[float] = ...) -> None: ...

class RunStepReply(_message.Message):
    __slots__ = ("loss", "grad_square_norm", "cache_records", "events")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_SQUARE_NORM_FIELD_NUMBER: _ClassVar[int]
    CACHE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    loss: float
    grad_square_norm: float
    cache_records: int
    events: _containers.RepeatedCompositeFieldContainer[TimelineEvent]
    def __init__(self, loss: _Optional[float] = ..., grad_square_norm: _Optional[float] = ..., cache_records: _Optional[int] = ..., events: _Optional[_Iterable[_Union[TimelineEvent, _Mapping]]] = ...) -> None: ...

class TimelineEvent(_message.Message):
    __slots__ = ("op", "micro", "start_s", "end_s")
    OP_FIELD_NUMBER: _ClassVar[int]
    MICRO_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    op: str
    micro: int
    start_s: float
    end_s: float
    def __init__(self, op: _Optional[str] = ..., micro: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class ApplyStepRequest(_message.Message):
    __slots__ = ("job_id", "step", "clip_coefficient")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLIP_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    clip_coefficient: float
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., clip_coefficient: _Optional[float] = ...) -> None: ...

class ApplyStepReply(_message.Message):
    __slots__ = ("learning_rate",)
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    def __init__(self, learning_rate: _Optional[float] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ("job_id", "optimizer")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    optimizer: bool
    def __init__(self, job_id: _Optional[str] = ..., optimizer: _Optional[bool] = ...) -> None: ...

class GatherCacheRequest(_message.Message):
    __slots__ = ("job_id", "timeout_s", "self_address", "stages", "samples")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SELF_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    timeout_s: float
    self_address: str
    stages: int
    samples: _containers.RepeatedCompositeFieldContainer[GatherSample]
    def __init__(self, job_id: _Optional[str] = ..., timeout_s: _Optional[float] = ..., self_address: _Optional[str] = ..., stages: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[GatherSample, _Mapping]]] = ...) -> None: ...

class GatherSample(_message.Message):
    __slots__ = ("key", "sample", "sources", "whole")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    key: str
    sample: Sample
    sources: _containers.RepeatedScalarFieldContainer[str]
    whole: str
    def __init__(self, key: _Optional[str] = ..., sample: _Optional[_Union[Sample, _Mapping]] = ..., sources: _Optional[_Iterable[str]] = ..., whole: _Optional[str] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("input_ids", "label", "score", "tokens", "decoder_ids")
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODER_IDS_FIELD_NUMBER: _ClassVar[int]
    input_ids: _containers.RepeatedScalarFieldContainer[int]
    label: int
    score: float
    tokens: TokenLabels
    decoder_ids: TokenIds
    def __init__(self, input_ids: _Optional[_Iterable[int]] = ..., label: _Optional[int] = ..., score: _Optional[float] = ..., tokens: _Optional[_Union[TokenLabels, _Mapping]] = ..., decoder_ids: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class TokenLabels(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GatherCacheReply(_message.Message):
    __slots__ = ("records", "fetched_bytes", "local_bytes", "seconds", "missing")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOCAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    records: int
    fetched_bytes: int
    local_bytes: int
    seconds: float
    missing: int
    def __init__(self, records: _Optional[int] = ..., fetched_bytes: _Optional[int] = ..., local_bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., missing: _Optional[int] = ...) -> None: ...

class FetchCacheRequest(_message.Message):
    __slots__ = ("job_id", "stage", "sample_keys", "whole", "evaluation")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    stage: int
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    whole: bool
    evaluation: bool
    def __init__(self, job_id: _Optional[str] = ..., stage: _Optional[int] = ..., sample_keys: _Optional[_Iterable[str]] = ..., whole: _Optional[bool] = ..., evaluation: _Optional[bool] = ...) -> None: ...

class TrainEpochRequest(_message.Message):
    __slots__ = ("job_id", "epoch", "first_step", "steps")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    epoch: int
    first_step: int
    steps: _containers.RepeatedCompositeFieldContainer[EpochStep]
    def __init__(self, job_id: _Optional[str] = ..., epoch: _Optional[int] = ..., first_step: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[EpochStep, _Mapping]]] = ...) -> None: ...

class EpochStep(_message.Message):
    __slots__ = ("keys", "loss_total")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LOSS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    loss_total: int
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., loss_total: _Optional[int] = ...) -> None: ...

class StepReport(_message.Message):
    __slots__ = ("step", "loss", "samples", "seconds", "allreduce_s")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLREDUCE_S_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    samples: int
    seconds: float
    allreduce_s: float
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., samples: _Optional[int] = ..., seconds: _Optional[float] = ..., allreduce_s: _Optional[float] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("job_id", "keep_cache")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_CACHE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    keep_cache: bool
    def __init__(self, job_id: _Optional[str] = ..., keep_cache: _Optional[bool] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("job_id", "lease_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_s: float
    def __init__(self, job_id: _Optional[str] = ..., lease_s: _Optional[float] = ...) -> None: ...

class RenewReply(_message.Message):
    __slots__ = ("held",)
    HELD_FIELD_NUMBER: _ClassVar[int]
    held: bool
    def __init__(self, held: _Optional[bool] = ...) -> None: ...

class StageStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageStatusReply(_message.Message):
    __slots__ = ("job_id", "phase", "step", "stage", "member")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    phase: str
    step: int
    stage: HeldStage
    member: HeldMember
    def __init__(self, job_id: _Optional[str] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., stage: _Optional[_Union[HeldStage, _Mapping]] = ..., member: _Optional[_Union[HeldMember, _Mapping]] = ...) -> None: ...

class HeldStage(_message.Message):
    __slots__ = ("stage", "replica", "first_layer", "end_layer", "shard_records")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    FIRST_LAYER_FIELD_NUMBER: _ClassVar[int]
    END_LAYER_FIELD_NUMBER: _ClassVar[int]
    SHARD_RECORDS_FIELD_NUMBER: _ClassVar[int]
    stage: int
    replica: int
    first_layer: int
    end_layer: int
    shard_records: int
    def __init__(self, stage: _Optional[int] = ..., replica: _Optional[int] = ..., first_layer: _Optional[int] = ..., end_layer: _Optional[int] = ..., shard_records: _Optional[int] = ...) -> None: ...

class HeldMember(_message.Message):
    __slots__ = ("rank", "cache_records")
    RANK_FIELD_NUMBER: _ClassVar[int]
    CACHE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    cache_records: int
    def __init__(self, rank: _Optional[int] = ..., cache_records: _Optional[int] = ...) -> None: ...
