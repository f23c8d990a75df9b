"""Only timers due within the horizon are scheduled in memory; the stores hold the rest (issue 8)."""

from __future__ import annotations

from pathlib import Path

from keystate.processors import changelog
from keystate.processors.partition import PartitionProcessor
from keystate.processors.state_machine import Config, RegisterTimer
from keystate.processors.store import Checkpoint, PartitionStore, StoreSettings
from keystate.processors.timer_window import TimerWindow


def _timer(iid: str, fire_at: int) -> tuple[bytes, bytes | None, list[tuple[str, bytes]] | None]:
    row = {"invocation_id": iid, "timer_kind": "PURGE", "entry_index": None, "attempt": None, "fire_at_ms": fire_at}
    return changelog.row_record("timers", (iid, "PURGE", 0), row)


def _proc(tmp_path: Path, fire_times: list[int]) -> PartitionProcessor:
    store = PartitionStore.open(tmp_path / "p0", 0, StoreSettings())
    store.apply([_timer(f"inv_{i}", t) for i, t in enumerate(fire_times)], Checkpoint("t", len(fire_times), 0))
    return PartitionProcessor(0, Config(), store)


def _fire_times(effects: list[tuple[int, object]]) -> list[int]:
    return [a.fire_at_ms for _, a in effects if isinstance(a, RegisterTimer)]


def test_only_timers_within_the_horizon_are_loaded_then_the_window_moves(tmp_path: Path) -> None:
    proc = _proc(tmp_path, [500, 1_500, 90_000, 86_400_000])
    window = TimerWindow(horizon_ms=60_000, refill_every_ms=10_000)
    assert _fire_times(window.load(proc, now_ms=1_000)) == [500, 1_500]
    # The next refill loads what came into the window, and nothing twice.
    assert _fire_times(window.refill([proc], now_ms=40_000)) == [90_000]
    assert window.refill([proc], now_ms=45_000) == []  # not time yet
    assert _fire_times(window.refill([proc], now_ms=86_400_000)) == [86_400_000]
    proc.store.close()


def test_a_batch_timer_beyond_the_window_is_left_to_the_refill(tmp_path: Path) -> None:
    proc = _proc(tmp_path, [])
    window = TimerWindow(horizon_ms=60_000)
    window.load(proc, now_ms=0)
    near = (0, RegisterTimer(("inv_a", "SLEEP", 1), 30_000, {"fire_at_ms": 30_000}))
    far = (0, RegisterTimer(("inv_b", "PURGE", 0), 3_600_000, {"fire_at_ms": 3_600_000}))
    assert window.admit([near, far]) == [near]
    proc.store.close()


def test_overdue_timers_come_in_pages(tmp_path: Path) -> None:
    proc = _proc(tmp_path, list(range(1, 26)))
    window = TimerWindow(horizon_ms=1_000, refill_every_ms=1, page=10)
    loaded: list[int] = []
    now = 1_000_000
    for _ in range(10):
        loaded += _fire_times(window.refill([proc], now_ms=now))
        now += 2
    assert sorted(set(loaded)) == list(range(1, 26))
    proc.store.close()
