from __future__ import annotations

import socket
import time

import anyio
import anyio.lowlevel
import pytest

from agentrt import ConfigError, RealClock, VirtualClock, current_clock, run


def test_sleep_jumps_instead_of_waiting() -> None:
    async def main() -> float:
        await anyio.sleep(3600)
        return current_clock().current_time()

    wall = time.perf_counter()
    assert run(main, clock=VirtualClock()) == 3600.0
    assert time.perf_counter() - wall < 1.0


def test_concurrent_sleepers_share_time() -> None:
    async def main() -> tuple[float, int]:
        async def worker() -> None:
            for _ in range(10):
                await anyio.sleep(0.5)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(worker)
        clock = current_clock()
        assert isinstance(clock, VirtualClock)
        return clock.current_time(), clock.jumps

    now, jumps = run(main, clock=VirtualClock())
    assert now == pytest.approx(5.0)
    # 20 tasks sleeping in lockstep: one jump per round, not one per task.
    assert jumps == 10


def test_timeouts_fire_at_the_virtual_deadline() -> None:
    async def main() -> tuple[bool, float]:
        with anyio.move_on_after(5) as scope:
            await anyio.sleep(100)
        return scope.cancelled_caught, current_clock().current_time()

    caught, now = run(main, clock=VirtualClock())
    assert caught
    assert now == 5.0


def test_fail_after_raises_timeout_error_in_virtual_time() -> None:
    async def main() -> None:
        with anyio.fail_after(1.5):
            await anyio.sleep(2)

    with pytest.raises(TimeoutError):
        run(main, clock=VirtualClock())


def test_cancelling_a_task_group_stops_sleepers_at_once() -> None:
    async def main() -> float:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 1000)
            tg.start_soon(anyio.sleep, 2000)
            await anyio.sleep(3)
            tg.cancel_scope.cancel()
        return current_clock().current_time()

    assert run(main, clock=VirtualClock()) == 3.0


def test_ready_io_is_delivered_without_jumping() -> None:
    async def main() -> tuple[bytes, float]:
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            b.send(b"ping")
            await anyio.wait_readable(a)
            return a.recv(4), current_clock().current_time()

    data, now = run(main, clock=VirtualClock(start_s=10))
    assert data == b"ping"
    assert now == 10.0


def test_ready_io_is_delivered_before_the_clock_jumps_to_a_timer() -> None:
    async def main() -> tuple[bytes, float, bool]:
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            b.send(b"ping")
            with anyio.move_on_after(5) as scope:
                await anyio.wait_readable(a)
            return a.recv(4), current_clock().current_time(), scope.cancelled_caught

    data, now, timed_out = run(main, clock=VirtualClock(start_s=10))
    assert data == b"ping"
    assert (now, timed_out) == (10.0, False)


def test_a_callback_from_another_thread_runs_before_the_clock_jumps() -> None:
    # Another thread queues its callback, then writes the loop's wake-up byte; a loop that has
    # just decided to wait for its next timer must not jump past a callback already queued.
    clock = VirtualClock()
    loop = clock.new_event_loop()
    try:
        loop.call_soon(lambda: None)  # queued as call_soon_threadsafe does, before the byte
        selector = loop._selector  # type: ignore[attr-defined]
        assert selector.select(5.0) == []  # the loop asks to wait 5 s for a timer
        assert (clock.current_time(), clock.jumps) == (0.0, 0)
    finally:
        loop.close()


def test_ready_io_is_delivered_while_callbacks_keep_the_loop_busy() -> None:
    # The selector skips most polls while callbacks are ready; a task that never lets the loop
    # go idle must not keep ready I/O from its reader.
    async def main() -> tuple[bytes, int, float]:
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            spins = 0
            received = anyio.Event()

            async def spin() -> None:
                nonlocal spins
                while not received.is_set() and spins < 10_000:
                    spins += 1
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                tg.start_soon(spin)
                await anyio.lowlevel.checkpoint()  # the spinner is running
                b.send(b"ping")
                await anyio.wait_readable(a)
                received.set()
            return a.recv(4), spins, current_clock().current_time()

    data, spins, now = run(main, clock=VirtualClock(start_s=10))
    assert data == b"ping"
    assert spins < 100  # polled within a few iterations, not after the spinner gave up
    assert now == 10.0


def test_start_and_epoch_mapping() -> None:
    clock = VirtualClock(start_s=100.0, epoch_s=1_700_000_000.0)
    assert clock.to_epoch_ns(100.0) == 1_700_000_000 * 10**9
    assert clock.to_epoch_ns(101.5) == 1_700_000_001_500_000_000


def test_advance_refuses_to_go_backwards() -> None:
    clock = VirtualClock()
    clock.advance(2)
    assert clock.current_time() == 2
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_current_clock_is_real_on_an_ordinary_loop() -> None:
    clock = current_clock()
    assert isinstance(clock, RealClock)
    assert not clock.is_virtual
    t0 = clock.current_time()
    await clock.sleep(0.01)
    assert clock.current_time() - t0 >= 0.009
    # Real epoch mapping tracks wall time.
    assert abs(clock.to_epoch_ns(clock.current_time()) - time.time_ns()) < 50_000_000


async def test_run_refuses_to_nest_inside_a_running_loop() -> None:
    async def noop() -> None: ...

    with pytest.raises(ConfigError, match="cannot be called from async code"):
        run(noop)


def test_a_virtual_deadlock_is_an_error_not_a_hang() -> None:
    from agentrt.clock import VirtualTimeStalled

    async def main() -> None:
        await anyio.sleep(2)
        await anyio.Event().wait()  # nobody will ever set it

    with pytest.raises(VirtualTimeStalled, match="virtual time stalled at t=2 s"):
        run(main, clock=VirtualClock(stall_timeout_s=0.2))
