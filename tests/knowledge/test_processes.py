"""Worker processes (``flowhost.knowledge.processes``) and documents read in them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from flowhost.exceptions import NotFound
from flowhost.knowledge import KnowledgeService, ingest, processes
from flowhost.knowledge.processes import (
    CallTimedOut,
    Processes,
    ProcessesStopped,
    ProcessesUnavailable,
)

pytestmark = pytest.mark.anyio

Started = Callable[..., AbstractAsyncContextManager[KnowledgeService]]  # conftest's `started`


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _announce_then_hang(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(3600)


def _die_after(seconds: float) -> None:
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would


def _fail() -> None:
    raise ValueError("the function's own error")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except OSError:  # gone (before the open, or between the open and the read)
        return False


async def _until_dead(pid: int) -> bool:
    """Polls the process table (a killed process is reaped by its pool's thread)."""
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not _alive(pid)


async def test_a_call_past_its_time_limit_is_stopped_with_its_process(tmp_path: Path) -> None:
    # the limit covers a process's start too: 3 s, for a loaded machine
    procs = Processes(1, what="testing", time_limit=3.0)
    try:
        await procs.call(os.getpid)  # the process is up: the limit is the call's own
        marker = tmp_path / "pid"
        with pytest.raises(CallTimedOut, match="testing took longer than 3 s and was stopped"):
            await procs.call(_announce_then_hang, str(marker))
        assert await _until_dead(int(marker.read_text()))
        assert not procs.running
        assert await procs.call(_pid_after, 0) != int(marker.read_text())  # a new process
    finally:
        await procs.close()


async def test_calls_wait_for_a_free_process_not_in_the_pool() -> None:
    """More calls than processes: each one's time starts when a process takes it (three
    calls of 1.8 s on two processes take 3.6 s; the third must not time out at 3 s)."""
    procs = Processes(2, what="testing", time_limit=3.0)
    try:
        await asyncio.gather(procs.call(os.getpid), procs.call(os.getpid))
        pids = await asyncio.gather(*(procs.call(_pid_after, 1.8) for _ in range(3)))
        assert len(set(pids)) == 2
        assert os.getpid() not in pids
    finally:
        await procs.close()


def _oom_score_adj() -> str:
    with open("/proc/self/oom_score_adj") as f:
        return f.read().strip()


@pytest.mark.skipif(not Path("/proc/self/oom_score_adj").exists(), reason="Linux only")
async def test_the_out_of_memory_killer_takes_a_worker_before_the_server() -> None:
    procs = Processes(1, what="testing")
    try:
        assert await procs.call(_oom_score_adj) == "1000"
        assert _oom_score_adj() != "1000"
    finally:
        await procs.close()


def _allocate(megabytes: int) -> int:
    return len(bytearray(megabytes * 1024 * 1024))


@pytest.mark.skipif(not Path("/proc/self/oom_score_adj").exists(), reason="Linux only")
async def test_a_call_past_the_memory_limit_raises_memory_error_and_the_process_stays() -> None:
    procs = Processes(1, what="testing", memory_limit=256 * 1024 * 1024)
    try:
        pid = await procs.call(os.getpid)
        with pytest.raises(MemoryError):
            await procs.call(_allocate, 512)
        assert await procs.call(_allocate, 16) == 16 * 1024 * 1024
        assert await procs.call(os.getpid) == pid  # the same process, not a new one
        assert len(bytearray(512 * 1024 * 1024)) > 0  # the server itself has no such limit
    finally:
        await procs.close()


async def test_a_call_whose_process_dies_fails_alone() -> None:
    """Each call has a process of its own: one that dies (twice: it is retried once) fails
    with ProcessesStopped, and a call running beside it is not disturbed."""
    procs = Processes(2, what="testing", time_limit=60.0)
    try:
        await asyncio.gather(procs.call(os.getpid), procs.call(os.getpid))
        dying = asyncio.ensure_future(procs.call(_die_after, 0.2))
        innocent = asyncio.ensure_future(procs.call(_pid_after, 1.0))
        with pytest.raises(ProcessesStopped, match="the testing process stopped"):
            await dying
        assert await innocent != os.getpid()
        assert await procs.call(_pid_after, 0) != os.getpid()  # and the pool goes on
    finally:
        await procs.close()


async def test_when_the_system_refuses_a_process_none_stays_half_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[ProcessPoolExecutor] = []

    def second_refused(*args: Any, **kwargs: Any) -> ProcessPoolExecutor:
        if opened:
            raise OSError("no more processes")
        opened.append(ProcessPoolExecutor(*args, **kwargs))
        return opened[0]

    killed: list[ProcessPoolExecutor] = []
    kill = processes._kill

    def record_kill(executor: ProcessPoolExecutor) -> None:
        killed.append(executor)
        kill(executor)

    monkeypatch.setattr(processes, "ProcessPoolExecutor", second_refused)
    monkeypatch.setattr(processes, "_kill", record_kill)
    procs = Processes(2, what="testing")
    with pytest.raises(ProcessesUnavailable, match="no testing process can start"):
        await procs.call(os.getpid)
    assert not procs.running
    assert killed == opened  # the one that did start is stopped


async def test_the_functions_own_error_is_raised_and_the_process_stays() -> None:
    procs = Processes(1, what="testing", time_limit=5.0)
    try:
        first = await procs.call(os.getpid)
        with pytest.raises(ValueError, match="the function's own error"):
            await procs.call(_fail)
        assert await procs.call(os.getpid) == first
    finally:
        await procs.close()


async def test_a_cancelled_call_with_a_limit_is_stopped(tmp_path: Path) -> None:
    procs = Processes(1, what="testing", time_limit=60.0)
    try:
        marker = tmp_path / "pid"
        call = asyncio.ensure_future(procs.call(_announce_then_hang, str(marker)))
        while not marker.exists() or not marker.read_text():
            await asyncio.sleep(0.01)  # polls for the call to be running in its process
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        assert await _until_dead(int(marker.read_text()))
        assert await procs.call(os.getpid) != int(marker.read_text())
    finally:
        await procs.close()


async def test_documents_are_read_in_a_process_and_one_read_too_long_fails(
    started: Started,
) -> None:
    async with started(parse_processes=1) as svc:
        assert svc.parsers is not None
        base = await svc.create_base("b")
        doc, _, _ = await svc.add_document(base.pipeline_id, "a.md", b"# Kettles\n\nThey boil.")
        await svc.wait_idle()
        assert (await svc.get_document(doc.file_id)).status == "completed"
        assert svc.parsers.running  # read there, not in a thread
        svc.parsers.time_limit = 0.001  # no document is read that fast, process start included
        await svc.parsers.close()
        slow, job, _ = await svc.add_document(base.pipeline_id, "b.txt", b"Kettles whistle.")
        assert job is not None
        await svc.wait_idle()
        failed = await svc.get_job(job.job_id)
        assert failed.status == "failed"
        assert failed.error == "reading the document took longer than 0.001 s and was stopped"
        assert (await svc.get_document(slow.file_id)).status == "failed"


def _read_greedily(base: object, doc: object, content: bytes) -> None:
    """Stands in for ``units_of``: a document that expands past any reasonable memory."""
    _allocate(1024)


@pytest.mark.skipif(not Path("/proc/self/oom_score_adj").exists(), reason="Linux only")
async def test_a_document_needing_more_than_parse_memory_mb_fails_saying_so(
    started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "units_of", _read_greedily)
    async with started(parse_processes=1, parse_memory_mb=256) as svc:
        base = await svc.create_base("b")
        doc, job, _ = await svc.add_document(base.pipeline_id, "a.md", b"# Kettles")
        assert job is not None
        await svc.wait_idle()
        failed = await svc.get_job(job.job_id)
        assert failed.status == "failed"
        assert failed.error == (
            "reading the document needed more than the 256 MB of memory a reading process "
            "may use (PARSE_MEMORY_MB)"
        )
        assert (await svc.get_document(doc.file_id)).status == "failed"


MARKER_ENV = "FLOWHOST_TEST_READ_MARKER"


def _read_slowly(base: object, doc: object, content: bytes) -> None:
    """Stands in for ``units_of`` in a parsing process: announces its pid, then hangs."""
    Path(os.environ[MARKER_ENV]).write_text(str(os.getpid()))
    time.sleep(3600)


@pytest.mark.parametrize("delete", ["document", "base"])
async def test_deleting_a_document_being_read_stops_its_process(
    started: Started,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    delete: str,
) -> None:
    marker = tmp_path / "reading"
    monkeypatch.setenv(MARKER_ENV, str(marker))  # spawned processes inherit the environment
    monkeypatch.setattr(ingest, "units_of", _read_slowly)
    async with started(parse_processes=1) as svc:
        base = await svc.create_base("b")
        doc, job, _ = await svc.add_document(base.pipeline_id, "a.md", b"# Kettles")
        assert job is not None
        while not marker.exists() or not marker.read_text():
            await asyncio.sleep(0.02)  # polls for the read to be under way
        if delete == "document":
            await svc.delete_document(doc.file_id)
        else:
            await svc.delete_base(base.pipeline_id)
        assert await _until_dead(int(marker.read_text()))
        with pytest.raises(NotFound):
            await svc.get_job(job.job_id)


async def test_where_no_process_can_start_documents_are_read_in_threads(
    started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("processes are not allowed here")

    monkeypatch.setattr(processes, "ProcessPoolExecutor", refuse)
    async with started(parse_processes=1) as svc:
        base = await svc.create_base("b")
        doc, _, _ = await svc.add_document(base.pipeline_id, "a.md", b"# Kettles\n\nThey boil.")
        await svc.wait_idle()
        assert (await svc.get_document(doc.file_id)).status == "completed"
        assert svc.parsers is None  # threads from now on


async def test_without_parse_processes_documents_are_read_in_threads(started: Started) -> None:
    async with started(parse_processes=0) as svc:
        assert svc.parsers is None
        base = await svc.create_base("b")
        doc, _, _ = await svc.add_document(base.pipeline_id, "a.md", b"# Kettles\n\nThey boil.")
        await svc.wait_idle()
        assert (await svc.get_document(doc.file_id)).status == "completed"


_OWNER = """
import asyncio, os
from flowhost.knowledge.processes import Processes

async def main():
    procs = Processes(1, what="testing")
    print(await procs.call(os.getpid), flush=True)
    await asyncio.Event().wait()

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_killed_server_leaves_no_worker_process(tmp_path: Path) -> None:
    """SIGKILL gives the server no chance to stop its processes: they notice and exit."""
    import subprocess
    import sys

    script = tmp_path / "owner.py"  # a file: spawn re-imports the parent's main module
    script.write_text(_OWNER)
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True
    ) as owner:
        assert owner.stdout is not None
        worker = int(owner.stdout.readline())
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)  # polls the process table, not a fixed wait
    assert not _alive(worker)
