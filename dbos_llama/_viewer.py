"""``dbos-llama ui``: a web viewer of durable runs over the system database.

This module needs nothing beyond the base install; the app itself
(`_viewer_app`, Starlette and uvicorn) is imported only when the viewer starts, so
a missing ``server`` extra is a clear message.
"""

from __future__ import annotations

import ipaddress

from .errors import DurableError

#: Where the viewer listens by default.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8040


class ViewerSetupError(DurableError):
    """The viewer cannot start as asked (missing extra, non-local bind without a token)."""


def is_local(host: str) -> bool:
    """Whether ``host`` is a loopback address (only this machine can connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """`ViewerSetupError` for a non-local bind without a token."""
    if not is_local(host) and not token:
        raise ViewerSetupError(
            f"--host {host} lets other machines reach the viewer, which can answer, "
            "cancel and fork runs: give --token TOKEN (then open it with ?token=TOKEN), "
            f"or bind to {DEFAULT_HOST}."
        )


def serve(
    db: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None
) -> None:
    """Serve the viewer on ``host:port`` until interrupted."""
    check_bind(host, token)
    try:
        import uvicorn

        from ._viewer_app import make_app
    except ImportError as error:
        raise ViewerSetupError(
            f"The web viewer needs Starlette and uvicorn ({error}): "
            'pip install "dbos-llama[server]"'
        ) from error
    shown = f"http://{host}:{port}/" + ("?token=..." if token else "")
    print(f"dbos-llama viewer on {shown} (Ctrl+C stops it)", flush=True)
    uvicorn.run(make_app(db, token), host=host, port=port, log_level="warning")
