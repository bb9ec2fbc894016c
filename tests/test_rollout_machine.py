"""The rollout's step machine, decided apart from acting: pure functions, zero time."""

from __future__ import annotations

import pytest

from pipeline import receipts
from pipeline.cloudrun.client import Route, ServiceState
from pipeline.cloudrun.rollout import (
    RolloutState,
    Step,
    advance,
    canary_routes,
    fresh,
    next_step,
    rollback_routes,
    weight_is,
)
from pipeline.errors import PipelineError


def state(**changes) -> RolloutState:
    base = fresh(
        "r1",
        "svc",
        "http://127.0.0.1:1",
        "file:///t.tar.gz",
        "ab" * 32,
        "1.0.0",
        "candidate",
        [10, 50, 100],
    )
    from dataclasses import replace

    return replace(base, **changes)


def walk(start: RolloutState, failing: str | None = None) -> list[str]:
    """Labels of the steps taken when every step passes except `failing`."""
    taken, current = [], start
    while (step := next_step(current)) is not None:
        taken.append(step.label)
        facts = (
            {"candidate": "svc-00002-abc", "stable": current.stable}
            if step.kind == "deploy"
            else {}
        )
        current = advance(
            current,
            step,
            step.label != failing,
            reason="boom" if step.label == failing else None,
            **facts,
        )
        assert len(taken) < 20
    return taken


@pytest.mark.parametrize(
    ("start", "failing", "expected"),
    [
        (
            state(stable="svc-00001-xyz"),
            None,
            [
                "deploy",
                "smoke",
                "canary-10",
                "canary-50",
                "canary-100",
                "scale",
                "drain",
                "production",
            ],
        ),
        (state(stable=None), None, ["deploy", "smoke", "scale", "drain", "production"]),
        (state(stable="svc-00001-xyz"), "canary-10", ["deploy", "smoke", "canary-10", "rollback"]),
        (
            state(stable="svc-00001-xyz"),
            "canary-50",
            ["deploy", "smoke", "canary-10", "canary-50", "rollback"],
        ),
        (state(stable="svc-00001-xyz"), "smoke", ["deploy", "smoke", "rollback"]),
        (
            state(stable="svc-00001-xyz"),
            "production",
            [
                "deploy",
                "smoke",
                "canary-10",
                "canary-50",
                "canary-100",
                "scale",
                "drain",
                "production",
                "rollback",
            ],
        ),
        (state(stable="svc-00001-xyz"), "deploy", ["deploy"]),
        (state(stable=None), "smoke", ["deploy", "smoke"]),
        (
            state(stable="s", candidate="c", phase="canary", completed_step=0),
            None,
            ["canary-50", "canary-100", "scale", "drain", "production"],
        ),
    ],
    ids=[
        "canary-all-the-way",
        "first-deploy-skips-canary",
        "fail-first-step-rolls-back",
        "fail-second-step",
        "smoke-fails-rolls-back",
        "production-fails-rolls-back",
        "deploy-fails-ends",
        "first-deploy-smoke-fails-ends",
        "resume-after-first-step",
    ],
)
def test_step_sequence(start, failing, expected):
    assert walk(start, failing) == expected


def test_rollback_records_the_reason_and_ends_rolled_back():
    current = state(stable="s", candidate="c", phase="canary")
    current = advance(current, Step("canary", 10), False, reason="p95 too high")
    assert current.phase == "rollback" and current.reason == "p95 too high"
    assert next_step(current) == Step("rollback")
    current = advance(current, Step("rollback"), True)
    assert current.phase == "rolled_back" and current.finished and next_step(current) is None


def test_a_failed_rollback_stops_for_a_person_and_is_not_called_rolled_back():
    current = state(stable="s", candidate="c", phase="rollback", reason="p95 too high")
    current = advance(current, Step("rollback"), False, reason="the service reports c=50")
    assert current.phase == "rollback_failed" and not current.finished
    assert current.reason == "p95 too high; then the rollback failed: the service reports c=50"
    assert next_step(current) is None  # no retry loop: a person resumes or rolls back


def _rollout(tmp_path, api, **state_changes):
    from pipeline import config
    from pipeline.cloudrun.metrics import NoBackend
    from pipeline.phases.base import PhaseRun
    from pipeline.phases.rollout_steps import Rollout

    env = config.load_env("cloudrun-local")
    run = PhaseRun("week5", env, receipts_path=tmp_path / "r.jsonl")
    run.begin({"sha256": "ab" * 32})
    return Rollout(run, api, env, NoBackend(), tmp_path / "rollout.json", state(**state_changes))


@pytest.mark.parametrize(
    ("stop", "said"),
    [
        (KeyboardInterrupt(), "interrupted by SIGINT (Ctrl-C)"),
        (RuntimeError("API deadline"), "stopped by an error (API deadline)"),
    ],
    ids=["ctrl-c", "error"],
)
def test_a_canary_step_stopped_half_way_puts_traffic_back(tmp_path, monkeypatch, stop, said):
    """Ctrl-C or any error in the middle of a canary step: the split goes back to the last
    completed step instead of staying where the unjudged step left it."""
    from pipeline import config
    from pipeline.cloudrun.client import FakeCloudRun, Template
    from pipeline.phases import rollout_steps

    api = FakeCloudRun()
    template = Template.of(config.load_env("cloudrun-local").cloudrun, "file:///t.tar.gz")
    api.deploy(template, None)
    api.deploy(template, [Route("svc-00001-abc", 100)])
    r = _rollout(tmp_path, api, stable="svc-00001-abc", candidate="svc-00002-abc",
                 phase="canary", completed_step=0)  # fmt: skip

    def half_way(r, percent):
        r.api.set_traffic(canary_routes("svc-00001-abc", "svc-00002-abc", percent, "candidate"))
        raise stop

    monkeypatch.setitem(rollout_steps.ACTIONS, "canary", half_way)
    with pytest.raises(type(stop)):
        rollout_steps.drive(r)
    assert api.calls[-2:] == [
        "set_traffic:svc-00002-abc=50#candidate,svc-00001-abc=50",
        "set_traffic:svc-00002-abc=10#candidate,svc-00001-abc=90",
    ]
    errors = [rec["reason"] for rec in receipts.iter_records(r.run.path) if rec["kind"] == "error"]
    assert f"{said}; traffic back to 10 % on the candidate" in errors
    assert RolloutState.load(tmp_path / "rollout.json").phase == "canary"


def test_completed_step_tracks_the_last_passed_percentage():
    current = state(stable="s", candidate="c", phase="canary")
    assert current.current_percent == 0
    current = advance(current, Step("canary", 10), True)
    assert current.current_percent == 10 and next_step(current) == Step("canary", 50)


def test_state_round_trips_through_its_file(tmp_path):
    current = advance(
        state(stable="s", candidate="c", phase="canary"), Step("canary", 10), True, note="x"
    )
    path = tmp_path / "rollout.json"
    current.save(path)
    assert RolloutState.load(path) == current
    assert not path.with_suffix(".tmp").exists()


@pytest.mark.parametrize(
    "text", ["", "{}", '{"run_id": 1}', "[1]"], ids=["empty", "no-fields", "partial", "list"]
)
def test_broken_state_file_is_bad_input(tmp_path, text):
    path = tmp_path / "rollout.json"
    path.write_text(text)
    with pytest.raises(PipelineError, match="not a rollout state file"):
        RolloutState.load(path)


@pytest.mark.parametrize(
    "steps",
    [[10, 50], [50, 10, 100], [0, 100], [10, 10, 100], []],
    ids=["no-100", "falling", "zero", "repeat", "empty"],
)
def test_bad_canary_steps_are_refused(steps):
    with pytest.raises(PipelineError, match="canary steps"):
        fresh("r", "s", None, "i", "x", "1", "t", steps)


@pytest.mark.parametrize(
    ("percent", "expected"),
    [
        (0, [Route("c", 0, "candidate"), Route("s", 100)]),
        (10, [Route("c", 10, "candidate"), Route("s", 90)]),
        (100, [Route("c", 100, "candidate")]),
    ],
    ids=["tag-only", "ten-percent", "all-in"],
)
def test_canary_routes_set_weight(percent, expected):
    routes = canary_routes("s", "c", percent, "candidate")
    assert routes == expected and sum(r.percent for r in routes) == 100


def test_rollback_routes_and_weight_verification():
    routes = rollback_routes("s", "c", "candidate")
    service = ServiceState("svc", "http://x", "e", 3, "c", "c", tuple(routes))
    assert weight_is(service, "s", 100) and weight_is(service, "c", 0)
    assert not weight_is(service, "c", 10)
    latest = ServiceState("svc", "http://x", "e", 3, "c", "c", (Route(None, 100),))
    assert latest.percent_of("c") == 100  # a LATEST route counts for the latest ready revision


WINDOW_KEYS = [
    ("plain", "http.success", [("stage", "canary-10")]),
    ("own filter kept", "http.latency_ms{method:GET}", [("method", "GET"), ("stage", "canary-10")]),
    ("names a stage", "http.rps{stage:production-load}", [("stage", "production-load")]),
]


@pytest.mark.parametrize(
    "key, filters", [w[1:] for w in WINDOW_KEYS], ids=[w[0] for w in WINDOW_KEYS]
)
def test_a_canary_step_is_judged_on_its_own_window(tmp_path, key, filters):
    """[gates.canary] keys are narrowed to the step's receipts, also those with filters."""
    from pipeline import config
    from pipeline.analysis import window_gate

    env_file = tmp_path / "canary.toml"
    env_file.write_text(
        f'extends = "{config.resolve("cloudrun-local").resolve()}"\n'
        f'[gates.canary]\n"{key}" = ["count >= 0"]\n'
    )
    env = config.load_env(env_file)
    spec = window_gate(env, "canary-10")
    name = key.split("{")[0]
    assert tuple(filters) in {tuple(k.filters) for k in spec.keys if k.name == name}
    assert all(("stage", "canary-10") in k.filters or k.name == "http.rps" for k in spec.keys)


@pytest.mark.parametrize(
    ("exc", "deploy_failure"),
    [
        ("FailedPrecondition", True),
        ("Unknown:revision svc-00002-abc failed: the release never got ready", True),
        ("AlreadyExists:service svc already exists", False),
        ("ServiceUnavailable:try again", False),
    ],
    ids=["precondition", "never-ready", "already-exists", "unavailable"],
)
def test_a_deploy_failure_is_told_from_a_failed_call(exc, deploy_failure):
    from google.api_core import exceptions as gexc

    from pipeline.cloudrun.client import is_deploy_failure

    kind, _, message = exc.partition(":")
    assert is_deploy_failure(getattr(gexc, kind)(message or "no")) is deploy_failure


class _Backend:
    """A revision's figures as the platform reports them, one reading per call (None: the
    platform does not answer; {}: it answers, with nothing for this revision)."""

    def __init__(self, readings):
        self.readings = list(readings)

    def revisions(self, window_s=None):
        value = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        return None if value is None else {"svc-00001-abc": value} if value else {}


@pytest.mark.parametrize(
    ("readings", "how", "waited"),
    [
        ([{"inflight": 3}, {"inflight": 2}, {"inflight": 0}], "in-flight reached 0", 0.1),
        (
            [{"inflight": None, "instances": 2}, {"inflight": None, "instances": 0}],
            "instance count reached 0",
            0.05,
        ),
        ([None], "drain window of 2 s elapsed", 2.0),  # no figures: never "drained" at once
        ([{}], "drain window of 2 s elapsed", 2.0),  # Google's points not in yet: the same
        ([{"inflight": 5}], None, 2.0),
        ([{"inflight": None, "instances": 1}], None, 2.0),  # up, and nothing says idle
        ([{"inflight": 0, "instances": 3}], "in-flight reached 0", 0.0),  # idle instances stay
        (  # a point that ended before the drain began says nothing about a request since
            [{"inflight": 0, "inflight_at": -1.0}, {"inflight": 0, "inflight_at": 1.0}],
            "in-flight reached 0",
            0.05,
        ),
        ([{"inflight": None, "instances": 0, "instances_at": -1.0}], None, 2.0),
    ],
    ids=[
        "reaches-zero",
        "instances-reach-zero",
        "no-answer-waits-the-window",
        "no-figures-waits-the-window",
        "still-busy",
        "instances-up-no-inflight",
        "idle-instances",
        "stale-zero-waits-for-a-fresh-point",
        "stale-instance-count",
    ],
)
def test_a_drain_waits_for_figures_or_the_whole_window(readings, how, waited):
    from pipeline.cloudrun.ops import wait_drained

    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    got = wait_drained(
        _Backend(readings),
        "svc-00001-abc",
        2.0,
        sleep=sleep,
        clock=lambda: now[0],
        wall=lambda: 0.0,
    )
    assert got == how
    assert now[0] == pytest.approx(waited, abs=0.06)


@pytest.mark.parametrize(
    ("facts", "sample"),
    [
        (
            {"instances": 1, "inflight": 3, "demand": 2.5},
            {"instances": 1, "inflight": 3, "demand": 2.5, "instances_needed": 1},
        ),
        (  # requests waiting for an instance: in the demand, not in flight
            {"instances": 1, "inflight": 80, "demand": 130.0},
            {"instances": 1, "inflight": 80, "demand": 130.0, "instances_needed": 2},
        ),
        (
            {"instances": 2, "inflight": 170},
            {"instances": 2, "inflight": 170, "instances_needed": 3},
        ),
        ({"instances": 0, "inflight": 0}, {"instances": 0, "inflight": 0, "instances_needed": 1}),
        ({"instances": 2, "inflight": None, "demand": None}, {"instances": 2}),
        (
            {"instances": 1, "inflight": 0, "cpu_utilization": 0.2, "memory_utilization": 0.1},
            {
                "instances": 1,
                "inflight": 0,
                "instances_needed": 1,
                "cpu_utilization": 0.2,
                "memory_utilization": 0.1,
            },
        ),
    ],
    ids=["enough", "queueing", "in-flight-beyond", "none-up", "no-load-figures", "utilization"],
)
def test_a_production_sample_says_how_many_instances_the_load_needed(facts, sample):
    from pipeline.gates import MetricCollector, evaluate, parse_gate
    from pipeline.phases.rollout_steps import production_sample

    got = production_sample(facts, concurrency=80)
    assert got == sample
    spec = parse_gate("week5", {"instances.shortfall": ["count == 0"]}, "test")
    collector = MetricCollector([key for key, _ in spec.rules])
    collector.feed({"kind": "metrics", "stage": "production", **got})
    short = got.get("instances_needed", 0) > got["instances"]
    assert evaluate(spec, collector.values()).passed is not short


def test_a_canary_window_without_requests_fails_even_with_count_rules_only(tmp_path):
    """Deploy and traffic receipts are evidence for the file, not for the window."""
    from pipeline import config
    from pipeline.analysis import window_gate
    from pipeline.gates import check
    from pipeline.receipts import ReceiptWriter

    env = config.load_env("cloudrun-local")
    env = env.model_copy(update={"gates": {**env.gates, "canary": {"errors": ["count == 0"]}}})
    spec = window_gate(env, "canary-10-bake")

    def window(path, stage):
        with ReceiptWriter(path, run_id="r", phase="week5") as w:
            w.write("run")
            w.write("deploy", "deploy", revision="svc-00002-abc")
            w.write("traffic", "canary-10", percent=10)
            w.write("request", stage, endpoint="/health", latency_ms=3.0, passed=True)
        return check(path, spec, require_seal=False)

    empty = window(tmp_path / "empty.jsonl", "smoke")
    assert not empty.passed
    (failure,) = empty.failures
    assert (failure.metric, failure.expression) == (
        "http.latency_ms{stage:canary-10-bake}",
        "count > 0",
    )
    assert window(tmp_path / "baked.jsonl", "canary-10-bake").passed


LATENCY = {"count": 80, "avg": 12.0, "p50": 10.0, "p95": 40.0, "p99": 90.0, "max": 120.0}


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("p(95) < 250", None),
        ("p(95) < 30", "svc-00002-abc p(95) 40 ms (needs p(95) < 30)"),
        ("max >= 200", "svc-00002-abc max 120 ms (needs max >= 200)"),  # any operator
        ("med == 10", None),
        ("p(90) < 250", "svc-00002-abc p(90): not measured per revision"),
        ("min > 0", "svc-00002-abc min: not measured per revision"),
        ("count > 1000", None),  # the window's count, judged by its own verdict
    ],
    ids=["p95-ok", "p95-high", "max-ge", "med", "p90-unmeasured", "min-unmeasured", "count"],
)
def test_the_candidates_own_latency_is_judged_by_every_rule(rule, problem):
    from pipeline.analysis import revision_latency_problems
    from pipeline.gates import parse_gate

    spec = parse_gate("canary", {"http.latency_ms": [rule]}, "t.toml")
    problems = revision_latency_problems(spec, LATENCY, "svc-00002-abc")
    if problem is None:
        assert problems == []
    else:
        (only,) = problems
        assert only.startswith(problem)


@pytest.mark.parametrize(
    ("history", "note"),
    [
        ((), "first deployment: nothing to drain"),
        (
            ({"step": "deploy", "passed": True, "unchanged": True},),
            "nothing to drain: svc-00001-abc already served this release",
        ),
    ],
    ids=["first-deployment", "same-release-again"],
)
def test_drain_says_why_there_is_nothing_to_drain(tmp_path, history, note):
    from pipeline.cloudrun.client import FakeCloudRun
    from pipeline.phases.rollout_steps import do_drain

    r = _rollout(
        tmp_path, FakeCloudRun(), candidate="svc-00001-abc", phase="drain", history=history
    )
    assert do_drain(r) == {"note": note}


def test_rolling_back_a_finished_rollout_needs_force(tmp_path):
    from pipeline import config
    from pipeline.phases import week5

    path = tmp_path / "rollout.json"
    state(stable="svc-00001-abc", candidate="svc-00002-abc", phase="done").save(path)
    with pytest.raises(PipelineError, match=r"svc-00002-abc took all the traffic .* needs --force"):
        week5.resume(path, config.load_env("cloudrun-local"), action="rollback")
    assert RolloutState.load(path).phase == "done"
