"""aisfs/request_wait.py: pyfuse3's wait for the next request returns at once when one is queued
and is trio's own wait otherwise; its read lock is taken without a scheduler round when free, but
not many times in a row."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pyfuse3
import pytest
import trio

from aisfs import request_wait


@pytest.fixture
def trio_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The fds trio's own wait_readable was asked to wait for."""
    waited: list[int] = []
    real = trio.lowlevel.wait_readable

    async def counting(fd: int) -> None:
        waited.append(fd)
        await real(fd)

    monkeypatch.setattr(trio.lowlevel, "wait_readable", counting)
    return waited


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setattr(pyfuse3, "trio", trio)  # (restored after the test)
    request_wait.install()
    return pyfuse3.trio  # type: ignore[attr-defined]


async def test_a_queued_request_is_taken_without_trio(
    installed: object, trio_waits: list[int], pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    b.send(b"request")
    for _ in range(3):  # (the poll object is made once per fd, then reused)
        await installed.lowlevel.wait_readable(a.fileno())  # type: ignore[attr-defined]
    assert trio_waits == []


async def test_no_request_yet_waits_with_trio_until_one_comes(
    installed: object, trio_waits: list[int], pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    woke = trio.Event()

    async def waiter() -> None:
        await installed.lowlevel.wait_readable(a.fileno())  # type: ignore[attr-defined]
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.05)
        assert not woke.is_set()
        assert trio_waits == [a.fileno()]
        b.send(b"request")
        with trio.fail_after(5):
            await woke.wait()


async def test_a_device_in_another_state_is_left_to_trio(
    installed: object, trio_waits: list[int], pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    b.close()  # readable, and hung up: trio's wait decides
    with trio.fail_after(5):
        await installed.lowlevel.wait_readable(a.fileno())  # type: ignore[attr-defined]
    assert trio_waits == [a.fileno()]


async def test_the_read_lock_lets_the_other_tasks_run_every_few_requests(
    installed: object,
) -> None:
    """Requests read back to back (the lock free each time): the other tasks run once per
    ``READS_IN_A_ROW`` of them, not once per request as with trio's Lock, nor never."""
    lock = installed.Lock()  # type: ignore[attr-defined]
    turns = 0
    reads = 5 * request_wait.READS_IN_A_ROW

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.sleep(0)  # (other has started)
        turns = 0
        for _ in range(reads):
            async with lock:
                pass
        # 5 yields; trio runs each batch of runnable tasks in a random order, so the other
        # task's turn due before the first acquire or after the last may fall either side
        assert 4 <= turns <= 6, turns
        nursery.cancel_scope.cancel()


async def test_a_request_task_takes_the_read_lock_again_while_another_waits_for_it(
    installed: object, pair: tuple[socket.socket, socket.socket],
) -> None:
    """pyfuse3's request loop in two tasks, as it runs (one reading, one more waiting for the
    lock), over requests queued back to back: the task that let go of the lock takes it again
    at once, so the requests go from one task to the other once per ``READS_IN_A_ROW``, not at
    every request (trio's Lock hands itself to the waiting task at every release)."""
    lock = installed.Lock()  # type: ignore[attr-defined]
    device, kernel = pair
    requests = 5 * request_wait.READS_IN_A_ROW
    handled_by: list[str] = []

    async def request_task(name: str) -> None:
        while True:
            async with lock:
                await installed.lowlevel.wait_readable(device.fileno())  # type: ignore[attr-defined]
            device.recv(1)
            handled_by.append(name)  # (a handler that waits for nothing)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request_task, "a")
        nursery.start_soon(request_task, "b")
        await trio.sleep(0.01)  # (one waits for a request, the other for the lock)
        kernel.send(b"r" * requests)
        with trio.fail_after(5):
            while len(handled_by) < requests:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    switches = sum(1 for x, y in itertools.pairwise(handled_by) if x != y)
    assert switches <= 2 * 5, handled_by


async def test_a_held_read_lock_is_waited_for(installed: object) -> None:
    lock = installed.Lock()  # type: ignore[attr-defined]
    order: list[str] = []

    async def holder(task_status: trio.TaskStatus[None]) -> None:
        async with lock:
            order.append("held")
            task_status.started()
            await trio.sleep(0.05)
            order.append("let go")

    async with trio.open_nursery() as nursery:
        await nursery.start(holder)
        with trio.fail_after(5):
            async with lock:
                order.append("taken")
    assert order == ["held", "let go", "taken"]


def test_everything_else_is_trio(installed: object) -> None:
    assert installed.ClosedResourceError is trio.ClosedResourceError  # type: ignore[attr-defined]
    assert installed.lowlevel.current_task is trio.lowlevel.current_task  # type: ignore[attr-defined]
