"""Week 5 against the local Cloud Run emulator, through the official run_v2 client, with the
reference release — under constant load during the rollouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from fixtures_emulator import gates_passed

from pipeline import config, receipts
from pipeline.cloudrun.rollout import RolloutState
from pipeline.phases.week5 import resume, run_week5
from pipeline.waiting import poll

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")


@pytest.fixture(autouse=True)
def _shared_runs(cloud, monkeypatch):
    """All tests of this module share one ledger (week 5's preflight reads it)."""
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(cloud["runs"]))


def service_uri(cloud) -> str:
    from pipeline.cloudrun.client import RunV2

    service = RunV2(cloud["env"].cloudrun).get_service()
    assert service is not None
    return service.uri


class Background:
    """Constant load through the service URL while a rollout runs; every result kept."""

    def __init__(self, url: str, rate: float = 50):
        from pipeline.phases.stages import load_targets
        from pipeline.probes.load import StopToken

        self.results: list = []
        self.stop_token = StopToken()
        targets = [t for t in load_targets(config.load_env("local").smoke) if t.method == "GET"]
        self.thread = threading.Thread(target=self._run, args=(url, targets, rate), daemon=True)

    def _run(self, url, targets, rate):
        from pipeline.probes.load import run_open_loop

        run_open_loop(url, targets, rate, 600, on_result=self.results.append, stop=self.stop_token)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_token.stop()
        self.thread.join(30)

    def failed(self, after_s: float = 0.0) -> list:
        return [
            r
            for r in self.results
            if not r.passed and r.error != "cancelled" and r.sent_s >= after_s
        ]


def kinds(path: Path, kind: str) -> list[dict]:
    return [r for r in receipts.iter_records(path) if r["kind"] == kind]


def test_preflight_refuses_a_release_without_gate2_and_gate3(reference_tarball, cloud):
    done = subprocess.run(
        [
            INVOKE,
            "phase2.week5",
            "--tarball",
            str(reference_tarball(version="0.9.0")),
            "--env",
            str(cloud["env_file"]),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert done.returncode == 99, done.stdout + done.stderr
    assert "no Gate 2 (week3) run; no Gate 3 (week4) run" in done.stderr
    assert not list(cloud["runs"].glob("*-week5-*"))  # nothing was deployed, no run started


def test_first_deploy_goes_straight_to_100_percent(reference_tarball, cloud):
    tarball = gates_passed(reference_tarball(version="1.0.0"))
    result = run_week5(tarball, cloud["env"])
    assert result.verdict.passed, result.verdict.summary()
    steps = [r["stage"] for r in kinds(result.receipts, "stage") if r["event"] == "end"]
    assert not any(s.startswith("canary") for s in steps)
    (deploy,) = kinds(result.receipts, "deploy")
    assert deploy["first"] is True
    assert kinds(result.receipts, "traffic")[-1]["split"] == {deploy["revision"]: 100}
    production = [r for r in kinds(result.receipts, "metrics") if r.get("instances") is not None]
    assert production and max(r["instances"] for r in production) >= 1


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ('image = "file://{nope}"', "key cloudrun.image: unknown placeholder 'nope'"),
        ("canary_steps = [50, 10]", "canary steps must rise strictly and end at 100"),
    ],
    ids=["image-placeholder", "canary-steps"],
)
def test_bad_rollout_settings_are_refused_before_any_receipt(
    reference_tarball, cloud, tmp_path, setting, said
):
    """Found after the preflight but before the run opens: exit 2, one line, no run left
    unsealed (or at all)."""
    tarball = gates_passed(reference_tarball(version="1.0.0"))
    env_file = tmp_path / "bad.toml"
    env_file.write_text(f'extends = "{cloud["env_file"]}"\n[cloudrun]\n{setting}\n')
    before = set(cloud["runs"].glob("*-week5-*"))
    done = subprocess.run(
        [INVOKE, "phase2.week5", "--tarball", str(tarball), "--env", str(env_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert set(cloud["runs"].glob("*-week5-*")) == before


def test_good_release_reaches_100_percent_with_zero_failed_requests(reference_tarball, cloud):
    tarball = gates_passed(reference_tarball(version="1.1.0"))
    with Background(service_uri(cloud)) as load:
        result = run_week5(tarball, cloud["env"])
        poll(lambda: True if len(load.results) > 100 else None, timeout=30, what="background load")
    assert result.verdict.passed, result.verdict.summary()
    assert load.failed() == [], load.failed()[:3]
    traffic = [r["percent"] for r in kinds(result.receipts, "traffic")]
    assert traffic == [0, 10, 50, 100]
    (drain,) = kinds(result.receipts, "drain")
    assert drain["revision"] and drain["how"] in ("in-flight reached 0", "instance count reached 0")
    state = RolloutState.load(result.receipts.parent / "rollout.json")
    assert state.phase == "done" and state.current_percent == 100


@pytest.mark.parametrize(
    ("fault", "version", "why"),
    [("prod_errors", "1.2.0", "errors"), ("prod_slow", "1.3.0", "p95")],
    ids=["prod-errors", "prod-slow"],
)
def test_production_only_defect_is_rolled_back_at_the_first_step(
    reference_tarball, cloud, fault, version, why
):
    tarball = gates_passed(reference_tarball(fault, version=version))  # weeks 3 and 4 pass it
    with Background(service_uri(cloud)) as load:
        result = run_week5(tarball, cloud["env"])
        (rollback,) = kinds(result.receipts, "rollback")
        after = max(r.sent_s for r in load.results) if load.results else 0.0
        poll(
            lambda: (
                True if load.results and max(r.sent_s for r in load.results) > after + 2 else None
            ),
            timeout=30,
            what="load after the rollback",
        )
    assert not result.verdict.passed
    assert [r["percent"] for r in kinds(result.receipts, "traffic")] == [0, 10, 0]
    assert why in rollback["reason"] or (why == "p95" and "p(95)" in rollback["reason"])
    assert load.failed(after_s=after) == []  # the stable revision serves with 0 errors afterwards
    state = RolloutState.load(result.receipts.parent / "rollout.json")
    assert state.phase == "rolled_back"


def test_crash_mid_rollout_then_resume_and_rollback(reference_tarball, cloud):
    for version, action in (("1.4.0", "resume"), ("1.5.0", "rollback")):
        tarball = gates_passed(reference_tarball(version=version))
        proc = subprocess.Popen(
            [INVOKE, "phase2.week5", "--tarball", str(tarball), "--env", str(cloud["env_file"])],
            cwd=REPO,
            env=os.environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def after_first_step(tarball=tarball):
            for path in cloud["runs"].glob("*-week5-*/rollout.json"):
                state = RolloutState.load(path)
                if state.image.endswith(tarball.name) and state.completed_step >= 0:
                    return path
            return None

        state_path = poll(after_first_step, timeout=120, what="the first canary step")
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no cleanup, no seal
        proc.wait()
        crashed = RolloutState.load(state_path)
        assert crashed.current_percent == 10
        result = resume(state_path, cloud["env"], action=action)
        final = RolloutState.load(state_path)
        if action == "resume":
            assert result.verdict.passed, result.verdict.summary()
            assert final.phase == "done" and final.current_percent == 100
        else:
            assert final.phase == "rolled_back"
            (rollback,) = kinds(result.receipts, "rollback")
            assert rollback["to"] == crashed.stable


def test_injected_503_and_429_are_survived(reference_tarball, cloud):
    tarball = gates_passed(reference_tarball(version="1.6.0"))
    faults = f"http://127.0.0.1:{cloud['port']}/emulator/v1/faults"
    for code in (503, 429):
        body = json.dumps({"rate": 0.3, "code": code}).encode()
        request = urllib.request.Request(
            faults, data=body, method="PUT", headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=10).read()
        try:
            result = run_week5(tarball, cloud["env"])
            seen = json.loads(urllib.request.urlopen(faults, timeout=10).read())
        finally:
            urllib.request.urlopen(
                urllib.request.Request(faults, method="DELETE"), timeout=10
            ).read()
        assert result.verdict.passed, f"{code}: {result.verdict.summary()}"
        assert seen["injected"] > 0, seen  # the client really met the faults and retried


def test_a_registry_image_is_built_once_pushed_and_deployed_by_digest(
    reference_tarball, cloud, local_registry, tmp_path
):
    """[cloudrun] image naming a registry: week 5 builds and pushes this tarball's image when
    the tag is absent, deploys it by digest (receipts say which), reuses it when it holds this
    tarball, and refuses a tag holding another release (exit 2, no run opened)."""
    from pipeline.errors import PipelineError
    from pipeline.image import oci
    from pipeline.image.registry import Registry

    env_file = tmp_path / "registry.toml"
    repo = f"{local_registry.address}/taiea/{{name}}"
    env_file.write_text(
        f'extends = "{cloud["env_file"]}"\n[cloudrun]\nimage = "{repo}:{{version}}"\n'
    )
    env = config.load_env(env_file)
    tarball = gates_passed(reference_tarball(version="1.8.0"))
    result = run_week5(tarball, env)
    assert result.verdict.passed, result.verdict.summary()
    first = next(receipts.iter_records(result.receipts))
    shipped = first["image"]
    assert shipped["built"] is True and shipped["ref"].endswith("tai_autonomics:1.8.0")
    (deploy,) = kinds(result.receipts, "deploy")
    pinned = f"{local_registry.address}/taiea/tai_autonomics@{shipped['digest']}"
    assert deploy["image"] == pinned
    ref = oci.Reference.parse(shipped["ref"])
    digest, manifest, *_ = Registry(ref.registry, None).resolve(ref)
    assert digest == shipped["digest"]
    assert manifest["annotations"]["dev.taiea.release.sha256"] == first["release"]["sha256"]

    again = run_week5(tarball, env)  # the tag now holds this tarball: reused, not rebuilt
    reused = next(receipts.iter_records(again.receipts))["image"]
    assert reused == {**shipped, "built": False}

    other = tmp_path / "fixed.toml"  # a tag that holds 1.8.0's image, asked to deploy 1.9.0
    other.write_text(f'extends = "{cloud["env_file"]}"\n[cloudrun]\nimage = "{repo}:1.8.0"\n')
    newer = gates_passed(reference_tarball(version="1.9.0"))
    before = set(cloud["runs"].glob("*-week5-*"))
    with pytest.raises(PipelineError, match=r"holds another release .* push this release"):
        run_week5(newer, config.load_env(other))
    assert set(cloud["runs"].glob("*-week5-*")) == before


def test_a_slower_release_within_every_limit_is_rolled_back_by_the_comparison(
    reference_tarball, cloud
):
    """prod_delay: every request 20 ms slower than the stable revision, far under p(95) < 250:
    the absolute rules pass, the comparison with the baseline (its own tag URL, same window)
    fails the first step, and gate.check judges the step the same way from the receipts."""
    tarball = gates_passed(reference_tarball("prod_delay", version="1.7.0"))
    result = run_week5(tarball, cloud["env"])
    assert not result.verdict.passed
    first = kinds(result.receipts, "analysis")[0]
    assert first["stage"] == "canary-10" and first["passed"] is False
    assert first["comparison"]["verdict"] == "fail" and first["baseline"]
    judged = {r["expression"]: r for r in first["results"]}
    assert judged["p(95) < 250"]["passed"], "within the absolute limit"
    slower = judged["mannwhitney p > 0.01"]
    assert not slower["passed"] and slower["details"]["n_baseline"] >= 30
    assert judged["med diff < 5"]["measured"] > 15
    (rollback,) = kinds(result.receipts, "rollback")
    assert "comparison with" in rollback["reason"]
    sides = {
        r.get("side")
        for r in kinds(result.receipts, "request")
        if r["stage"] == "canary-10-compare"
    }
    assert sides == {"candidate", "baseline"}
    again = subprocess.run(
        [
            INVOKE,
            "gate.check",
            "--gate",
            "canary:canary-10",
            "--receipts",
            str(result.receipts),
            "--env",
            str(cloud["env_file"]),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert again.returncode == 99, again.stderr
    rejudged = {r["expression"]: r for r in json.loads(again.stdout.splitlines()[-1])["results"]}
    assert rejudged["mannwhitney p > 0.01"]["measured"] == slower["measured"]


def test_week5_judges_from_cloud_monitoring_only(reference_tarball, cloud, monkeypatch):
    """cloudrun-local's default, as on Google: every per-revision figure comes from the Cloud
    Monitoring API (official client, gRPC) the emulator serves — its private metrics endpoint
    is never read — and every query is a `metric` receipt; the old revision drains when its
    in-flight count (max_request_concurrencies) reaches 0; Gate 4's shortfall and the
    instances' memory are measured from Monitoring too."""
    from pipeline.cloudrun import metrics, monitoring

    def private(*_args, **_kw):
        raise AssertionError("week 5 read the emulator's private metrics endpoint")

    monkeypatch.setattr(metrics.EmulatorMetrics, "revisions", private)
    tarball = gates_passed(reference_tarball(version="2.0.0"))
    result = run_week5(tarball, cloud["env"])
    assert result.verdict.passed, result.verdict.summary()
    queries = kinds(result.receipts, "metric")
    assert {q["metric"] for q in queries} == {
        monitoring.REQUEST_COUNT,
        monitoring.REQUEST_LATENCIES,
        monitoring.INSTANCE_COUNT,
        monitoring.MAX_CONCURRENCIES,
        monitoring.CPU_UTILIZATIONS,
        monitoring.MEMORY_UTILIZATIONS,
    }
    assert all(q["filter"].startswith("metric.type = ") for q in queries)
    first = kinds(result.receipts, "analysis")[0]
    assert first["backend"]["requests"] > 0 and first["backend"]["errors"] == 0
    assert first["backend"]["latency_ms"]["p95"] > 0
    (drain,) = kinds(result.receipts, "drain")  # its instances may be gone: no in-flight point
    assert drain["how"] in ("in-flight reached 0", "instance count reached 0")
    production = [r for r in kinds(result.receipts, "metrics") if r["stage"] == "production"]
    assert production and max(r["instances"] for r in production) >= 1
    assert all(r["instances_needed"] >= 1 for r in production)  # shortfall measured
    assert max(r.get("demand", 0) for r in production) > 0  # 200 req/s through the load
    assert all(0 < r["memory_utilization"] < 1 for r in production if "memory_utilization" in r)
    assert any("memory_utilization" in r for r in production)
    concurrency = [q for q in queries if q["metric"] == monitoring.MAX_CONCURRENCIES]
    assert any(p[1]["max"] >= 1 for q in concurrency for s in q["series"] for p in s["points"])


def test_week5_deploys_only_an_image_its_binary_authorization_policy_admits(
    reference_tarball, cloud, local_registry, tmp_path
):
    """`[attest] policy`: the preflight refuses an image whose digest lacks the weeks 3 and 4
    attestations, before anything is deployed (exit 99, Binary Authorization's words); attested,
    it deploys, and the report shows the attestations that admitted it."""
    import yaml

    from pipeline import release, verdicts
    from pipeline.attest import keys, ops
    from pipeline.errors import GateFailed

    key = keys.keygen(tmp_path / "key")
    attestor = "projects/taiea/attestors/release-gates"
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump({
        "defaultAdmissionRule": {
            "evaluationMode": "REQUIRE_ATTESTATION",
            "enforcementMode": "ENFORCED_BLOCK_AND_AUDIT_LOG",
            "requireAttestationsBy": [attestor],
        },
        "attestors": [{"name": attestor, "userOwnedGrafeasNote": {
            "publicKeys": [{"pkixPublicKey": {"publicKeyPem": key.public.read_text()}}]}}],
    }))  # fmt: skip
    env_file = tmp_path / "attested.toml"
    env_file.write_text(
        f'extends = "{cloud["env_file"]}"\n[cloudrun]\n'
        f'image = "{local_registry.address}/taiea/{{name}}:{{version}}"\n'
        f'[attest]\npolicy = "{policy_path}"\n'
    )
    env = config.load_env(env_file)
    tarball = gates_passed(reference_tarball(version="1.9.0"))
    before = set(cloud["runs"].glob("*-week5-*"))
    with pytest.raises(GateFailed) as refused:
        run_week5(tarball, env)
    assert "denied by Binary Authorization policy: no valid attestation by" in str(refused.value)
    assert set(cloud["runs"].glob("*-week5-*")) == before  # refused before any run opened
    sha = release.inspect(tarball).sha256
    image = f"{local_registry.address}/taiea/tai_autonomics:1.9.0"
    for gate in ("week3", "week4"):
        entry, _ = verdicts.newest_verdict(gate, sha, env.gate_spec(gate))
        assert entry is not None
        ops.create(gate=gate, receipts_path=Path(entry["receipts"]), image=image,
                   spec=env.gate_spec(gate), env_name=env.name, key_path=key.private)  # fmt: skip
    result = run_week5(tarball, env)
    assert result.verdict.passed, result.verdict.summary()
    admitted = next(receipts.iter_records(result.receipts))["preflight"]["attestations"]
    assert sorted(a["gate"] for a in admitted) == ["week3", "week4"]
    assert {a["keyid"] for a in admitted} == {key.keyid}
    page = Path(result.facts["report_html"]).read_text()
    assert 'id="admission"' in page and key.keyid in page
