"""A process that launches DBOS but registers no workflow: ``python -m tests.driver_bare DB``.

Used to show what happens to runs whose workflow class this process does not know.
"""

from __future__ import annotations

import os
import sys
import time

from dbos import DBOS

import dbos_llama  # noqa: F401  (the library, but none of the test workflows)

if __name__ == "__main__":
    DBOS(
        config={
            "name": "dbos-llama-tests",
            "system_database_url": sys.argv[1],
            "application_version": os.environ["DBOS_LLAMA_APP_VERSION"],
        }
    )
    DBOS.launch()
    time.sleep(float(os.environ.get("DBOS_LLAMA_LAUNCH_ONLY", "2.5")))
    DBOS.destroy()
