"""`python -m tests.fake_ollama --port 11434`: a fake Ollama to try `/ocr` without a GPU.

With `--vram-total-mib N` it keeps VRAM books as Ollama's scheduler would (Ollama's server/sched.go;
see `scheduler.py`); `--vram-file PATH` keeps the snapshot that `OCR_SIDECAR_VRAM_SOURCE=file:PATH`
reads, so drills through the real sidecar see the same numbers. Model sizes: `--model NAME=MIB`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from tests.fake_ollama import DEFAULT_LLM_MODEL, DEFAULT_OCR_MODEL, FakeModel, FakeOllama
from tests.fake_ollama.state import MIB

DEFAULT_SIZES_MIB = {DEFAULT_OCR_MODEL: 3300, DEFAULT_LLM_MODEL: 9000}


def _model(spec: str, text: str | None) -> FakeModel:
    """`NAME` or `NAME=MIB` (the size /api/ps and /api/tags show, and the VRAM it takes)."""
    name, _, size = spec.partition("=")
    mib = int(size) if size else DEFAULT_SIZES_MIB.get(name)
    if name == DEFAULT_LLM_MODEL:
        family, capabilities = "qwen3", ("completion",)
    else:
        family, capabilities = "qwen3vl", ("completion", "vision")
    if mib is None:
        return FakeModel(name, text=text)
    return FakeModel(name, size=mib * MIB, family=family, capabilities=capabilities, text=text)


def _traffic(spec: str) -> tuple[str, float, float]:
    model, every, duration = spec.split(",")
    return model, float(every), float(duration)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--model",
        action="append",
        help=f"NAME or NAME=MIB to install (repeatable; default {DEFAULT_OCR_MODEL}=3300, "
        f"{DEFAULT_LLM_MODEL}=9000)",
    )
    parser.add_argument("--text", help="what every model 'reads' on an image (default: derived)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per page (0.5)")
    parser.add_argument("--load-delay", type=float, default=1.0, help="fixed seconds per load (1)")
    parser.add_argument(
        "--load-rate-mib-s", type=float, default=None, help="a load also takes size / this rate"
    )
    parser.add_argument("--unload-s", type=float, default=0.0, help="VRAM release after unload")
    parser.add_argument("--parallel", type=int, default=1, help="requests per model at once")
    parser.add_argument(
        "--vram-total-mib", type=int, default=None, help="keep VRAM books for a GPU of N MiB"
    )
    parser.add_argument("--vram-file", default=None, help="write the VRAM snapshot JSON here")
    parser.add_argument("--base-mib", type=int, default=0, help="VRAM always in use (driver)")
    parser.add_argument(
        "--external-mib", type=int, default=0, help="VRAM another process (torch) holds"
    )
    parser.add_argument(
        "--llm-traffic",
        type=_traffic,
        default=None,
        metavar="MODEL,EVERY_S,DURATION_S",
        help="a priority model's request every EVERY_S seconds, each busy for DURATION_S",
    )
    args = parser.parse_args(argv)
    specs = args.model or [DEFAULT_OCR_MODEL, DEFAULT_LLM_MODEL]
    models = [_model(spec, args.text) for spec in specs]
    fake = FakeOllama(
        models,
        host=args.host,
        port=args.port,
        latency_s=args.latency,
        load_delay_s=args.load_delay,
        parallel=args.parallel,
        vram_total_mib=args.vram_total_mib,
        vram_file=args.vram_file,
        load_rate_mib_s=args.load_rate_mib_s,
        unload_s=args.unload_s,
        base_mib=args.base_mib,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fake:
        if args.external_mib:
            fake.set_external("external", args.external_mib)
        if args.llm_traffic is not None:
            model, every, duration = args.llm_traffic
            fake.llm_schedule(model, every_s=every, duration_s=duration)
        names = ", ".join(m.display_name for m in models)
        books = f", {args.vram_total_mib or 16311} MiB VRAM" if fake.scheduler.total_mib else ""
        print(f"fake Ollama {fake.version} on {fake.url} with {names}{books}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
