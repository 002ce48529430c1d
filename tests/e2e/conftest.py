"""System tests share the harness in the repository's `system/` folder."""

from __future__ import annotations

import sys
from pathlib import Path

SYSTEM = Path(__file__).resolve().parents[2] / "system"
if str(SYSTEM) not in sys.path:
    sys.path.insert(0, str(SYSTEM))
