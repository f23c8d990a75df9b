"""A batch lingers for company only while lingering has been bringing records."""

from __future__ import annotations

from keystate.processors.linger import Linger


def _waits(linger: Linger, batches: int, gained: int) -> int:
    waited = 0
    for _ in range(batches):
        if linger.wait_s() > 0:
            waited += 1
            linger.gained(gained)
    return waited


def test_a_client_alone_does_not_wait_except_for_the_probes() -> None:
    linger = Linger(2.0, probe=16)
    assert _waits(linger, 160, gained=0) == 10  # one batch in 16


def test_under_concurrency_every_batch_lingers_and_it_stops_when_company_leaves() -> None:
    linger = Linger(2.0, probe=16)
    _waits(linger, 15, gained=0)
    assert linger.wait_s() == 0.002  # the 16th batch probes ...
    linger.gained(4)  # ... and finds company
    assert _waits(linger, 50, gained=3) == 50
    alone = [linger.wait_s() > 0 and (linger.gained(0) or True) for _ in range(40)]
    assert alone[:3] == [True, True, True]  # the average decays over a few batches
    assert sum(alone[10:]) <= 2  # then only probes


def test_zero_turns_lingering_off() -> None:
    linger = Linger(0.0)
    linger.gained(100)
    assert [linger.wait_s() for _ in range(32)] == [0.0] * 32


def test_a_transaction_right_after_a_commit_waits_out_the_gap() -> None:
    linger = Linger(0.0, gap_ms=2.0)
    assert linger.gap_left_s(100.0) == 0.0  # nothing committed yet
    linger.committed(100.0)
    assert abs(linger.gap_left_s(100.0005) - 0.0015) < 1e-9
    assert linger.gap_left_s(100.0021) == 0.0
    assert linger.gap_left_s(105.0) == 0.0
