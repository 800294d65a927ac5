"""Conveyor's Prometheus metrics: HTTP requests, the domain counters of `services.metrics`,
and their exposition in one process or summed over a process group.

The metrics live in a registry of their own, not prometheus_client's global one (Flower
uses that). In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before prometheus_client
was imported, see `telemetry/multiproc.py`) a scrape reads every process's files instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from services import metrics
from services.metrics import CounterSpec

__all__ = ["CONTENT_TYPE_LATEST", "exposition", "install", "observe_request", "serve"]

PREFIX = "conveyor"
# Long-polls and live streams hold a request for up to 30 s; the rest answer in milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_LABELS = ("method", "route", "status")

_own = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by method, route (the URL rule) and status.",
    HTTP_LABELS,
    registry=_own,
)
HTTP_DURATION = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time to answer an HTTP request (a streamed body's time excluded), by method, route "
    "and status.",
    HTTP_LABELS,
    buckets=LATENCY_BUCKETS,
    registry=_own,
)


# Long-polls and live streams: each holds one of its web process's MAX_WAITING_REQUESTS
# slots while it waits. A process whose slots are all taken answers long-polls at once and
# refuses streams (503).
WAITING_REQUESTS = Gauge(
    f"{PREFIX}_waiting_requests",
    "Long-polls and live streams waiting now, summed over the live web processes.",
    registry=_own,
    multiprocess_mode="livesum",
)
WAITING_REFUSED = Counter(
    f"{PREFIX}_waiting_refused",
    "Long-polls answered at once and live streams refused, every waiting slot being taken.",
    registry=_own,
)


def _domain_counter(spec: CounterSpec) -> Counter:
    counter = Counter(f"{PREFIX}_{spec.name}", spec.help, spec.labels, registry=_own)
    for labels in spec.initial:
        counter.labels(**labels)
    return counter


DOMAIN: dict[str, Counter] = {spec.name: _domain_counter(spec) for spec in metrics.COUNTERS}


def _record(spec: CounterSpec, amount: float, labels: Mapping[str, str]) -> None:
    counter = DOMAIN[spec.name]
    (counter.labels(**labels) if spec.labels else counter).inc(amount)


def install() -> metrics.Sink:
    """Count this process's domain events (`services.metrics`) in Prometheus; the sink
    it replaces."""
    return metrics.install(_record)


# Both HTTP metrics' labelled children, per (method, route, status): prometheus_client's
# `labels()` converts and checks the values and takes a lock on every call, twice a request.
# The same children it hands out (it keeps them too); a bounded set, as the series are:
# methods are folded (api.metrics.method_label), routes are URL rules, statuses ours.
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, status)
    children = _request_children.get(key)
    if children is None:
        labels = (method, route, str(status))
        children = _request_children[key] = (
            HTTP_REQUESTS.labels(*labels),
            HTTP_DURATION.labels(*labels),
        )
    counter, duration = children
    counter.inc()
    duration.observe(seconds)


def multiprocess() -> bool:
    """Whether this process writes its samples to PROMETHEUS_MULTIPROC_DIR."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _samples() -> Collector:
    if not multiprocess():
        return _own
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class _Union(Collector):
    """Several collectors read as one registry by `generate_latest`."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self._collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


def exposition(*scraped: Collector) -> bytes:
    """The text format: every process's samples, then `scraped` collectors read now."""
    return generate_latest(_Union([_samples(), *scraped]))


def serve(port: int, address: str) -> None:
    """Answer scrapes on http://address:port/metrics from a daemon thread."""
    start_http_server(port, addr=address, registry=_Union([_samples()]))
