"""Prometheus series of the server, vLLM's conventions under the ``sawt_`` prefix (docs/interfaces.md §7).

The engine reports `RequestStats` per finished request; `ServerMetrics.observe` turns them into series.
Gauges (running, waiting, slot usage) are read from the engine at scrape time by a collector, so they are
never stale. Everything lives on an injected `CollectorRegistry`: two apps in one process never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inference_server.engine import EngineLoad, Finished

# Buckets follow vLLM's: latency figures from milliseconds (TTFT of a short clip) to minutes (long audio).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 320, 640)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
_RTF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class _LoadCollector(Collector):
    def __init__(self, read: Callable[[], EngineLoad]):
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        load = self._read()
        yield GaugeMetricFamily("sawt_num_requests_running", "Requests in decode slots.", value=load.running)
        yield GaugeMetricFamily(
            "sawt_num_requests_waiting", "Requests waiting for a slot.", value=load.waiting
        )
        yield GaugeMetricFamily(
            "sawt_kv_cache_usage_ratio",
            "Fraction of KV-cache rows (decode slots) in use.",
            value=load.slot_usage,
        )


class ServerMetrics:
    """All server series on one registry."""

    def __init__(self, registry: CollectorRegistry, read_load: Callable[[], EngineLoad]):
        self.registry = registry
        h = {"registry": registry}
        self.ttft = Histogram(
            "sawt_time_to_first_token_seconds",
            "Arrival to first generated token.",
            buckets=_LATENCY_BUCKETS,
            **h,
        )
        self.itl = Histogram(
            "sawt_inter_token_latency_seconds", "Time between generated tokens.", buckets=_ITL_BUCKETS, **h
        )
        self.e2e = Histogram(
            "sawt_e2e_request_latency_seconds", "Arrival to last token.", buckets=_LATENCY_BUCKETS, **h
        )
        self.queue = Histogram(
            "sawt_request_queue_time_seconds", "Arrival to slot assignment.", buckets=_LATENCY_BUCKETS, **h
        )
        self.prefill = Histogram(
            "sawt_request_prefill_time_seconds",
            "Time in prefill (all windows).",
            buckets=_LATENCY_BUCKETS,
            **h,
        )
        self.decode = Histogram(
            "sawt_request_decode_time_seconds", "Time in decode (all windows).", buckets=_LATENCY_BUCKETS, **h
        )
        self.rtf = Histogram(
            "sawt_real_time_factor",
            "End-to-end latency divided by audio duration.",
            buckets=_RTF_BUCKETS,
            **h,
        )
        self.prompt_tokens = Counter("sawt_prompt_tokens", "Prompt tokens prefilled.", **h)
        self.generation_tokens = Counter("sawt_generation_tokens", "Tokens generated.", **h)
        self.audio_seconds = Counter("sawt_audio_seconds", "Seconds of audio transcribed.", **h)
        self.success = Counter(
            "sawt_request_success", "Finished requests by finish reason.", ["finished_reason"], **h
        )
        self.http = Counter(
            "sawt_http_requests", "HTTP responses by route and status.", ["route", "code"], **h
        )
        registry.register(_LoadCollector(read_load))

    def observe(self, result: Finished) -> None:
        """Records one finished request."""
        s = result.stats
        if s.scheduled is not None:
            self.queue.observe(s.scheduled - s.arrival)
        if s.first_token is not None:
            self.ttft.observe(s.first_token - s.arrival)
        for a, b in zip(s.token_times, s.token_times[1:], strict=False):
            self.itl.observe(b - a)
        if s.finished is not None:
            e2e = s.finished - s.arrival
            self.e2e.observe(e2e)
            if s.audio_seconds > 0:
                self.rtf.observe(e2e / s.audio_seconds)
        self.prefill.observe(s.prefill_seconds)
        self.decode.observe(s.decode_seconds)
        self.prompt_tokens.inc(s.prompt_tokens)
        self.generation_tokens.inc(s.generation_tokens)
        self.audio_seconds.inc(s.audio_seconds)
        self.success.labels(finished_reason=result.finish_reason).inc()
