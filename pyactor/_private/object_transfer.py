"""Moving objects between nodes' stores, on demand.

A process that needs an object held by another node asks its own node (`Fetch`); the node pulls
it from the holder (`PullObject`), which streams it back in chunks (`ObjectChunk`) written
straight into a new object in the local store (a holder that spilled the object to disk sends it
from its file: spilling.py). Concurrent fetches of one object share a single
transfer. The copy pulled here is evictable: the holder keeps the primary copy, so under memory
pressure a secondary copy may go and be pulled again later.

    worker --Fetch--> local node --PullObject--> holder node
                      local node <--ObjectChunk + raw payload, x N (CHUNK_BYTES each, paced
                                    by drain()); the payload goes from the holder's store to
                                    the socket and from the socket into our store, one copy each
    worker <--Reply-- local node (sealed in the local store)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from pyactor._private import protocol as P
from pyactor.exceptions import ObjectLostError, ObjectStoreFullError

logger = logging.getLogger("pyactor.transfer")

# Big enough that per-message costs vanish, small enough that one transfer does not hold the
# connection for long (the sender waits for drain() after each chunk). With raw payloads (one copy
# on each side) bench/transfer_bench.py measures 1.4-1.7 GB/s for 1 GiB into reused store pages,
# against 2.5 GB/s for a bare loopback socket; the msgpack-framed chunks before gave 0.4-0.5.
CHUNK_BYTES = 8 << 20


class _Incoming:
    __slots__ = ("object_id", "view", "received", "total", "done", "conn")

    def __init__(self, object_id: bytes, done: asyncio.Future):
        self.conn = None
        self.object_id = object_id
        self.view = None
        self.received = 0
        self.total = -1
        self.done = done


class ObjectTransfers:
    """One per node: serves pulls of local objects and pulls remote ones into the local store."""

    def __init__(self, store, connect: Callable[[bytes], Awaitable[Any]], spiller=None):
        self.store = store
        self.spiller = spiller  # spilling.Spiller: a spilled object is sent from its file
        self._connect = connect  # node_id -> awaitable Connection to that node
        self._fetching: dict[bytes, asyncio.Future] = {}
        self._incoming: dict[int, _Incoming] = {}
        self._request_ids = iter(range(1, 1 << 62))
        self.bytes_received = 0
        self.bytes_sent = 0

    # ------------------------------------------------------------------ holder side
    def on_pull(self, conn, message: P.PullObject) -> None:
        asyncio.get_running_loop().create_task(self._stream(conn, message))

    async def _stream(self, conn, message: P.PullObject) -> None:
        view = self.store.get(message.object_id)
        if view is None and self.spiller is not None:
            try:
                view = self.spiller.open_spilled(message.object_id)
            except ObjectLostError as error:
                logger.warning("%s", error)
        if view is None:
            if not conn.closed:  # else the puller already failed its request
                conn.send(P.encode(P.ObjectChunk(message.request_id, 0, -1, 0)))
            return
        try:
            total = view.nbytes
            if total == 0:
                conn.send(P.encode(P.ObjectChunk(message.request_id, 0, 0, 0)))
                return
            offset = 0
            while offset < total:
                end = min(offset + CHUNK_BYTES, total)
                conn.send_with_payload(P.encode(P.ObjectChunk(message.request_id, offset, total,
                                                              end - offset)), view[offset:end])
                self.bytes_sent += end - offset
                offset = end
                await conn.drain()
        except ConnectionError:
            pass
        finally:
            view.release()

    # ------------------------------------------------------------------ receiver side
    async def fetch(self, object_id: bytes, holder_node_id: bytes) -> None:
        """Make `object_id` present in the local store; raises ObjectLostError if it cannot."""
        if self.store.contains(object_id):
            return
        future = self._fetching.get(object_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._fetching[object_id] = future
            asyncio.get_running_loop().create_task(self._pull(object_id, holder_node_id, future))
        await asyncio.shield(future)

    async def _pull(self, object_id: bytes, holder_node_id: bytes,
                    future: asyncio.Future) -> None:
        request_id = next(self._request_ids)
        incoming = _Incoming(object_id, asyncio.get_running_loop().create_future())
        self._incoming[request_id] = incoming
        try:
            conn = incoming.conn = await self._connect(holder_node_id)
            conn.send(P.encode(P.PullObject(request_id, object_id)))
            await incoming.done
            future.set_result(None)
        except BaseException as error:  # noqa: BLE001 - every failure reaches the waiters
            if incoming.view is not None:
                incoming.view.release()
                self.store.abort(object_id)
            if not isinstance(error, (ObjectLostError, ObjectStoreFullError)):
                error = ObjectLostError(f"object {object_id.hex()} could not be fetched from "
                                        f"node {holder_node_id.hex()[:12]}: {error}")
            future.set_exception(error)
        finally:
            self._incoming.pop(request_id, None)
            self._fetching.pop(object_id, None)
            if not future.done():
                future.set_exception(ObjectLostError(f"transfer of {object_id.hex()} stopped"))
            future.exception()  # waiters may all be gone: the error is still seen as retrieved

    def on_chunk(self, conn, message: P.ObjectChunk) -> None:
        incoming = self._incoming.get(message.request_id)
        if incoming is None or incoming.done.done():
            self._discard_payload(conn, message.length)
            return
        try:
            if message.total < 0:
                raise ObjectLostError(f"object {incoming.object_id.hex()} is not in the "
                                      f"holder's store")
            if incoming.view is None:
                incoming.total = message.total
                if self.store.contains(incoming.object_id):  # arrived by another route
                    incoming.done.set_result(None)
                    return
                incoming.view = self.store.create_object(incoming.object_id, message.total,
                                                         evictable=True)
            if not 0 <= message.offset <= message.offset + message.length <= incoming.total:
                raise ObjectLostError(f"chunk [{message.offset}, +{message.length}) lies outside"
                                      f" object {incoming.object_id.hex()}")
        except BaseException as error:  # noqa: BLE001
            incoming.done.set_exception(error)
            self._discard_payload(conn, message.length)
            return
        if message.length == 0:
            self._chunk_in(incoming, 0)
            return
        conn.expect_payload(incoming.view[message.offset:message.offset + message.length],
                            lambda: self._chunk_in(incoming, message.length))

    def _chunk_in(self, incoming: _Incoming, length: int) -> None:
        if incoming.done.done():
            return
        incoming.received += length
        self.bytes_received += length
        if incoming.received >= incoming.total:
            try:
                incoming.view.release()
                incoming.view = None
                self.store.seal(incoming.object_id)
                incoming.done.set_result(None)
            except BaseException as error:  # noqa: BLE001
                incoming.done.set_exception(error)

    @staticmethod
    def _discard_payload(conn, length: int) -> None:
        """A chunk nobody wants still has its bytes on the wire: read them into scratch."""
        if length > 0:
            conn.expect_payload(memoryview(bytearray(length)), lambda: None)

    def on_connection_closed(self, conn) -> None:
        for incoming in self._incoming.values():
            if incoming.conn is conn and not incoming.done.done():
                incoming.done.set_exception(ConnectionError("the holder's connection closed"))
