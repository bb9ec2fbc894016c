"""The receipt schema: every kind the pipeline writes, with its fields and their JSON types.

ARCHITECTURE.md names the kinds; this module says what each carries. Fields are written
`name:type` (`?` after the type: may be null); types are JSON's: str, int, num (int or float),
bool, obj, list, any. Beyond the common fields (ts, kind, run_id, seq, phase, stage, prev, hash),
a receipt has its kind's required fields, may have its optional ones, and nothing else.

Writers are checked when `PIPELINE_SCHEMA_CHECK=1` (the test suite sets it, so every receipt
written by a phase, a task or `runs.recover` in the suite is checked as it is written); in
production the hot path pays nothing. Reading never depends on it: gates and reports accept
any receipt that verifies, and fail closed on what they miss."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

CHECK_ENV = "PIPELINE_SCHEMA_CHECK"

_DECLARED: dict[str, tuple[str, str, str]] = {
    # kind: (what it records, required fields, optional fields)
    "run": (
        "the first line: tool, env, host, release",
        "tool:str tool_version:str env:str host:str release:obj",
        "env_file:str platform:str python:str runtime:str workdir:str load:obj sandbox:obj "
        "stages:list scenario:obj preflight:obj endpoint:str service:str action:str "
        "resumed_from:str target:str pid:int rate:num duration_s:num seconds:num closed:bool image:obj started_emulator:str remote:obj",
    ),
    "stage": (
        "a stage started, ended or was skipped",
        "event:str",
        "passed:bool reason:str? seconds:num",
    ),
    "release": (
        "the tarball as validated",
        "name:str version:str erts_version:str layout:str path:str prefix:str sha256:str "
        "file_count:int size_bytes:int uncompressed_bytes:int",
        "",
    ),
    "extract": ("the safe extraction", "files:int root:str seconds:num", "sha256:str"),
    "startup": (
        "the release is ready",
        "seconds:num",
        "url:str pid:int runtime:str rss_mb:num where:obj? log:str",
    ),
    "receipt": (
        "one smoke test",
        "test:str passed:bool latency_ms:num",
        "endpoint:str method:str status:int reason:str? url:str",
    ),
    "request": (
        "one load request",
        "latency_ms:num passed:bool status:int",
        "target:str endpoint:str method:str error:str? scheduled_s:num sent_s:num service_ms:num "
        "side:str",
    ),
    "summary": (
        "a load window's figures, or week 2's closing summary",
        "",
        "mode:str runtime:str where:obj? rate:num? duration_s:num connections:int scheduled:int "
        "sent:int completed:int passed:int dropped:int late:int achieved_rps:num p50_ms:num "
        "p95_ms:num p99_ms:num max_ms:num success_rate:num release:str stages_failed:list "
        "constraints_proven:int constraints_failed:int comparison:obj memory_peak_mb:num? "
        "cpu_max_percent:num? captured:int oom_kill:obj? exit_status:int side:str url:str",
    ),
    "metrics": (
        "one resource sample of the release, or of a Cloud Run revision's instances",
        "",
        "t_s:num rss_mb:num cpu_percent:num band:str cpu_band:str revision:str instance:str "
        "instances:int inflight:int instances_needed:int instance_requests:int demand:num "
        "cpu_utilization:num memory_utilization:num",
    ),
    "shutdown": (
        "the release stopped",
        "",
        "exit_status:int clean:bool stop_seconds:num uptime_s:num requests:int peak_rss_mb:num? "
        "release_shutdown:obj? memory_peak_mb:num? removed:bool leftovers:list pid:int url:str "
        "stopped:str",
    ),
    "image": (
        "an OCI image built from the release",
        "digest:str layout:str layers:list size_bytes:int tarball_bytes:int closure:list "
        "entrypoint:list user:str annotations:obj seconds:num",
        "left_out:obj",
    ),
    "push": (
        "an image pushed to a registry",
        "ref:str digest:str uploaded:int skipped:int bytes_sent:int seconds:num",
        "",
    ),
    "metric": (
        "one Cloud Monitoring query and the points it read",
        "metric:str filter:str aligner:str period_s:int end_s:int series:list",
        "window_s:int",
    ),
    "capture": ("the release's own stdout receipts", "count:int kinds:obj invalid_lines:int", ""),
    "error": ("what went wrong, once", "reason:str", "log_tail:list signal:str"),
    "operation": (
        "one pilot step and the release's answer",
        "step:str op_kind:str tenant:str event:str? expected:obj actual:obj differ:list "
        "matched:bool billable:bool",
        "endpoint:str latency_ms:num sent_s:num",
    ),
    "revenue": (
        "the pilot's billable operations, priced",
        "amount:num amount_text:str",
        "billable_operations:int operations:int price:num currency:str customer:str tenant:str "
        "scenario:str scenario_sha256:str consistent:bool",
    ),
    "environment": (
        "week 2: runsc and the probe sandbox's limits",
        "runsc:str version:str platform:str network:str host_kernel:str host_cpus:int "
        "cgroup:str limits:obj applied:obj probe:str probe_removed:bool oci_spec:str?",
        "",
    ),
    "config": (
        "week 2: the sandbox's environment and OCI settings",
        "env:obj redacted:list limits:obj mounts:list network:str root:obj user:obj",
        "",
    ),
    "sandbox": (
        "week 2: the sandbox started",
        "id:str bundle:str cgroup:str runsc_pid:int sandbox_pid:int?",
        "",
    ),
    "mount": (
        "week 2: what is bind-mounted, proven from inside",
        "source:str destination:str host:str type:str options:list read_only:bool proven_in:str",
        "",
    ),
    "resources": (
        "week 2: memory and CPU under load, from the cgroup",
        "memory_mb:num memory_peak_mb:num monitor_peak_mb:num memory_limit_mb:num "
        "memory_failcnt:int cpu_avg_percent:num cpu_max_percent:num cpu_throttled:int? "
        "samples:int source:obj",
        "",
    ),
    "constraint": (
        "week 2: one constraint proven (or not), with its evidence",
        "name:str passed:bool proof:str",
        "reason:str status:int exit_status:int output:str dmesg:str limit_mb:num "
        "cgroup_limit_mb:num inside_mb:num peak_mb:num failcnt:int oom_kill:bool in_cgroup:bool "
        "mount_options:list tmpfs_kb:int want_kb:int id_u:int want_uid:int process_uids:list "
        "processes:list release_user:obj sandbox_pid:int sandbox_root:obj cpus:num want_cpus:num "
        "cpu_quota_us:int cpu_period_us:int nr_throttled:int kernel_host:str kernel_inside:str "
        "budget_ms:num native:obj sandboxed:obj startup_delta_s:num p50_delta_ms:num "
        "p95_delta_ms:num",
    ),
    "oom": (
        "the kernel's OOM killer stopped the release",
        "failcnt:int oom_kills:int limit_mb:num max_usage_mb:num exit_status:int reason:str",
        "",
    ),
    "deploy": (
        "week 5: a revision deployed tagged, with no traffic",
        "revision:str stable:str? image:str first:bool service_uri:str",
        "seconds:num tag_uri:str unchanged:bool",
    ),
    "traffic": (
        "week 5: the split the service reports",
        "split:obj",
        "step:str percent:int revision:str",
    ),
    "analysis": (
        "week 5: one canary window judged",
        "passed:bool percent:int revision:str",
        "results:list backend:obj? skipped:str comparison:obj? baseline:str",
    ),
    "scale": (
        "week 5: the scaling the revision reports",
        "revision:str min_instances:int max_instances:int concurrency:int "
        "desired_min_instances:int? applied:bool",
        "",
    ),
    "drain": (
        "week 5: the old revision drained",
        "revision:str?",
        "how:str seconds:num deleted:list note:str",
    ),
    "rollback": (
        "week 5: traffic back on the stable revision",
        "reason:str to:str",
        "away_from:str",
    ),
    "gate": ("the verdict", "gate:str passed:bool reason:str? results:list", ""),
    "crashed": (
        "runs.recover closed a killed run",
        "reason:str last_receipt:str stopped:list removed:list dropped_bytes:int",
        "traffic:str",
    ),
    "seal": ("the last line", "count:int head:str", "hmac:str"),
}

_TYPES: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "num": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "obj": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list | tuple),
    "any": lambda v: True,
}


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    nullable: bool

    def accepts(self, value: Any) -> bool:
        return (value is None and self.nullable) or _TYPES[self.type](value)


@dataclass(frozen=True)
class Kind:
    name: str
    about: str
    required: Mapping[str, Field]
    optional: Mapping[str, Field]


def _fields(text: str) -> dict[str, Field]:
    out = {}
    for item in text.split():
        name, _, type_ = item.partition(":")
        nullable = type_.endswith("?")
        out[name] = Field(name, type_.rstrip("?"), nullable)
        assert out[name].type in _TYPES, item
    return out


KINDS: dict[str, Kind] = {
    name: Kind(name, about, _fields(required), _fields(optional))
    for name, (about, required, optional) in _DECLARED.items()
}


def problems(kind: str, fields: Mapping[str, Any]) -> list[str]:
    """What is wrong with a receipt of `kind` carrying `fields` (the common ones left out)."""
    declared = KINDS.get(kind)
    if declared is None:
        return [f"unknown kind {kind!r}"]
    found = []
    for name in declared.required:
        if name not in fields:
            found.append(f"{kind}: missing field {name!r}")
    for name, value in fields.items():
        field = declared.required.get(name) or declared.optional.get(name)
        if field is None:
            found.append(f"{kind}: undeclared field {name!r}")
        elif not field.accepts(value):
            want = field.type + (" or null" if field.nullable else "")
            found.append(f"{kind}: field {name!r} should be {want}, not {type(value).__name__}")
    return found


def checker() -> Callable[[str, Mapping[str, Any]], list[str]] | None:
    """`problems` when `PIPELINE_SCHEMA_CHECK=1`, else None (nothing checked)."""
    return problems if os.environ.get(CHECK_ENV) == "1" else None
