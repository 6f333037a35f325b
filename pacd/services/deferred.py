"""Servicers whose code is imported on their first call, so that an idle daemon holds no PyTorch.

The training services (Stage, TensorStream, Collective) need PyTorch and the training code, about 150 MB
of a daemon's resident memory; most of the time a device trains nothing. Their modules register a
`Deferred` in place of the servicer: every method of the service answers by importing the real servicer
(`module:Class`, built with the daemon) the first time any of them is called, in a worker thread so the
event loop keeps serving meanwhile, then handing the call on. A subclass may answer some methods itself
(those that need no training code while no job is held).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time

import grpc

from pac.models.imports import MODEL_CODE

log = logging.getLogger(__name__)

# One import of the training code at a time in this process (the warm-up thread, the first calls of the
# training services, loading a model): transformers' lazy modules are not safe to import from two threads
# at once.
IMPORTS = MODEL_CODE


class Deferred:
    def __init__(self, daemon, servicer: str, service) -> None:
        """`servicer`: "module:Class" of the real servicer (Class(daemon)); `service`: its ServiceDescriptor."""
        self.daemon, self._path, self._name = daemon, servicer, service.full_name
        self._real = None
        self._loading: asyncio.Lock | None = None
        for method in service.methods:
            if not hasattr(type(self), method.name):  # answered here, not by the deferred servicer
                setattr(self, method.name, self._deferred(method.name, method.server_streaming))

    @property
    def loaded(self) -> bool:
        return self._real is not None

    def _import(self):
        started = time.perf_counter()
        module, _, name = self._path.partition(":")
        with IMPORTS:
            servicer = getattr(importlib.import_module(module), name)
        log.info("%s: its code imported on first use in %.1f s", self._name, time.perf_counter() - started)
        return servicer

    async def real(self, context: grpc.aio.ServicerContext):
        """The real servicer, imported and built by the first call that needs it."""
        if self._real is None:
            self._loading = self._loading or asyncio.Lock()
            async with self._loading:
                if self._real is None:
                    try:
                        self._real = (await asyncio.to_thread(self._import))(self.daemon)
                    except Exception as error:  # a broken install: every call says so, the daemon keeps serving
                        log.exception("%s: starting %s failed", self._name, self._path)
                        await context.abort(grpc.StatusCode.INTERNAL,
                                            f"{self._name} cannot start on this device: {error}")
        return self._real

    def _deferred(self, name: str, streaming: bool):
        if streaming:
            async def method(request, context):
                async for item in getattr(await self.real(context), name)(request, context):
                    yield item
        else:
            async def method(request, context):
                return await getattr(await self.real(context), name)(request, context)
        method.__name__ = method.__qualname__ = name
        return method
