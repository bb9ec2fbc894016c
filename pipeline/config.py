"""Env files: envs/*.toml → a validated Env (ARCHITECTURE.md). An env may `extends` another.

Unknown keys and wrong types are errors naming the file that set the key and the key itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline import envfiles
from pipeline.envfiles import DEFAULT_ENV, ENVS_DIR, resolve
from pipeline.errors import PipelineError

__all__ = ["DEFAULT_ENV", "ENVS_DIR", "Env", "load_env", "resolve"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleaseLimits(Strict):
    max_files: int = Field(20000, gt=0)
    max_bytes: int = Field(1 << 30, gt=0)


class StartSettings(Strict):
    taiea_env: Literal["dev", "prod"] = "dev"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    ready_path: str = "/ready"
    fallback_ready_path: str = "/health"
    ready_timeout_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(0.05, gt=0, le=0.05)
    stop_grace_s: float = Field(10.0, ge=0)
    env: dict[str, str] = {}
    secrets: list[str] = ["ERLANG_COOKIE", "RELX_COOKIE"]


class SmokeTest(Strict):
    name: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    path: str
    body: dict[str, Any] | list[Any] | None = None
    expect_status: int = Field(200, ge=100, le=599)
    expect_json: dict[str, Any] = {}
    expect_keys: list[str] = []
    expect_content_type: str | None = None
    expect_text: str | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value


class LoadProfile(Strict):
    rate: float = Field(gt=0)
    duration_s: float = Field(gt=0)
    connections: int = Field(16, gt=0)
    endpoints: list[str] = []  # smoke test names; empty = all of them


class LoadSettings(Strict):
    profiles: dict[str, LoadProfile] = {}
    max_inflight: int = Field(1024, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    late_ms: float = Field(10.0, gt=0)


class Band(Strict):
    green: float
    amber: float
    orange: float
    red: float

    def of(self, value: float) -> str:
        for name in ("green", "amber", "orange", "red"):
            if value < getattr(self, name):
                return name
        return "critical"


class MonitorSettings(Strict):
    interval_s: float = Field(0.25, gt=0)
    memory_limit_mb: float = Field(512.0, gt=0)
    bands: dict[str, Band] = {}


class SandboxSettings(Strict):
    """gVisor (runsc) sandbox limits: the CCW constraints (owned by runtime/gvisor.py)."""

    runsc: str = "runsc"
    memory_mb: int = Field(512, gt=0)
    cpus: float = Field(1.0, gt=0)
    tmpfs_mb: int = Field(64, gt=0)
    uid: int = Field(65534, ge=0)
    gid: int = Field(65534, ge=0)
    mount_point: str = "/opt/taiea"
    network: Literal["host"] = "host"
    network_overhead_ms: float = Field(20.0, ge=0)  # budget for sandboxed minus native p50/p95


class CloudRunSettings(Strict):
    """Cloud Run service and rollout (owned by cloudrun/)."""

    endpoint: str | None = None  # API endpoint; None = Google's default
    project: str = "taiea-local"
    region: str = "us-central1"
    service: str = "tai-autonomics"
    image: str = "file://{tarball}"  # template: {tarball}, {version}, {name}
    service_account: str | None = None
    # Binary Authorization on the service (Google enforces it at deploy): "" off, "default"
    # the project's default policy, else a policy name projects/P/platforms/cloudRun/policies/N
    binary_authorization: str = ""
    env: dict[str, str] = {}
    min_instances: int = Field(0, ge=0)
    max_instances: int = Field(10, gt=0)
    concurrency: int = Field(80, ge=0)
    cpu: str = "2"
    memory: str = "512Mi"
    timeout_s: int = Field(300, gt=0)
    startup_probe_path: str = "/health"
    liveness_probe_path: str = "/health"
    tag: str = "candidate"
    canary_steps: list[int] = [10, 50, 100]
    bake_s: float = Field(10.0, ge=0)
    bake_rate: float = Field(50.0, gt=0)
    production_rate: float = Field(200.0, gt=0)
    production_s: float = Field(10.0, gt=0)
    drain_timeout_s: float = Field(60.0, ge=0)
    keep_revisions: int = Field(2, ge=1)
    delete_old_revisions: bool = False
    api_deadline_s: float = Field(120.0, gt=0)


class EmulatorSettings(Strict):
    """The local Cloud Run emulator (owned by emulator/)."""

    host: str = "127.0.0.1"
    port: int = Field(8089, ge=0, le=65535)
    runtime: Literal["process", "gvisor"] = "process"
    images: dict[str, str] = {}  # image name → tarball path
    instance_ready_timeout_s: float = Field(30.0, gt=0)
    scale_interval_s: float = Field(0.25, gt=0)
    shutdown_grace_s: float = Field(10.0, ge=0)
    admin_error_rate: float = Field(
        0.0, ge=0, le=1
    )  # fault injection: share of admin calls failing
    admin_error_code: Literal[429, 503] = 503
    queue_timeout_s: float = Field(10.0, gt=0)  # a request waits this long for an instance: 429
    scale_in_delay_s: float = Field(30.0, ge=0)  # demand stays low this long before scale-in
    max_instances_per_revision: int = Field(20, gt=0)  # this machine's cap on any template's max
    monitoring_port: int = Field(0, ge=0, le=65535)  # Cloud Monitoring (gRPC); 0 picks one
    binauthz_policy: str | None = None  # a Binary Authorization policy file: images enforced


class RemoteSettings(Strict):
    """Running a phase on a host over SSH (owned by runtime/remote.py; `--host` picks the host)."""

    dir: str = "~/.cache/taiea-pipeline"  # remote base: uploads/ (reused by sha256), runs/<id>/
    known_hosts: str = "~/.ssh/known_hosts"  # host keys are checked against this file
    connect_timeout_s: float = Field(10.0, gt=0)  # TCP connect, SSH banner, key exchange, auth
    command_timeout_s: float = Field(20.0, gt=0)  # any one remote command
    upload_timeout_s: float = Field(600.0, gt=0)  # the whole tarball upload
    keepalive_s: float = Field(
        5.0, ge=0
    )  # keepalive wanting a reply; none this long: lost (0: off)
    lease_s: float = Field(15.0, ge=1)  # the host stops the release after this long unrenewed


class MonitoringSettings(Strict):
    """Where week 5 reads per-revision metrics (owned by cloudrun/monitoring.py): "" picks for
    the Cloud Run endpoint (the Cloud Monitoring API the local emulator serves, else Google's),
    "emulator", "monitoring.googleapis.com", host:port, or "none" (no metrics: the rollout
    judges from its own receipts and drains wait the whole window)."""

    endpoint: str = ""
    point_s: int = Field(0, ge=0)  # the platform's point period: 0 = 1 s on the emulator, else 60


class AnalysisSettings(Strict):
    """Canary analysis: candidate against baseline (owned by analysis.py and compare.py)."""

    baseline_tag: str = "baseline"  # the stable revision's tag during a canary's bake
    compare_rate: float = Field(25.0, gt=0)  # req/s to each tag URL during a bake, same mix
    min_samples: int = Field(30, ge=1)  # per side: fewer is a failed comparison
    effect_ms: float = Field(2.0, ge=0)  # a Mann-Whitney rule tolerates a slowdown of the larger
    effect_ratio: float = Field(0.1, ge=0)  # of these (ms, share of the baseline's median)
    pass_score: float = Field(95.0, ge=0, le=100)  # a step's score at or above: pass
    marginal_score: float = Field(75.0, ge=0, le=100)  # at or above (below pass): marginal, fails


class ImageSettings(Strict):
    """OCI images of the release (owned by pipeline/image/ and phases/image.py)."""

    ref: str | None = None  # where image.build pushes: REGISTRY/REPO:TAG, {name} {version} filled
    uid: int = Field(65532, gt=0)  # the runtime user: never root
    port: int = Field(8080, gt=0, le=65535)  # PORT's default in the image (Cloud Run's)
    registry_port: int = Field(5000, gt=0, le=65535)  # `invoke registry.start`'s default port


class AttestSettings(Strict):
    """Signed gate attestations (owned by pipeline/attest/)."""

    key: str | None = None  # the Ed25519 private key (PIPELINE_ATTEST_KEY wins)
    policy: str | None = None  # a Binary Authorization policy week 5 checks before deploying


class PhaseSettings(Strict):
    load_profile: str | None = None
    gate: str | None = None  # the [gates.X] table this phase is judged by; default: its own name


class Env(Strict):
    name: str
    path: Path
    extends: str | None = None
    description: str = ""
    runtime: Literal["process", "gvisor", "remote"] = "process"
    release: ReleaseLimits = ReleaseLimits()
    start: StartSettings = StartSettings()
    smoke: list[SmokeTest] = []
    load: LoadSettings = LoadSettings()
    monitor: MonitorSettings = MonitorSettings()
    phases: dict[str, PhaseSettings] = {}
    sandbox: SandboxSettings = SandboxSettings()
    cloudrun: CloudRunSettings = CloudRunSettings()
    emulator: EmulatorSettings = EmulatorSettings()
    remote: RemoteSettings = RemoteSettings()
    image: ImageSettings = ImageSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    attest: AttestSettings = AttestSettings()
    gates: dict[str, dict[str, list[str]]] = {}
    sources: dict[str, str] = {}  # dotted key → the file that set it (for error messages)

    def phase(self, name: str) -> PhaseSettings:
        return self.phases.get(name, PhaseSettings())

    def profile(self, name: str) -> LoadProfile:
        try:
            return self.load.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.load.profiles)) or "none"
            raise PipelineError(
                f"{self.path}: no load profile {name!r} in [load.profiles] (known: {known})"
            ) from None

    def file_path(self, key: str, value: str) -> Path:
        """A path the env gives at dotted `key`: `~` expanded, and a relative one taken from the
        folder of the file that set it (not from wherever the tool runs)."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        return Path(self.sources.get(key, self.path)).parent / path

    def gate_spec(self, gate: str) -> Any:
        return envfiles.gate_spec_of(self.gates, self.sources, self.path, gate)

    def band(self, metric: str, value: float) -> str | None:
        band = self.monitor.bands.get(metric)
        return band.of(value) if band else None


def load_env(name_or_path: str | Path = DEFAULT_ENV) -> Env:
    path = resolve(name_or_path)
    raw, sources = envfiles.load_raw(path, ())
    raw.setdefault("name", path.stem)
    raw["path"] = path
    raw["sources"] = sources
    try:
        env = Env.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        dotted = ".".join(str(part) for part in error["loc"])
        owner = _owner(sources, error["loc"]) or str(path)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        raise PipelineError(f"{owner}: key {dotted}: {message}") from None
    for gate in env.gates:
        env.gate_spec(gate)  # a bad threshold is a configuration error at load time
    return env


def _owner(sources: dict[str, str], loc: tuple[Any, ...]) -> str | None:
    """The file that set the deepest existing prefix of an error's location."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    while parts:
        found = sources.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return None
