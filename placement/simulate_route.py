"""Which shard member a simulated request goes to: the router's primary, in one place.

The router (``router/choose.py``, ``WarmPrimaryPolicy``) sends every request for a model
version to its *primary*: member ``blake2b(key) mod k`` of the tenant's shard (in selection
order), with ``key = "tenant/name:version"``; it spills to the other members only while the
primary has ``spill_at`` requests in flight from that router, and skips members that are down.
The simulator models the steady state with every worker up and no spill: each model lives on
exactly one worker, its primary. That makes each worker's request stream (and so its LRU
cache) independent of the others. Spill traffic would warm extra copies of the hottest models
and move some of their load; the simulator does not model it.

If the router's policy changes, change ``primary_index`` (tests/placement/test_simulate.py holds
it equal to the router's choice on a sample).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def primary_index(model_keys: Sequence[str], k: np.ndarray) -> np.ndarray:
    """Position of each model's primary in its tenant's shard: ``blake2b_64(key) mod k``.

    ``k[m]`` is the shard size of model m's tenant (> 0). Cost: one unkeyed 8-byte blake2b per
    model (~1 us); the digests are gathered into one buffer and reduced with numpy.
    """
    b2 = hashlib.blake2b
    digests = b"".join([b2(key.encode(), digest_size=8).digest() for key in model_keys])
    h = np.frombuffer(digests, dtype="<u8")
    return (h % k.astype(np.uint64)).astype(np.int64)
