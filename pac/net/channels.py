"""Channels to peer daemons, one per address, reused across calls and closed by their owner."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from pac.limits import MESSAGE_LIMIT_BYTES, grpc_size_options

CHANNEL_OPTIONS = tuple(grpc_size_options(MESSAGE_LIMIT_BYTES))
ChannelFactory = Callable[[str], grpc.aio.Channel]


def insecure_channel(address: str) -> grpc.aio.Channel:
    """Plain-text channel: loopback development and tests only."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


class ChannelPool:
    def __init__(self, factory: ChannelFactory = insecure_channel) -> None:
        self._factory = factory
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._factory(address)
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
