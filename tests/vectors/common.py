"""What the vector generators share: paths, and the one seeded RNG (the shard cases draw from
it first, then the resolution cases, so the files come out the same on every run)."""

from __future__ import annotations

import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
TABLES = ROOT / "native" / "src" / "resolve" / "unicode_tables.rs"

RNG = random.Random(20261201)
