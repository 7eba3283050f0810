"""Gauges read when Prometheus scrapes: VRAM, loaded models, Ollama up.

These are states, not events, so nothing sets them ahead of time; the collector reads them from
the app context on each scrape (the VRAM sample is in memory, see `sidecar.vram_sampler`). A
figure nobody knows is left out rather than shown as 0: an unknown VRAM is not an empty GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sidecar.context import AppContext


class RuntimeCollector(Collector):
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._vram()
        yield self._models()
        if self.ctx.status.ollama_up is not None:
            yield GaugeMetricFamily(
                "sidecar_ollama_up",
                "1 when the last probe reached Ollama, 0 when it did not",
                value=1 if self.ctx.status.ollama_up else 0,
            )

    def _vram(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self.ctx.vram.snapshot()
        if snapshot is None:
            return
        yield GaugeMetricFamily(
            "sidecar_vram_used_mib", "GPU memory used (latest sample)", value=snapshot.used_mib
        )
        yield GaugeMetricFamily(
            "sidecar_vram_total_mib", "GPU memory total (latest sample)", value=snapshot.total_mib
        )

    def _models(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "sidecar_model_loaded",
            "1 when the sidecar's model of this kind is loaded and serving",
            labels=["model", "kind"],
        )
        for kind, info in self.ctx.retrieval.health().items():
            family.add_metric([str(info.get("name", "")), kind], 1 if info.get("loaded") else 0)
        return family
