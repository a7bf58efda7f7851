"""How many examples a property test draws: its own count, scaled for the other Pythons.

``scripts/pythons.sh`` runs the core of the suite on Python 3.10, 3.12 and 3.13 with
``ANYLOADER_EXAMPLES=0.2``. There the point is each interpreter's own behaviour (its
threads, signals, garbage collector and standard library), which a fifth of the
examples exercises; every count runs in full on 3.11.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("ANYLOADER_EXAMPLES", "1"))


def examples(count: int) -> int:
    """``count`` scaled by ``ANYLOADER_EXAMPLES`` (at least 3)."""
    return max(3, round(count * SCALE))
