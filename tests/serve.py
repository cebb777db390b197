"""``python -m tests.serve DB_URL PORT``: serve `tests.served_app` until killed."""

from __future__ import annotations

import asyncio
import sys

from tests.served_app import build

if __name__ == "__main__":
    url, port = sys.argv[1], int(sys.argv[2])
    server = build(url)
    asyncio.run(server.serve(host="127.0.0.1", port=port, uvicorn_config={"log_level": "warning"}))
