"""The demo (`invoke demo`, `make demo`): Phase 2's mission on the reference release.

Three releases go through phase2.all (weeks 2 → 5) one after another, against one local Cloud Run
emulator, in a runs dir of their own (its own ledger and emulator state):

- 1.0.0, the service's first deployment: 100 % at once, nothing to drain;
- 1.0.1, rolled out over 1.0.0: the canary steps under load, scale, 1.0.0's revision drained;
- 1.0.2 built with the `prod_errors` fault (it errors only under TAIEA_ENV=prod): it passes
  weeks 2–4, and week 5 catches it at the first canary step and rolls back to 1.0.1.

Then the service is asked through its URL: 1.0.1 answers, cleanly. The demo passes when every
release did what it is there to show — 1.0.2 failing Gate 4 included — and fails (listing what
differs) otherwise. The emulator is stopped at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import config, reference
from pipeline import receipts as receipt_log
from pipeline.catalogue import DEFAULT_ENVS, ORDER
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.phases.all import WeekOutcome, run_all
from pipeline.phases.base import View

DEMO_ENV = "demo"  # envs/demo.toml: cloudrun-local with short windows
WEEK_WINDOW_S = 3.0  # the load windows of weeks 2 and 3 (the env files say 15 s)
ASKS = 10  # requests through the service URL at the end
RUNS_ENV = "PIPELINE_RUNS_DIR"
_INFO = re.compile(r'^taiea_info\{version="([^"]*)",env="([^"]*)",fault="([^"]*)"\}', re.M)


@dataclass(frozen=True)
class Act:
    """One release of the demo and what it is there to show."""

    version: str
    fault: str
    role: str  # first | upgrade | caught
    shows: str


ACTS = (
    Act("1.0.0", "none", "first", "first deployment: 100 % at once"),
    Act("1.0.1", "none", "upgrade", "rolled out over 1.0.0: canary steps, scale, 1.0.0 drained"),
    Act("1.0.2", "prod_errors", "caught", "errors only in prod: caught by the canary, rolled back"),
)


@dataclass(frozen=True)
class RolloutFacts:
    """What week 5 did, read back from its receipts and rollout state."""

    revision: str | None = None
    stable: str | None = None
    first: bool = False
    percents: tuple[int, ...] = ()  # the candidate's share after each traffic change
    canary: tuple[tuple[str, bool], ...] = ()  # each canary step and whether it held
    steps: tuple[tuple[int, int | None], ...] = ()  # canary step %, candidate's instances then
    instances: tuple[int, ...] = ()  # the candidate's instances under Gate 4's load, per sample
    served: tuple[int, ...] = ()  # requests each of its instances had served by the end
    drained: str | None = None
    drain_how: str | None = None
    rollback: dict[str, Any] | None = None  # the rollback receipt, with `at`: the failed step
    phase: str | None = None  # the rollout's last state
    report: Path | None = None

    @property
    def peak_instances(self) -> int:
        return max(self.instances, default=0)


@dataclass
class ReleaseRun:
    act: Act
    tarball: Path
    outcomes: list[WeekOutcome]
    rollout: RolloutFacts | None = None
    problems: list[str] = field(default_factory=list)

    def outcome(self, week: str) -> WeekOutcome | None:
        return next((o for o in self.outcomes if o.week == week), None)

    def passed(self, week: str) -> bool | None:
        """The week's verdict; None when it did not run."""
        found = self.outcome(week)
        return None if found is None or found.result is None else found.result.verdict.passed


@dataclass(frozen=True)
class Answer:
    status: int
    version: str | None  # what the release says it is (taiea_info in /metrics)
    fault: str | None
    revision: str | None  # the revision that answered (the emulator says so in a header)


@dataclass
class Serving:
    status: dict[str, Any]  # cloudrun.status's facts: uri, traffic, revisions with instances
    answers: list[Answer]


@dataclass
class DemoResult:
    runs_dir: Path
    env: Env
    endpoint: str | None = None
    differs: list[str] = field(default_factory=list)  # what the demo env shortens
    releases: list[ReleaseRun] = field(default_factory=list)
    serving: Serving | None = None
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems and len(self.releases) == len(ACTS) and self.serving is not None

    def release(self, version: str) -> ReleaseRun | None:
        return next((r for r in self.releases if r.act.version == version), None)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C reached a phase (which judged and sealed its run): the demo goes no further."""


# ---------------------------------------------------------------- the demo


def run_demo(
    *,
    build_dir: Path,
    runs_root: Path,
    view_for: Callable[[str], View],
    say: Callable[[str], None],
    env: str | Path = DEMO_ENV,
    week_window_s: float = WEEK_WINDOW_S,
) -> DemoResult:
    """Build the three releases, play the three acts, then ask the service. `view_for(title)`
    gives each phase its live view; `say` narrates (rich markup)."""
    began = time.monotonic()
    demo_env = config.load_env(env)
    envs = {week: config.load_env(name) for week, name in DEFAULT_ENVS.items()}
    envs["week5"] = demo_env
    with own_runs_dir(runs_root) as runs:
        result = DemoResult(runs, demo_env, differs=shortened(demo_env, week_window_s))
        say(f"demo runs dir: {runs} (its own ledger and emulator state)")
        for line in result.differs:
            say(f"demo env: {line}")
        built = {}
        for act in ACTS:
            start = time.monotonic()
            built[act.version] = reference.build(build_dir, version=act.version, fault=act.fault)
            say(
                f"built {built[act.version]} (fault {act.fault}) "
                f"in {time.monotonic() - start:.1f} s"
            )
        with own_registry(say) as registry_address, own_emulator(demo_env, say) as endpoint:
            demo_env = through_registry(demo_env, registry_address)
            envs["week5"] = demo_env
            result.endpoint = endpoint
            options: dict[str, dict[str, Any]] = {
                "week2": {"duration": week_window_s},
                "week3": {"duration": week_window_s},
                "week5": {"endpoint": endpoint},
            }
            previous: ReleaseRun | None = None  # the release serving before this act
            for act in ACTS:
                fault = "" if act.fault == "none" else f" ({act.fault} fault)"
                say(f"[bold]{act.version}[/bold]{fault}: {act.shows}")
                tarball = built[act.version]
                outcomes = run_all(
                    tarball,
                    envs,
                    view_for=titled(view_for, act.version),
                    options=options,
                )
                stop_if_interrupted(outcomes)
                release = ReleaseRun(act, tarball, outcomes)
                release.rollout = rollout_facts(release)
                release.problems = judge_act(release, previous, demo_env)
                result.releases.append(release)
                result.problems += [f"{act.version}: {p}" for p in release.problems]
                if release.problems:
                    break  # the next act needs this one as it should be
                if release.passed("week5"):
                    previous = release
            if not result.problems and previous is not None:
                result.serving = ask_service(demo_env, endpoint)
                result.problems += judge_serving(result.serving, previous)
    result.wall_s = round(time.monotonic() - began, 1)
    return result


def titled(view_for: Callable[[str], View], version: str) -> Callable[[str, Env], View]:
    """phase2.all's `view_for(week, env)`, each view titled with the release."""
    return lambda week, env: view_for(f"{version} · {week} · env {env.name}")


def shortened(env: Env, week_window_s: float) -> list[str]:
    """What the demo env changes, against cloudrun-local (and Google's cloudrun-prod), to be
    said on screen. The gates stay the env files' own; the last line says whether they do."""
    local_env = config.load_env("cloudrun-local")
    local, prod, mine = local_env.cloudrun, config.load_env("cloudrun-prod").cloudrun, env.cloudrun
    week3 = config.load_env(DEFAULT_ENVS["week3"])
    window = week3.profile(week3.phase("week3").load_profile or "week3")
    steps = "/".join(map(str, mine.canary_steps))
    lines = [
        f"weeks 2 and 3: load windows shortened to {week_window_s:g} s "
        f"(env files: {window.duration_s:g} s at {window.rate:g} req/s)",
        f"week 5: canary bake windows shortened to {mine.bake_s:g} s at {mine.bake_rate:g} req/s, "
        f"steps {steps} % (cloudrun-local: {local.bake_s:g} s at {local.bake_rate:g} req/s, "
        f"cloudrun-prod: {prod.bake_s:g} s at {prod.bake_rate:g} req/s)",
        f"week 5: Gate 4's load shortened to {mine.production_s:g} s at "
        f"{mine.production_rate:g} req/s (cloudrun-local: {local.production_s:g} s, "
        f"cloudrun-prod: {prod.production_s:g} s)",
    ]
    if mine.concurrency != local.concurrency:
        lines.append(
            f"week 5: concurrency {mine.concurrency} requests per instance (cloudrun-local: "
            f"{local.concurrency}), so that this machine's load needs more than one instance"
        )
    if mine.max_instances != local.max_instances:
        lines.append(
            f"week 5: at most {mine.max_instances} instances per revision (cloudrun-local: "
            f"{local.max_instances}): weeks 2-4 of the next release run beside them on this machine"
        )
    if mine.min_instances != local.min_instances:
        lines.append(
            f"week 5: min {mine.min_instances} instance(s) per serving revision (cloudrun-local: "
            f"{local.min_instances}, cloudrun-prod: {prod.min_instances}), so that the serving "
            "revision is warm when the next release's canary starts"
        )
    changed = [
        f"{gate} {key} {', '.join(rules)} (cloudrun-local: "
        f"{', '.join(local_env.gates.get(gate, {}).get(key, ['none']))})"
        for gate in sorted({*env.gates, *local_env.gates})
        for key, rules in env.gates.get(gate, {}).items()
        if local_env.gates.get(gate, {}).get(key) != rules
    ]
    lines.append(
        "gates: the env files' own thresholds, unchanged"
        if not changed
        else f"gates: cloudrun-local's thresholds except {'; '.join(changed)}"
    )
    return lines


@contextlib.contextmanager
def own_runs_dir(root: Path) -> Iterator[Path]:
    """A fresh runs dir under `root` (receipts, the ledger, the emulator's state) for the
    duration: PIPELINE_RUNS_DIR names it, absolute, so the emulator process finds it too."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = (Path(root) / stamp).resolve()
    suffix = 1
    while path.exists():
        path = (Path(root) / f"{stamp}-{suffix}").resolve()
        suffix += 1
    path.mkdir(parents=True)
    before = os.environ.get(RUNS_ENV)
    os.environ[RUNS_ENV] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(RUNS_ENV, None)
        else:
            os.environ[RUNS_ENV] = before


@contextlib.contextmanager
def own_registry(say: Callable[[str], None]) -> Iterator[str]:
    """A local OCI registry on a free port, its storage in the runs dir, stopped at the end."""
    from pipeline.image import server

    running = server.start(receipt_log.runs_dir() / "registry", 0)
    say(f"started a local OCI registry at {running.address}: week 5 deploys images from it")
    try:
        yield running.address
    finally:
        running.stop()
        say("stopped the demo's registry")


def through_registry(env: Env, address: str) -> Env:
    """The demo's week 5 env with `[cloudrun] image` in the demo's registry: each release is
    built into an image, pushed, and deployed by digest."""
    image = f"{address}/taiea/{{name}}:{{version}}"
    return env.model_copy(update={"cloudrun": env.cloudrun.model_copy(update={"image": image})})


@contextlib.contextmanager
def own_emulator(env: Env, say: Callable[[str], None]) -> Iterator[str]:
    """The local Cloud Run emulator on a free port, its state in the runs dir; stopped with
    every instance when the demo ends, however it ends (a state dir only the demo uses: what
    is registered there is the demo's)."""
    from pipeline.cloudrun.endpoint import start_endpoint, stop_emulator
    from pipeline.runtime.process import free_port
    from pipeline.runtime.readiness import http_status

    endpoint = f"http://127.0.0.1:{free_port()}"
    try:
        where, started = start_endpoint(env, endpoint)
        if not started or where is None:
            raise PipelineError(f"something else answers at {endpoint}: run the demo again")
        say(f"started the local Cloud Run emulator at {where}")
        yield where
    finally:
        stop_emulator(env)
        parent = f"/v2/projects/{env.cloudrun.project}/locations/{env.cloudrun.region}/services"
        if http_status(endpoint, parent):
            say(
                f"[red]the emulator at {endpoint} still answers[/red]: `invoke emulator.stop "
                f"--state-dir {receipt_log.runs_dir() / 'emulator'}` stops it"
            )
        else:
            say("stopped the demo's emulator and every instance it ran")


def stop_if_interrupted(outcomes: list[WeekOutcome]) -> None:
    """A phase that saw Ctrl-C judges and seals its run and returns; the demo stops there."""
    for outcome in outcomes:
        if outcome.result is not None and (outcome.result.verdict.reason or "").startswith(
            "interrupted"
        ):
            raise Interrupted()


# ---------------------------------------------------------------- what week 5 did


def rollout_facts(release: ReleaseRun) -> RolloutFacts | None:
    """Week 5's deploy, traffic, canary steps, instances, drain and rollback, from its receipts."""
    week5 = release.outcome("week5")
    if week5 is None or week5.result is None:
        return None
    result = week5.result
    deploy: dict[str, Any] = {}
    percents: list[int] = []
    canary: list[tuple[str, bool]] = []
    steps: list[tuple[int, int | None]] = []
    instances: list[int] = []
    served: dict[str, int] = {}
    drain: dict[str, Any] = {}
    rollback: dict[str, Any] | None = None
    for record in receipt_log.iter_records(result.receipts):
        kind = record.get("kind")
        if kind == "deploy":
            deploy = record
        elif kind == "traffic" and record.get("percent") is not None:
            percents.append(int(record["percent"]))
        elif kind == "stage" and record.get("event") == "end":
            stage = str(record.get("stage"))
            if stage.startswith("canary-") and not stage.endswith("-bake"):
                canary.append((stage, bool(record.get("passed"))))
        elif kind == "metrics" and record.get("stage") == "production":
            if isinstance(record.get("instances"), int):
                instances.append(record["instances"])
            if isinstance(record.get("instance_requests"), int):
                served[str(record.get("instance"))] = record["instance_requests"]
        elif kind == "analysis" and isinstance(record.get("percent"), int):
            backend = record.get("backend") or {}
            steps.append((record["percent"], backend.get("instances")))
        elif kind == "drain":
            drain = record
        elif kind == "rollback":
            rollback = dict(record)
    if rollback is not None:
        failed = [stage for stage, held in canary if not held]
        rollback["at"] = failed[0] if failed else None
    report = result.facts.get("report_html")
    return RolloutFacts(
        revision=deploy.get("revision"),
        stable=deploy.get("stable"),
        first=bool(deploy.get("first")),
        percents=tuple(percents),
        canary=tuple(canary),
        steps=tuple(steps),
        instances=tuple(instances),
        served=tuple(sorted(served.values(), reverse=True)),
        drained=drain.get("revision"),
        drain_how=drain.get("how"),
        rollback=rollback,
        phase=result.facts.get("phase"),
        report=Path(report) if report else None,
    )


def judge_act(release: ReleaseRun, previous: ReleaseRun | None, env: Env) -> list[str]:
    """How this release's run differs from what its act is there to show (nothing: as meant)."""
    role, problems = release.act.role, []
    must_pass = ORDER if role != "caught" else ORDER[:-1]
    for week in must_pass:
        outcome = release.outcome(week)
        if release.passed(week) is not True:
            problems.append(f"{week} should pass: {outcome.note if outcome else 'not run'}")
    facts = release.rollout
    if facts is None:
        return problems or ["week 5 did not run"]
    before = previous.rollout.revision if previous and previous.rollout else None
    steps = tuple(env.cloudrun.canary_steps)
    if role == "first":
        if not facts.first or facts.percents != (100,):
            problems.append(f"not a first deployment at 100 %: traffic went {facts.percents}")
    elif role == "upgrade":
        if facts.stable != before or facts.percents != (0, *steps):
            problems.append(
                f"not a canary over {before}: stable {facts.stable}, traffic went {facts.percents}"
            )
        if facts.peak_instances < 2:
            problems.append(
                f"no scale-out: the candidate ran on {facts.peak_instances} instance(s) under load"
            )
        if facts.drained != before or not facts.drain_how:
            problems.append(f"{before} not drained (drain receipt: {facts.drained})")
        if facts.phase != "done":
            problems.append(f"the rollout ended {facts.phase}, not done")
    else:
        if release.passed("week5") is not False:
            problems.append("Gate 4 should fail: 1.0.2 was not caught")
        first = f"canary-{steps[0]}"
        rollback = facts.rollback
        if rollback is None:
            problems.append("no rollback receipt")
        elif rollback.get("at") != first or rollback.get("to") != before:
            problems.append(
                f"rolled back at {rollback.get('at')} to {rollback.get('to')}, "
                f"not at {first} to {before}"
            )
        if facts.percents != (0, steps[0], 0) or facts.phase != "rolled_back":
            problems.append(f"traffic went {facts.percents}, rollout ended {facts.phase}")
    return problems


# ---------------------------------------------------------------- the service afterwards


def ask_service(env: Env, endpoint: str, asks: int = ASKS) -> Serving:
    """cloudrun.status's facts, and `asks` GET /metrics through the service URL: which release
    (and revision) answers."""
    from pipeline.cloudrun import ops
    from pipeline.cloudrun.metrics import default_backend

    status = ops.status(env, endpoint, default_backend(env.cloudrun, endpoint))
    return Serving(status, [ask(str(status["uri"])) for _ in range(asks)])


def ask(uri: str, timeout: float = 10.0) -> Answer:
    request = urllib.request.Request(uri.rstrip("/") + "/metrics")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the local service URL
            status, body = response.status, response.read().decode(errors="replace")
            revision = response.headers.get("x-emulator-revision")
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, None, None, exc.headers.get("x-emulator-revision"))
    except (urllib.error.URLError, OSError):
        return Answer(0, None, None, None)
    found = _INFO.search(body)
    return Answer(
        status, found.group(1) if found else None, found.group(3) if found else None, revision
    )


def judge_serving(serving: Serving, stable: ReleaseRun) -> list[str]:
    revision = stable.rollout.revision if stable.rollout else None
    problems = []
    if serving.status.get("traffic") != {revision: 100}:
        problems.append(
            f"the service sends {serving.status.get('traffic')}, not 100 % to {revision}"
        )
    wrong = [
        a
        for a in serving.answers
        if a.status != 200
        or a.version != stable.act.version
        or (a.revision is not None and a.revision != revision)
    ]
    if wrong or not serving.answers:
        problems.append(
            f"{len(wrong)} of {len(serving.answers)} requests to the service were not answered "
            f"200 by {stable.act.version}: {wrong[:2]}"
        )
    return problems
