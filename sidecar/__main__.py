"""`sidecar` console script: validate the configuration, then serve.

Validation happens before uvicorn binds the port, so a misconfigured sidecar never listens.
"""

from __future__ import annotations

import sys

import uvicorn

from sidecar.config import ConfigError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"sidecar: configuration error: {line}", file=sys.stderr)
        return 2

    # Imported after validation: a bad configuration fails in well under a second.
    from sidecar.app import create_app
    from sidecar.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Never let X-Forwarded-For rewrite the client address: network auth uses the TCP peer.
        proxy_headers=False,
        forwarded_allow_ips="",
        server_header=False,
        timeout_graceful_shutdown=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
