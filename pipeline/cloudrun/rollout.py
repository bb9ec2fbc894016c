"""The rollout's step machine, kept apart from acting, as in Argo Rollouts.

`RolloutState` is everything needed to continue after a crash; it is saved after every step
(runs/<run-id>/rollout.json). `next_step(state)` is the one function that decides what comes
next; `advance(state, step, outcome)` is the pure transition. phases/rollout_steps.py acts: it
executes a step against Cloud Run and the probes and reports the outcome back.

Traffic routing is a tiny interface over the API: `canary_routes` (set weight),
`weight_is` (verify weight), `rollback_routes` (all traffic back to the stable revision).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.cloudrun.client import Route, ServiceState
from pipeline.errors import PipelineError

PHASES = (
    "deploy",
    "smoke",
    "canary",
    "rollback",
    "rollback_failed",  # stopped for a person: `cloudrun.resume` or `cloudrun.rollback` retries it
    "scale",
    "drain",
    "production",
    "done",
    "rolled_back",
)


@dataclass(frozen=True)
class RolloutState:
    run_id: str
    service: str
    endpoint: str | None
    image: str
    release_sha256: str
    release_version: str
    tag: str
    steps: tuple[int, ...]
    phase: str = "deploy"
    stable: str | None = None  # the revision serving before this rollout (None: first deploy)
    candidate: str | None = None
    completed_step: int = -1  # index into steps of the last canary step that passed
    reason: str | None = None  # why it was rolled back
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def current_percent(self) -> int:
        """The candidate's share after the last completed step (0 before the first)."""
        return self.steps[self.completed_step] if self.completed_step >= 0 else 0

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "rolled_back")

    def to_json(self) -> str:
        data = asdict(self)
        data["steps"] = list(self.steps)
        data["history"] = list(self.history)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> RolloutState:
        try:
            data = json.loads(text)
            data["steps"] = tuple(data["steps"])
            data["history"] = tuple(data.get("history", ()))
            state = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise PipelineError(f"{where}: not a rollout state file ({exc})") from None
        if state.phase not in PHASES:
            raise PipelineError(f"{where}: unknown rollout phase {state.phase!r}")
        return state

    def save(self, path: Path) -> None:
        """Atomically: a crash leaves the previous state or the new one, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> RolloutState:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PipelineError(f"{path}: no rollout state here") from None
        except (OSError, UnicodeDecodeError) as exc:
            why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror or exc
            raise PipelineError(f"{path}: cannot read the rollout state: {why}") from None
        return cls.from_json(text, str(path))


@dataclass(frozen=True)
class Step:
    kind: str  # deploy | smoke | canary | scale | drain | production | rollback
    percent: int | None = None
    reason: str | None = None

    @property
    def label(self) -> str:
        return f"canary-{self.percent}" if self.kind == "canary" else self.kind


def next_step(state: RolloutState) -> Step | None:
    """What to do next; None when the rollout is over or waits for a person."""
    if state.finished or state.phase == "rollback_failed":
        return None
    if state.phase == "canary":
        if state.completed_step + 1 < len(state.steps):
            return Step("canary", state.steps[state.completed_step + 1])
        return Step("scale")
    return Step(state.phase)


def advance(state: RolloutState, step: Step, passed: bool, **facts: Any) -> RolloutState:
    """The state after `step` finished (passed or not). Pure."""
    event = {"step": step.label, "passed": passed, **facts}
    history = (*state.history, event)
    if not passed and step.kind in ("smoke", "canary", "production") and state.stable:
        return replace(
            state,
            phase="rollback",
            reason=facts.get("reason") or f"{step.label} failed",
            history=history,
        )
    if step.kind == "rollback":
        if passed:
            return replace(state, phase="rolled_back", history=history)
        why = facts.get("reason") or "rollback failed"
        return replace(
            state,
            phase="rollback_failed",
            reason=f"{state.reason}; then the rollback failed: {why}",
            history=history,
        )
    if not passed:
        return replace(
            state,
            phase="done",
            reason=facts.get("reason") or f"{step.label} failed",
            history=history,
        )
    if step.kind == "deploy":
        candidate = facts.get("candidate", state.candidate)
        stable = facts.get("stable", state.stable)
        return replace(state, phase="smoke", candidate=candidate, stable=stable, history=history)
    if step.kind == "smoke":
        # the first deployment of a service goes straight to 100 %: nothing to canary against
        return replace(state, phase="canary" if state.stable else "scale", history=history)
    if step.kind == "canary":
        completed = state.completed_step + 1
        phase = "canary" if completed + 1 < len(state.steps) else "scale"
        return replace(state, completed_step=completed, phase=phase, history=history)
    following = {"scale": "drain", "drain": "production", "production": "done"}
    return replace(state, phase=following[step.kind], history=history)


def canary_routes(
    stable: str, candidate: str, percent: int, tag: str, baseline_tag: str | None = None
) -> list[Route]:
    """Set weight: `percent` to the candidate (keeping its tag), the rest to the stable revision
    — tagged `baseline_tag` when given (so the baseline has a URL of its own to compare with,
    also at 100 %, where it keeps 0 %)."""
    routes = [Route(candidate, percent, tag)]
    if baseline_tag and stable != candidate:
        routes.append(Route(stable, 100 - percent, baseline_tag))
    elif percent < 100:
        routes.append(Route(stable, 100 - percent))
    return routes


def rollback_routes(stable: str, candidate: str | None, tag: str) -> list[Route]:
    """All traffic back to the stable revision; the candidate keeps its tag (0 %) for debugging."""
    routes = [Route(stable, 100)]
    if candidate and candidate != stable:
        routes.append(Route(candidate, 0, tag))
    return routes


def weight_is(service: ServiceState, revision: str, percent: int) -> bool:
    """Verify weight: the service really sends `percent` to `revision`."""
    return service.percent_of(revision) == percent


def fresh(
    run_id: str,
    service: str,
    endpoint: str | None,
    image: str,
    sha256: str,
    version: str,
    tag: str,
    steps: list[int],
) -> RolloutState:
    return RolloutState(
        run_id, service, endpoint, image, sha256, version, tag, tuple(check_steps(steps))
    )


def check_steps(steps: list[int]) -> list[int]:
    if (
        not steps
        or steps[-1] != 100
        or any(not 0 < s <= 100 for s in steps)
        or steps != sorted(set(steps))
    ):
        raise PipelineError(f"canary steps must rise strictly and end at 100, got {steps}")
    return steps
