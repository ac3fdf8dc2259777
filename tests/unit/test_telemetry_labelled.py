"""labelled() is metric.labels() looked up once: same child, counts land where Prometheus reads them."""

from __future__ import annotations

from homeskillet.telemetry import STRIKES, labelled


def test_labelled_returns_the_prometheus_child_and_counts_through_it() -> None:
    child = labelled(STRIKES, pool="unit/labelled", outcome="strike_ok")
    assert child is STRIKES.labels(pool="unit/labelled", outcome="strike_ok")
    assert labelled(STRIKES, pool="unit/labelled", outcome="strike_ok") is child
    before = child._value.get()
    labelled(STRIKES, pool="unit/labelled", outcome="strike_ok").inc()
    assert STRIKES.labels(pool="unit/labelled", outcome="strike_ok")._value.get() == before + 1
    assert labelled(STRIKES, pool="unit/labelled", outcome="strike_failed") is not child
