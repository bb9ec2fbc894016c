"""The data plane's autoscaling rule, `RevisionRuntime.desired`, as a pure function of demand.

Instances, health checks and drains are exercised end to end with the real release in
test_emulator_api.py and test_emulator_lifecycle.py; this file pins the rule the docstring of
pipeline/emulator/dataplane.py states, in zero time.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.emulator.dataplane import RevisionRuntime
from pipeline.emulator.images import Image
from pipeline.emulator.records import RevisionPlan
from pipeline.emulator.router import READY, Slot

pytestmark = pytest.mark.unit

SCALE_IN_DELAY_S = 30.0  # the product's default


def revision(*, state="ready", active=True, min_i=0, max_i=10, concurrency=80, restore=0):
    plan = RevisionPlan(
        name="projects/p/locations/l/services/s/revisions/s-00001-abc",
        service="projects/p/locations/l/services/s",
        image=Image(
            ref="file:///r.tar.gz", tarball="/r.tar.gz", sha256="0" * 64, name="r", version="1"
        ),
        env=(),
        concurrency=concurrency,
        min_instances=min_i,
        max_instances=max_i,
        timeout_s=300.0,
        ready_path=None,
        ready_timeout_s=None,
        state=state,
        active=active,
        restore_instances=restore,
    )
    dp = SimpleNamespace(
        settings=SimpleNamespace(queue_timeout_s=10.0, scale_in_delay_s=SCALE_IN_DELAY_S),
        closing=False,
    )
    rev = RevisionRuntime(dp, plan)  # type: ignore[arg-type]
    if restore:
        rev.restored = True
    return rev


def ready_slot(rev: RevisionRuntime, ready_at: float) -> Slot:
    slot = Slot(rev.pool, f"i{len(rev.pool.slots)}")
    slot.state = READY
    slot.ready_at = ready_at
    rev.pool.slots.append(slot)
    rev.pool.ready.append(slot)
    return slot


def peaks(rev: RevisionRuntime, samples: list[tuple[float, int]]) -> int:
    """Feed (time, peak demand) samples as the ticker would; the last call's answer."""
    wanted = 0
    for now, demand in samples:
        rev.pool.peak = demand
        wanted = rev.desired(now)
    return wanted


@pytest.mark.parametrize(
    ("kwargs", "samples", "expected"),
    [
        ({}, [(0, 0)], 0),
        ({}, [(0, 1)], 1),
        ({}, [(0, 80)], 1),
        ({}, [(0, 81)], 2),
        ({"concurrency": 1}, [(0, 7)], 7),
        ({"max_i": 3}, [(0, 1000)], 3),
        ({"min_i": 2}, [(0, 0)], 2),
        # the peak over the last scale_in_delay_s counts, not the latest sample
        ({}, [(0, 200), (10, 0), (20, 0)], 3),
        ({}, [(0, 200), (10, 0), (SCALE_IN_DELAY_S + 1, 0)], 0),
        ({"state": "pending"}, [(0, 500)], 0),
        ({"state": "failed", "min_i": 2}, [(0, 500)], 0),
        ({"active": False}, [(0, 500)], 0),
        ({"restore": 4}, [(0, 0)], 4),
    ],
    ids=[
        "idle-scales-to-zero",
        "one-request-one-instance",
        "full-concurrency-one",
        "one-over-two",
        "concurrency-one",
        "capped-at-max",
        "floored-at-min",
        "peak-within-scale-in-delay",
        "peak-past-scale-in-delay",
        "pending-none",
        "failed-none-despite-min",
        "inactive-none",
        "restored-keeps-its-instances",
    ],
)
def test_desired_instances(kwargs, samples, expected):
    assert peaks(revision(**kwargs), samples) == expected


def test_a_young_instance_lives_at_least_the_scale_in_delay():
    rev = revision()
    ready_slot(rev, ready_at=100.0)
    ready_slot(rev, ready_at=100.0)
    assert peaks(rev, [(101.0, 0)]) == 2
    assert peaks(rev, [(100.0 + SCALE_IN_DELAY_S + 1, 0)]) == 0


def test_an_inactive_revision_with_queued_requests_keeps_its_live_instances():
    rev = revision(active=False)
    ready_slot(rev, ready_at=0.0)
    rev.pool.queue.append(SimpleNamespace())  # type: ignore[arg-type]
    assert rev.desired(50.0) == 1
    rev.pool.queue.clear()
    assert rev.desired(51.0) == 0
