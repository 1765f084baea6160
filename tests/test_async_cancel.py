"""asyncio-native cancellation: cancelling the asyncio task that awaits a ref cancels the
remote work, as the user sees it (a task that would write a file later must not write it)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import pyactor as pa

from conftest import wait_until

GET_TIMEOUT_S = 30


@pa.remote
def write_later(path, started, delay_s=1.0):
    """Marks that it started, then writes `path` after a delay (unless cancelled)."""
    open(started, "w").close()
    time.sleep(delay_s)
    open(path, "w").close()
    return "written"


@pa.remote
def parent_of_writer(path, started):
    """Starts a child that would write `path`, and waits for it."""
    return pa.get(write_later.remote(path, started))


@pa.remote
def fail_soon():
    raise RuntimeError("sibling failed")


@pa.remote
class AsyncWriter:
    async def write_later(self, path, started, delay_s=1.0):
        open(started, "w").close()
        await asyncio.sleep(delay_s)
        open(path, "w").close()
        return "written"

    async def via_task(self, path, started):
        """Awaits a remote task: cancelling this call must cancel that task too."""
        return await write_later.remote(path, started)

    async def ping(self):
        return "pong"


def _paths(tmp_path, name="out"):
    return str(tmp_path / name), str(tmp_path / f"{name}.started")


async def _started(path):
    while not os.path.exists(path):
        await asyncio.sleep(0.01)


def _never_written(path, within_s=1.5):
    """The file does not appear within the remote task's delay plus a margin."""
    return not wait_until(lambda: os.path.exists(path), within_s)


async def test_task_cancel_cancels_the_remote_task(pa_module, tmp_path):
    out, started = _paths(tmp_path)
    await _cancel_once_started(write_later.remote(out, started), started)
    assert _never_written(out)


async def _await(ref):
    return await ref


async def _cancel_once_started(ref, started):
    """Await `ref` in an asyncio task and cancel that task once the remote work started."""
    waiter = asyncio.create_task(_await(ref))
    await asyncio.wait_for(_started(started), GET_TIMEOUT_S)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_wait_for_timeout_cancels_the_remote_task(pa_module, tmp_path):
    out, started = _paths(tmp_path)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(write_later.remote(out, started), 0.3)
    assert _never_written(out)


async def test_taskgroup_sibling_failure_cancels_the_remote_tasks(pa_module, tmp_path):
    """Leaving `async with TaskGroup` after a failure leaves no remote work running."""
    out, started = _paths(tmp_path)
    with pytest.raises(ExceptionGroup) as group:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_await(write_later.remote(out, started)))
            await asyncio.wait_for(_started(started), GET_TIMEOUT_S)
            tg.create_task(_await(fail_soon.remote()))
    assert group.value.subgroup(RuntimeError) is not None
    assert _never_written(out)


async def test_cancel_reaches_the_tasks_a_task_started(pa_module, tmp_path):
    """The remote task's own child task is cancelled too (recursively)."""
    out, started = _paths(tmp_path)
    await _cancel_once_started(parent_of_writer.remote(out, started), started)
    assert _never_written(out)


async def test_cancelled_await_cancels_an_async_actor_call(pa_module, tmp_path):
    """The call on the async actor stops; the actor keeps serving."""
    out, started = _paths(tmp_path)
    actor = AsyncWriter.remote()
    ref = actor.write_later.remote(out, started)
    await asyncio.wait_for(_started(started), GET_TIMEOUT_S)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(_await(ref), 0.2)
    assert _never_written(out)
    with pytest.raises(pa.TaskCancelledError):
        pa.get(ref, timeout=GET_TIMEOUT_S)
    assert await actor.ping.remote() == "pong"


async def test_cancelled_actor_call_cancels_what_it_awaits(pa_module, tmp_path):
    """An async actor call awaiting a remote task: cancelling the call cancels that task."""
    out, started = _paths(tmp_path)
    actor = AsyncWriter.remote()
    await _cancel_once_started(actor.via_task.remote(out, started), started)
    assert _never_written(out)


async def test_shield_keeps_the_remote_task(pa_module, tmp_path):
    """asyncio.shield is the way to stop waiting without cancelling the work."""
    out, started = _paths(tmp_path)
    ref = write_later.remote(out, started, 0.2)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(_await(ref)), 0.05)
    assert await ref == "written"
    assert os.path.exists(out)


def test_cancelling_ref_future_cancels_the_remote_task(pa_module, tmp_path):
    """ref.future().cancel() cancels the remote task like a cancelled await does."""
    out, started = _paths(tmp_path)
    ref = write_later.remote(out, started)
    future = ref.future()
    assert wait_until(lambda: os.path.exists(started), GET_TIMEOUT_S)
    assert future.cancel()
    assert _never_written(out)
    with pytest.raises(pa.TaskCancelledError):
        pa.get(ref, timeout=GET_TIMEOUT_S)
