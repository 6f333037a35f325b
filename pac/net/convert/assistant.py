"""pac.v1 assistant.proto <-> the assistant's own types (pac.assistant)."""

from __future__ import annotations

from pac.assistant.messages import Result, Sampling
from pac.assistant.store import Deployed, Provenance
from pac.errors import ConfigError
from pac.v1 import assistant_pb2

DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS = 4096
MAX_STOP_STRINGS = 8


def model_to_proto(model: Deployed) -> assistant_pb2.ModelInfo:
    return assistant_pb2.ModelInfo(
        id=model.id, name=model.name, backbone=model.backbone, backbone_fingerprint=model.backbone_fingerprint,
        quantization=model.quantization, task=model.task, labels=list(model.labels), job_id=model.job_id,
        trained_at_unix=model.trained_at_unix, deployed_at_unix=model.deployed_at_unix, metrics=model.metrics,
        size_bytes=model.size_bytes)


def model_from_proto(message: assistant_pb2.ModelInfo) -> Deployed:
    return Deployed(
        id=message.id, name=message.name, backbone=message.backbone, backbone_fingerprint=message.backbone_fingerprint,
        quantization=message.quantization, task=message.task, labels=tuple(message.labels), job_id=message.job_id,
        trained_at_unix=message.trained_at_unix, deployed_at_unix=message.deployed_at_unix,
        metrics=dict(message.metrics), size_bytes=message.size_bytes)


def header_to_proto(about: Provenance, size_bytes: int, sha256: str) -> assistant_pb2.DeployHeader:
    return assistant_pb2.DeployHeader(
        name=about.name, size_bytes=size_bytes, sha256=sha256, quantization=about.quantization,
        labels=list(about.labels), job_id=about.job_id, trained_at_unix=about.trained_at_unix, metrics=about.metrics)


def header_from_proto(message: assistant_pb2.DeployHeader) -> Provenance:
    return Provenance(name=message.name, quantization=message.quantization, labels=tuple(message.labels),
                      job_id=message.job_id, trained_at_unix=message.trained_at_unix, metrics=dict(message.metrics))


def sampling_from_proto(request: assistant_pb2.GenerateRequest) -> Sampling:
    """The request's sampling options (0 means the default); ConfigError names a bad one."""
    if request.max_new_tokens > MAX_NEW_TOKENS:
        raise ConfigError(f"max_new_tokens must be at most {MAX_NEW_TOKENS}, got {request.max_new_tokens}")
    if len(request.stop) > MAX_STOP_STRINGS:
        raise ConfigError(f"stop: at most {MAX_STOP_STRINGS} strings, got {len(request.stop)}")
    return Sampling(max_new_tokens=request.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, temperature=request.temperature,
                    top_p=request.top_p or 1.0, seed=request.seed if request.HasField("seed") else None,
                    stop=tuple(request.stop))


def sampling_to_proto(sampling: Sampling) -> dict:
    """The GenerateRequest fields of `sampling` (keyword arguments)."""
    fields = dict(max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                  stop=list(sampling.stop))
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    return fields


def messages_from_proto(messages) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def messages_to_proto(messages: list[dict[str, str]]) -> list[assistant_pb2.ChatMessage]:
    return [assistant_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages]


def result_to_proto(result: Result) -> assistant_pb2.Classification:
    message = assistant_pb2.Classification(labels=[
        assistant_pb2.LabelProbability(label=label, index=index, probability=p) for label, index, p in result.labels])
    if result.score is not None:
        message.score = result.score
    return message


def result_from_proto(message: assistant_pb2.Classification) -> Result:
    return Result(tuple((lp.label, lp.index, lp.probability) for lp in message.labels),
                  message.score if message.HasField("score") else None)
