"""pac.v1 common.proto <-> the product's own types: what a daemon says about itself (NodeInfo)."""

from __future__ import annotations

from typing import Any

from pac.discovery.records import API_VERSION, DeviceRecord
from pac.v1 import common_pb2


def node_info(facts: dict[str, Any]) -> common_pb2.NodeInfo:
    return common_pb2.NodeInfo(api_version=API_VERSION, **facts)


def info_to_dict(info: common_pb2.NodeInfo) -> dict[str, Any]:
    fields = common_pb2.NodeInfo.DESCRIPTOR.fields
    return {f.name: getattr(info, f.name) for f in fields}


def record_from_info(info: common_pb2.NodeInfo, host: str, port: int, source: str) -> DeviceRecord:
    return DeviceRecord(info.node_id, info.cluster_id, host, port, info.api_version,
                        info.memory_budget_bytes, info.accelerator, info.hostname, source, info.revocation_number)
