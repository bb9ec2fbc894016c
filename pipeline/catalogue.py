"""The Phase 2 weeks, said once: their order, gates, titles, task aliases and default envs.

Phases, the ledger, reports and tasks read them from here, so a renamed gate or a new week is
one edit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Week:
    key: str  # "week3": the phase name in receipts, the ledger and `[gates.*]`
    gate: str  # "Gate 2"
    title: str  # "live integration"
    alias: str  # the task's other name: phase2.live
    default_env: str  # the env `phase2.all` uses for it

    @property
    def heading(self) -> str:
        """ "week 3 · live integration", as a phase's live view opens."""
        return f"week {self.key.removeprefix('week')} · {self.title}"


WEEKS = (
    Week("week2", "Gate 1", "sandbox rehearsal", "sandbox", "ccw-sandbox"),
    Week("week3", "Gate 2", "live integration", "live", "local"),
    Week("week4", "Gate 3", "customer pilot", "pilot", "local"),
    Week("week5", "Gate 4", "Cloud Run rollout", "production", "cloudrun-local"),
)
ORDER = tuple(week.key for week in WEEKS)
GATE_NAMES = {week.key: week.gate for week in WEEKS}
DEFAULT_ENVS = {week.key: week.default_env for week in WEEKS}


def week(key: str) -> Week:
    """The week named `key` ("week3"); KeyError for anything else."""
    return {w.key: w for w in WEEKS}[key]
