"""`sidecar` console script: parse the flags, validate the configuration, then serve.

Validation happens before uvicorn binds the port, so a misconfigured sidecar never listens. Only
the standard library, pydantic and uvicorn are imported before the port is bound: FastAPI comes
with the app, and torch with the models, in a worker thread once /live already answers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sidecar.version import VERSION

EXIT_CONFIG_ERROR = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description=(
            "OCR, embeddings and reranking next to an LLM on one GPU. Configured by "
            "OCR_SIDECAR_* environment variables (see the README); the flags below are extras."
        ),
    )
    parser.add_argument("--version", action="version", version=f"sidecar {VERSION}")
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help=(
            "read the API key(s) from PATH, one per line, re-read when it changes (same as "
            "OCR_SIDECAR_API_KEY_FILE); when PATH does not exist, generate a key, write it there "
            "(mode 0600) and show it once on stderr"
        ),
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from sidecar.config import ConfigError, load_settings

    overrides: dict[str, object] = {}
    if args.key_file is not None:
        from sidecar.key_file import create_key_file, generated_key_notice

        key = create_key_file(args.key_file)
        if key is not None:
            print(generated_key_notice(args.key_file, key), file=sys.stderr, flush=True)
        overrides["api_key_file"] = args.key_file
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"sidecar: configuration error: {line}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    # Imported after validation: a bad configuration fails in well under a second.
    import uvicorn

    from sidecar.app import create_app
    from sidecar.observability import configure_logging
    from sidecar.server import AFTER_DRAIN_S, DrainingServer

    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Never let X-Forwarded-For rewrite the client address: network auth uses the TCP peer.
        proxy_headers=False,
        forwarded_allow_ips="",
        server_header=False,
        timeout_graceful_shutdown=AFTER_DRAIN_S,
    )
    DrainingServer(config, app.state.ctx.drain, settings.shutdown_grace_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
