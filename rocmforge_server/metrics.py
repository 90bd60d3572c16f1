"""Prometheus metrics for GET /metrics, in a registry of their own (one per app, so that several
servers in one process, as in the tests, do not share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    def __init__(self, runner):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rocmforge_requests", "HTTP requests to /v1 endpoints, by path and status",
                                ["path", "status"], registry=r)
        self.sequences = Counter("rocmforge_sequences_finished", "Generated sequences (choices) by finish "
                                 "reason; 'cancelled' when the client left or the server stopped",
                                 ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("rocmforge_prompt_tokens", "Prompt tokens submitted", registry=r)
        self.completion_tokens = Counter("rocmforge_completion_tokens", "Tokens generated", registry=r)
        Gauge("rocmforge_queue_depth", "Sequences waiting for a free KV-cache slot",
              registry=r).set_function(lambda: runner.waiting)
        Gauge("rocmforge_active_slots", "KV-cache slots in use", registry=r).set_function(
            lambda: runner.active_slots)
        Gauge("rocmforge_slots", "KV-cache slots (--parallel)", registry=r).set(runner.engine.n_slots)
        self.ttft = Histogram("rocmforge_time_to_first_token_seconds", "Submit to first token, per sequence",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.tps = Histogram("rocmforge_generation_tokens_per_second", "Decode speed per sequence",
                             buckets=_TPS_BUCKETS, registry=r)

    def started(self, prompt_lengths: list[int]) -> None:
        self.prompt_tokens.inc(sum(prompt_lengths))

    def token(self) -> None:
        self.completion_tokens.inc()

    def finished(self, event) -> None:
        self.sequences.labels(event.finish_reason).inc()
        t = event.timings
        if t is not None and t.ttft_ms > 0:
            self.ttft.observe(t.ttft_ms / 1e3)
        if t is not None and t.gen_tokens_per_s > 0:
            self.tps.observe(t.gen_tokens_per_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
