"""The champion lock on the real SeaweedFS: exclusive, bounded wait, stale leases taken over."""

from __future__ import annotations

import time
import uuid

import pytest

from tasks import storage
from tasks.storage import lock

pytestmark = pytest.mark.faults


@pytest.fixture
def lock_uri(local_stack) -> str:
    return f"s3://{local_stack.bucket}/faults/locks/{uuid.uuid4().hex[:8]}/_champion.lock"


def test_a_held_lock_makes_the_next_owner_fail_transient(lock_uri, outcome):
    first = lock.acquire(lock_uri, "run-a", lease_s=60, wait_s=1)
    outcome.faults = 1
    with pytest.raises(lock.LockTimeoutError, match="held by run-a"):
        lock.acquire(lock_uri, "run-b", lease_s=60, wait_s=1)
    lock.check_held(first)
    lock.release(first)
    assert not storage.exists(lock_uri)
    second = lock.acquire(lock_uri, "run-b", lease_s=60, wait_s=1)
    lock.release(second)
    outcome.survived = 1


def test_a_stale_lease_is_taken_over_and_its_owner_knows(lock_uri, outcome):
    crashed = lock.acquire(lock_uri, "crashed-run", lease_s=1, wait_s=1)
    time.sleep(1.5)  # its owner died: nobody renews or releases it
    outcome.faults = 1
    taker = lock.acquire(lock_uri, "run-b", lease_s=60, wait_s=5)
    with pytest.raises(lock.LockLostError):
        lock.check_held(crashed)
    lock.release(crashed)  # a late release by the old owner leaves the new lease alone
    lock.check_held(taker)
    assert storage.get_json(lock_uri)["owner"] == "run-b"
    lock.release(taker)
    outcome.survived = 1
