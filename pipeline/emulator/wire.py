"""The Admin API v2 wire format, as google.cloud.run_v2's REST transport speaks it.

lowerCamelCase JSON; enums arrive as integers (``$alt=json;enum-encoding=int``) or names and are
kept as names inside the emulator; replies use integers when the request asked for them.
Errors use Google's JSON error shape. Nothing here does I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

# --------------------------------------------------------------------------------------------
# errors


_STATUS_HTTP = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

# google.rpc.Code numbers, for the `error` of a failed long-running operation
RPC_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


class ApiError(Exception):
    """A refused call: HTTP status, Google's canonical status name and a message."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.http = _STATUS_HTTP.get(status, 500)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.http, "message": self.message, "status": self.status}}

    def rpc_status(self) -> dict[str, Any]:
        """The google.rpc.Status of a failed operation."""
        return {"code": RPC_CODES.get(self.status, 2), "message": self.message}


def invalid(message: str) -> ApiError:
    return ApiError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ApiError:
    return ApiError("NOT_FOUND", message)


# --------------------------------------------------------------------------------------------
# enums: the fields the emulator reads or writes, name ↔ number

ENUMS: dict[str, dict[str, int]] = {
    "IngressTraffic": {
        "INGRESS_TRAFFIC_UNSPECIFIED": 0,
        "INGRESS_TRAFFIC_ALL": 1,
        "INGRESS_TRAFFIC_INTERNAL_ONLY": 2,
        "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER": 3,
        "INGRESS_TRAFFIC_NONE": 4,
    },
    "LaunchStage": {
        "LAUNCH_STAGE_UNSPECIFIED": 0,
        "UNIMPLEMENTED": 6,
        "PRELAUNCH": 7,
        "EARLY_ACCESS": 1,
        "ALPHA": 2,
        "BETA": 3,
        "GA": 4,
        "DEPRECATED": 5,
    },
    "VpcEgress": {"VPC_EGRESS_UNSPECIFIED": 0, "ALL_TRAFFIC": 1, "PRIVATE_RANGES_ONLY": 2},
    "Medium": {"MEDIUM_UNSPECIFIED": 0, "MEMORY": 1},
    "ExecutionEnvironment": {
        "EXECUTION_ENVIRONMENT_UNSPECIFIED": 0,
        "EXECUTION_ENVIRONMENT_GEN1": 1,
        "EXECUTION_ENVIRONMENT_GEN2": 2,
    },
    "EncryptionKeyRevocationAction": {
        "ENCRYPTION_KEY_REVOCATION_ACTION_UNSPECIFIED": 0,
        "PREVENT_NEW": 1,
        "SHUTDOWN": 2,
    },
    "TrafficTargetAllocationType": {
        "TRAFFIC_TARGET_ALLOCATION_TYPE_UNSPECIFIED": 0,
        "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST": 1,
        "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION": 2,
    },
    "ScalingMode": {"SCALING_MODE_UNSPECIFIED": 0, "AUTOMATIC": 1, "MANUAL": 2},
    "State": {
        "STATE_UNSPECIFIED": 0,
        "CONDITION_PENDING": 1,
        "CONDITION_RECONCILING": 2,
        "CONDITION_FAILED": 3,
        "CONDITION_SUCCEEDED": 4,
    },
    "Severity": {"SEVERITY_UNSPECIFIED": 0, "ERROR": 1, "WARNING": 2, "INFO": 3},
    "CommonReason": {
        "COMMON_REASON_UNDEFINED": 0,
        "UNKNOWN": 1,
        "REVISION_FAILED": 3,
        "PROGRESS_DEADLINE_EXCEEDED": 4,
        "CONTAINER_MISSING": 6,
        "CONTAINER_PERMISSION_DENIED": 7,
        "CONTAINER_IMAGE_UNAUTHORIZED": 8,
        "CONTAINER_IMAGE_AUTHORIZATION_CHECK_FAILED": 9,
        "ENCRYPTION_KEY_PERMISSION_DENIED": 10,
        "ENCRYPTION_KEY_CHECK_FAILED": 11,
        "SECRETS_ACCESS_CHECK_FAILED": 12,
        "WAITING_FOR_OPERATION": 13,
        "IMMEDIATE_RETRY": 14,
        "POSTPONED_RETRY": 15,
        "INTERNAL": 16,
        "VPC_NETWORK_NOT_FOUND": 17,
    },
    "RevisionReason": {
        "REVISION_REASON_UNDEFINED": 0,
        "PENDING": 1,
        "RESERVE": 2,
        "RETIRED": 3,
        "RETIRING": 4,
        "RECREATING": 5,
        "HEALTH_CHECK_CONTAINER_ERROR": 6,
        "CUSTOMIZED_PATH_RESPONSE_PENDING": 7,
        "MIN_INSTANCES_NOT_PROVISIONED": 8,
        "ACTIVE_REVISION_LIMIT_REACHED": 9,
        "NO_DEPLOYMENT": 10,
        "HEALTH_CHECK_SKIPPED": 11,
        "MIN_INSTANCES_WARMING": 12,
    },
}

# where each enum lives: (path of keys, "[]" for "every item of a list") → enum
_ENUM_FIELDS: dict[tuple[str, ...], str] = {}


def _declare(enum: str, *paths: str) -> None:
    for path in paths:
        _ENUM_FIELDS[tuple(path.split("."))] = enum


_CONDITION = {"state": "State", "severity": "Severity", "reason": "CommonReason"}
_declare("IngressTraffic", "ingress")
_declare("LaunchStage", "launchStage")
_declare("ExecutionEnvironment", "template.executionEnvironment", "executionEnvironment")
_declare(
    "EncryptionKeyRevocationAction",
    "template.encryptionKeyRevocationAction",
    "encryptionKeyRevocationAction",
)
_declare("VpcEgress", "template.vpcAccess.egress", "vpcAccess.egress")
_declare("Medium", "template.volumes.[].emptyDir.medium", "volumes.[].emptyDir.medium")
_declare("TrafficTargetAllocationType", "traffic.[].type", "trafficStatuses.[].type")
_declare("ScalingMode", "scaling.scalingMode")
for _where in ("conditions.[]", "terminalCondition"):
    _declare("State", f"{_where}.state")
    _declare("Severity", f"{_where}.severity")
    _declare("CommonReason", f"{_where}.reason")
    _declare("RevisionReason", f"{_where}.revisionReason")

_PREFIXES = {path[:i] for path in _ENUM_FIELDS for i in range(1, len(path))}
_LISTS = {prefix for prefix in _PREFIXES if prefix[-1] == "[]"}


def _convert(value: Any, path: tuple[str, ...], to_int: bool) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            sub = (*path, key)
            enum = _ENUM_FIELDS.get(sub)
            if enum is not None:
                out[key] = enum_value(enum, inner, ".".join(k for k in sub if k != "[]"), to_int)
            elif sub in _PREFIXES:
                out[key] = _convert(inner, sub, to_int)
            else:
                out[key] = inner
        return out
    if isinstance(value, list) and (*path, "[]") in _LISTS:
        return [_convert(item, (*path, "[]"), to_int) for item in value]
    return value


def enum_value(enum: str, value: Any, field: str, to_int: bool = False) -> Any:
    """An enum given as a number or a name → its name (or number when `to_int`)."""
    table = ENUMS[enum]
    if isinstance(value, bool):
        raise invalid(f"{field}: expected an enum {enum}, got {value!r}")
    if isinstance(value, int):
        for name, number in table.items():
            if number == value:
                return number if to_int else name
        raise invalid(f"{field}: {value} is not a value of enum {enum}")
    if isinstance(value, str) and value in table:
        return table[value] if to_int else value
    raise invalid(f"{field}: {value!r} is not a value of enum {enum}")


def enums_to_names(resource: dict[str, Any]) -> dict[str, Any]:
    """Normalize every known enum of a request body to its name (400 on a bad value)."""
    result: dict[str, Any] = _convert(resource, (), False)
    return result


def render(resource: dict[str, Any], int_enums: bool) -> dict[str, Any]:
    """A resource for the wire: enums as numbers when the client asked for them."""
    if not int_enums:
        return resource
    result: dict[str, Any] = _convert(resource, (), True)
    return result


def wants_int_enums(alt: str | None) -> bool:
    """`$alt=json;enum-encoding=int` → True."""
    return bool(alt) and "enum-encoding=int" in (alt or "")


# --------------------------------------------------------------------------------------------
# scalars


def timestamp(epoch_s: float) -> str:
    """A google.protobuf.Timestamp in JSON: RFC 3339, UTC, `Z`."""
    dt = datetime.fromtimestamp(epoch_s, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}Z"


_DURATION = re.compile(r"^(-?\d+)(?:\.(\d{1,9}))?s$")


def duration_s(value: Any, field: str) -> float:
    """A google.protobuf.Duration in JSON ("300s", "1.5s") → seconds."""
    if isinstance(value, dict):  # {"seconds": N, "nanos": M} (some clients)
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            raise invalid(f"{field}: not a duration: {value!r}") from None
    if not isinstance(value, str) or not (m := _DURATION.match(value)):
        raise invalid(f'{field}: not a duration (like "300s"): {value!r}')
    seconds = float(m.group(1))
    if m.group(2):
        seconds += float("0." + m.group(2)) * (1 if seconds >= 0 else -1)
    return seconds


def duration(seconds: float) -> str:
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def as_int(value: Any, field: str, minimum: int = 0, maximum: int | None = None) -> int:
    """An int32/int64 field (JSON may carry int64 as a string)."""
    if isinstance(value, bool):
        raise invalid(f"{field}: expected an integer, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        value = int(value)
    if not isinstance(value, int):
        raise invalid(f"{field}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" to {maximum}" if maximum is not None else " or more"
        raise invalid(f"{field}: must be {minimum}{upper}, got {value}")
    return value


def as_bool(value: str | None, field: str) -> bool:
    """A boolean query parameter."""
    if value is None or value == "":
        return False
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise invalid(f"{field}: expected true or false, got {value!r}")


def field_mask(value: str | None) -> list[str] | None:
    """`updateMask=template.scaling,traffic` → ["template.scaling", "traffic"]; None if absent."""
    if value is None:
        return None
    paths = [p.strip() for p in value.split(",") if p.strip()]
    return [_camel_path(p) for p in paths]


def _camel_path(path: str) -> str:
    """Field mask paths may come in snake_case (gRPC style) or lowerCamelCase (JSON)."""
    return ".".join(
        re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), p) for p in path.split(".")
    )
