"""Makes ``examples.flows`` importable when a script in examples/ is run directly.

The workflows live in that package (not in the script, ``__main__``), so their
recorded names and values are the same in every process: ``dbos-llama runs show``,
run from the project root, imports them and shows every step's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
