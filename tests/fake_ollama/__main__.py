"""`python -m tests.fake_ollama --port 11434`: a fake Ollama to try `/ocr` without a GPU."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from tests.fake_ollama import DEFAULT_LLM_MODEL, DEFAULT_OCR_MODEL, FakeModel, FakeOllama


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--model",
        action="append",
        help=f"model tag to install (repeatable; default {DEFAULT_OCR_MODEL}, {DEFAULT_LLM_MODEL})",
    )
    parser.add_argument("--text", help="what every model 'reads' on an image (default: derived)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per page (0.5)")
    parser.add_argument("--load-delay", type=float, default=1.0, help="seconds per load (1.0)")
    parser.add_argument("--parallel", type=int, default=1, help="requests per model at once")
    args = parser.parse_args(argv)
    names = args.model or [DEFAULT_OCR_MODEL, DEFAULT_LLM_MODEL]
    fake = FakeOllama(
        [FakeModel(name, text=args.text) for name in names],
        host=args.host,
        port=args.port,
        latency_s=args.latency,
        load_delay_s=args.load_delay,
        parallel=args.parallel,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fake:
        print(f"fake Ollama {fake.version} on {fake.url} with {', '.join(names)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
