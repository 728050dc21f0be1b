"""The disconnect watcher of non-streaming runs and SSE bodies (``wire.http``), without HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from starlette.requests import Request

from flowhost.exceptions import RunCanceled
from flowhost.wire.http import WATCH_AFTER, _cancel_on_disconnect, until_disconnect

pytestmark = pytest.mark.anyio


class Client:
    """An ASGI ``receive`` whose next message is the disconnect, once ``leave()`` is called."""

    def __init__(self) -> None:
        self.calls = 0
        self.left = asyncio.Event()

    def leave(self) -> None:
        self.left.set()

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_work_shorter_than_the_delay_is_never_watched() -> None:
    client = Client()

    async def quick() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await _cancel_on_disconnect(client, quick) == "done"
    await asyncio.sleep(WATCH_AFTER * 2)  # the watcher would have started by now
    assert client.calls == 0


async def test_a_client_that_left_early_cancels_the_work_once_watching_starts() -> None:
    client = Client()
    client.leave()  # gone before the work began
    cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    start = time.monotonic()
    with pytest.raises(RunCanceled):
        await _cancel_on_disconnect(client, slow)
    assert cancelled.is_set()
    assert client.calls == 1
    assert time.monotonic() - start < 5  # at WATCH_AFTER, not after the work's 30 s


async def test_a_client_leaving_mid_run_cancels_it_and_other_cancellations_pass_through() -> None:
    client = Client()

    async def slow() -> None:
        await asyncio.sleep(30)

    task = asyncio.ensure_future(_cancel_on_disconnect(client, slow))
    await asyncio.sleep(WATCH_AFTER * 2)
    assert client.calls == 1  # watching
    client.leave()
    with pytest.raises(RunCanceled):
        await task

    other = Client()
    task = asyncio.ensure_future(_cancel_on_disconnect(other, slow))
    await asyncio.sleep(WATCH_AFTER * 2)
    task.cancel()  # from above (server shutdown): not the client's doing
    with pytest.raises(asyncio.CancelledError):
        await task


class Prepared:
    """What ``until_disconnect`` reads of a ``PreparedRun``."""

    def __init__(self, runs_inline: bool) -> None:
        self.runs_inline = runs_inline


@pytest.mark.parametrize("inline", [True, False])
async def test_a_run_that_runs_inline_is_not_watched(inline: bool) -> None:
    """An inline run never waits but to store its turn (here: a slow store): no watcher."""
    client = Client()
    client.leave()  # would cancel a watched run as soon as watching starts
    request = Request({"type": "http", "headers": []}, client)

    async def storing_the_turn() -> str:
        await asyncio.sleep(WATCH_AFTER * 3)
        return "stored"

    prepared: Any = Prepared(inline)
    if inline:
        assert await until_disconnect(request, storing_the_turn, prepared=prepared) == "stored"
        assert client.calls == 0
    else:
        with pytest.raises(RunCanceled):
            await until_disconnect(request, storing_the_turn, prepared=prepared)
        assert client.calls == 1
