"""``GET /metrics``: Prometheus metrics of every stream, read from ``StreamServer.describe()`` at scrape time.

Per stream (label ``stream``): windows ingested/failed, video frames dropped (scheduler and source),
retention per modality (label ``modality``), KV tokens/bytes, lag behind live, queries, source state and
re-opens; and ``omnizip_ttft_seconds``, a histogram of time to first token of every answer the streams give
(HTTP, MQTT, the web page: each session's ``answer_listeners``).
Each app has its own registry (several servers in one process never clash).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from omnizip_stream.query.base import Answer
from omnizip_stream.server.service import STATES, StreamServer

router = APIRouter()
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# stats() key -> (metric name, help); counters end in _total.
_COUNTERS = {
    "windows_ingested": ("omnizip_windows_ingested", "Windows ingested into the stream's cache"),
    "windows_failed": ("omnizip_windows_failed", "Windows that failed to ingest"),
    "windows_evicted": ("omnizip_windows_evicted", "Windows evicted from the cache"),
    "video_dropped": ("omnizip_video_frames_dropped", "Video frames shed by the scheduler (model behind live)"),
    "queries_answered": ("omnizip_queries_answered", "Questions answered"),
    "queries_failed": ("omnizip_queries_failed", "Questions that failed"),
    "queries_busy": ("omnizip_queries_busy", "Questions refused because the queue was full"),
}
_GAUGES = {
    "kv_tokens": ("omnizip_kv_tokens", "Tokens in the stream's KV cache"),
    "kv_bytes": ("omnizip_kv_bytes", "Bytes of the stream's KV cache"),
    "window_lag_s": ("omnizip_window_lag_seconds", "How far the cache is behind the live source"),
    "ingest_lag_s": ("omnizip_ingest_lag_seconds", "Time from a window's push to its ingestion (last window)"),
    "windows_queued": ("omnizip_windows_queued", "Windows waiting for the model"),
}
# The sources' StreamCounters that count losses: (modality, counter, reason label).
_SOURCE_DROPS = (("video", "video_dropped", "backpressure"), ("video", "video_late", "late"),
                 ("audio", "audio_dropped_samples", "backpressure"), ("audio", "audio_late_samples", "late"))


class ServerMetrics:
    """The metrics of one :class:`StreamServer` (collector + TTFT histogram) in their own registry."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StreamCollector(server))
        self.ttft = Histogram("omnizip_ttft_seconds", "Time to first token of the streams' answers",
                              ["stream"], buckets=TTFT_BUCKETS_S, registry=self.registry)
        for stream_id in server.ids():
            self._listen(stream_id)
        server.on_change.append(self._on_change)

    def _on_change(self, event: str, info: dict[str, Any]) -> None:
        if event == "added":
            self._listen(info["id"])
        elif event == "removed":
            with contextlib.suppress(KeyError):  # no answer was observed
                self.ttft.remove(info["id"])

    def _listen(self, stream_id: str) -> None:
        try:
            session = self.server.session(stream_id)
        except KeyError:  # removed meanwhile
            return
        session.answer_listeners.append(lambda answer: self.observe_answer(stream_id, answer))

    def observe_answer(self, stream_id: str, answer: Answer) -> None:
        """Record an answer's TTFT."""
        self.ttft.labels(stream=stream_id).observe(max(0.0, answer.ttft_ms / 1e3))

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class _StreamCollector(Collector):
    def __init__(self, server: StreamServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        infos = self.server.describe()
        streams = GaugeMetricFamily("omnizip_streams", "Streams served")
        streams.add_metric([], len(infos))
        yield streams
        state = GaugeMetricFamily("omnizip_stream_state", "1 for the stream's current state", labels=["stream", "state"])
        retries = CounterMetricFamily("omnizip_source_retries", "Re-opens of the stream's source", labels=["stream"])
        counters = {k: CounterMetricFamily(n, h, labels=["stream"]) for k, (n, h) in _COUNTERS.items()}
        gauges = {k: GaugeMetricFamily(n, h, labels=["stream"]) for k, (n, h) in _GAUGES.items()}
        retention = GaugeMetricFamily("omnizip_retention_ratio", "Share of the modality's tokens kept so far",
                                      labels=["stream", "modality"])
        source_video = CounterMetricFamily("omnizip_source_video_frames_dropped",
                                           "Video frames lost between the source and the windows",
                                           labels=["stream", "reason"])
        source_audio = CounterMetricFamily("omnizip_source_audio_samples_dropped",
                                           "Audio samples (16 kHz) lost between the source and the windows",
                                           labels=["stream", "reason"])
        for info in infos:
            sid = info["id"]
            try:
                stats: dict[str, Any] = self.server.session(sid).stats()
            except KeyError:  # removed during the scrape
                continue
            for s in STATES:
                state.add_metric([sid, s], 1.0 if info["state"] == s else 0.0)
            retries.add_metric([sid], float(info.get("retries") or 0))
            for key, counter in counters.items():
                if _number(stats.get(key)) is not None:
                    counter.add_metric([sid], float(stats[key]))
            for key, gauge in gauges.items():
                if _number(stats.get(key)) is not None:
                    gauge.add_metric([sid], float(stats[key]))
            for modality in ("audio", "video"):
                value = _number(stats.get(f"retention_{modality}"))
                if value is not None:
                    retention.add_metric([sid, modality], value)
            source = stats.get("source") or {}
            for modality, key, reason in _SOURCE_DROPS:
                if _number(source.get(key)) is not None:
                    dropped = source_video if modality == "video" else source_audio
                    dropped.add_metric([sid, reason], float(source[key]))
        yield state
        yield retries
        yield from counters.values()
        yield from gauges.values()
        yield retention
        yield source_video
        yield source_audio


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
