"""The control plane's records and constants: what a service, a revision and an operation are,
their names, the fields the API may write, and the plan the data plane runs. Plain data."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.emulator.health import HealthCheck
from pipeline.emulator.images import Image
from pipeline.emulator.wire import invalid

LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
DEFAULT_CONCURRENCY = 80
DEFAULT_MAX_INSTANCES = 100
DEFAULT_TIMEOUT_S = 300.0
MAX_OPERATIONS = 500
RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
TYPE_SERVICE = "type.googleapis.com/google.cloud.run.v2.Service"
TYPE_REVISION = "type.googleapis.com/google.cloud.run.v2.Revision"

_PROJECT = re.compile(r"^[a-z0-9][-a-z0-9.:]{0,62}$")
_LOCATION = re.compile(r"^[a-z][-a-z0-9]{0,62}$")
_SERVICE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
_REVISION_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_TAG = re.compile(r"^[a-z]([-a-z0-9]{0,44}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Service fields a client may write; everything else in a body is output only (and ignored).
WRITABLE = (
    "description",
    "labels",
    "annotations",
    "client",
    "clientVersion",
    "ingress",
    "launchStage",
    "binaryAuthorization",
    "template",
    "traffic",
    "scaling",
    "invokerIamDisabled",
    "defaultUriDisabled",
    "customAudiences",
    "iapEnabled",
    "threatDetectionEnabled",
    "multiRegionSettings",
    "buildConfig",
)
OUTPUT_ONLY = (
    "name",
    "uid",
    "generation",
    "createTime",
    "updateTime",
    "deleteTime",
    "expireTime",
    "creator",
    "lastModifier",
    "urls",
    "observedGeneration",
    "terminalCondition",
    "conditions",
    "latestReadyRevision",
    "latestCreatedRevision",
    "trafficStatuses",
    "uri",
    "satisfiesPzs",
    "reconciling",
    "etag",
)
_TEMPLATE_FIELDS = {
    "revision",
    "labels",
    "annotations",
    "scaling",
    "vpcAccess",
    "timeout",
    "serviceAccount",
    "containers",
    "volumes",
    "executionEnvironment",
    "encryptionKey",
    "maxInstanceRequestConcurrency",
    "serviceMesh",
    "encryptionKeyRevocationAction",
    "encryptionKeyShutdownDuration",
    "sessionAffinity",
    "healthCheckDisabled",
    "nodeSelector",
    "gpuZonalRedundancyDisabled",
}
_CONTAINER_FIELDS = {
    "name",
    "image",
    "sourceCode",
    "command",
    "args",
    "env",
    "resources",
    "ports",
    "volumeMounts",
    "workingDir",
    "livenessProbe",
    "startupProbe",
    "readinessProbe",
    "dependsOn",
    "baseImageUri",
    "buildInfo",
}


# --------------------------------------------------------------------------------------------
# names


def parent_of(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}"


def check_parent(project: str, location: str) -> str:
    if not _PROJECT.match(project):
        raise invalid(f"bad project {project!r} in projects/{project}/locations/{location}")
    if not _LOCATION.match(location):
        raise invalid(f"bad location {location!r} in projects/{project}/locations/{location}")
    return parent_of(project, location)


def check_service_id(service_id: str, where: str = "serviceId") -> str:
    if not service_id:
        raise invalid(f"{where} is required")
    if not _SERVICE_ID.match(service_id):
        raise invalid(
            f"{where} {service_id!r}: use 1-49 lowercase letters, digits or hyphens, "
            "starting with a letter and not ending with a hyphen"
        )
    return service_id


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# records


@dataclass
class RevisionRecord:
    name: str  # full resource name
    service: str  # full service name
    uid: str
    number: int
    template: dict[str, Any]  # the RevisionTemplate it was made from (enum names)
    image: Image
    create_time: float
    update_time: float
    state: str = "pending"  # pending | ready | failed
    message: str = ""
    ready_time: float | None = None
    instances_at_save: int = 0  # how many ran when the state was last saved (restored on restart)

    @property
    def id(self) -> str:
        return short(self.name)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "service": self.service,
            "uid": self.uid,
            "number": self.number,
            "template": self.template,
            "image": self.image.as_json(),
            "create_time": self.create_time,
            "update_time": self.update_time,
            "state": self.state,
            "message": self.message,
            "ready_time": self.ready_time,
            "instances_at_save": self.instances_at_save,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RevisionRecord:
        fields = dict(data)
        fields["image"] = Image.from_json(fields["image"])
        return cls(**fields)


@dataclass
class ServiceRecord:
    name: str
    uid: str
    spec: dict[str, Any]  # the writable fields (enum names), defaults filled in
    create_time: float
    update_time: float
    generation: int = 1
    observed_generation: int = 0
    latest_created: str | None = None  # full revision names
    latest_ready: str | None = None
    serving: list[dict[str, Any]] = field(default_factory=list)  # resolved targets in effect
    route_state: str = "pending"  # ready | pending | failed
    route_message: str = ""
    revision_counter: int = 0
    uri: str = ""
    tag_uris: dict[str, str] = field(default_factory=dict)
    route_version: int = 0  # bumped whenever `serving` changes
    applied_version: int = -1  # the route_version the data plane last put in place

    @property
    def id(self) -> str:
        return short(self.name)

    @property
    def etag(self) -> str:
        digest = hashlib.sha256(f"{self.uid}:{self.generation}".encode()).hexdigest()
        return f"W/{digest[:24]}"

    def as_json(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceRecord:
        return cls(**dict(data))


@dataclass
class OperationRecord:
    name: str
    kind: str  # create | update | delete_service | delete_revision
    target: str  # service or revision name
    generation: int = 0
    revision: str | None = None  # the revision the call created
    done: bool = False
    error: dict[str, Any] | None = None  # google.rpc.Status
    response: dict[str, Any] | None = None  # the resource (enum names), with its @type
    create_time: float = 0.0
    end_time: float | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OperationRecord:
        return cls(**dict(data))


# --------------------------------------------------------------------------------------------
# what the data plane runs


@dataclass(frozen=True)
class RevisionPlan:
    name: str  # full revision name
    service: str
    image: Image
    env: tuple[tuple[str, str], ...]
    concurrency: int
    min_instances: int
    max_instances: int
    timeout_s: float
    ready_path: str | None  # None: the env file's ready path (with its fallback)
    ready_timeout_s: float | None  # None: the env file's instance_ready_timeout_s
    state: str  # pending (start one to check it) | ready | failed
    active: bool  # serving traffic or a tag
    restore_instances: int = 0
    liveness: HealthCheck | None = None  # failing: the instance is killed and replaced
    readiness: HealthCheck | None = None  # failing: the instance gets no new requests
    cpu_limit: float = 1.0  # cores: Monitoring's cpu/utilizations are fractions of it
    memory_limit: int = 512 * 2**20  # bytes: memory/utilizations are fractions of it


@dataclass(frozen=True)
class ServicePlan:
    name: str
    uri: str  # the URL it had (a restart binds the same port when it can)
    tag_uris: tuple[tuple[str, str], ...]
    route_version: int
    routes: tuple[tuple[str, int], ...]  # (full revision name, percent > 0)
    tags: tuple[tuple[str, str], ...]  # (tag, full revision name)
    revisions: tuple[RevisionPlan, ...]


@dataclass
class Limits:
    """Emulator-wide limits from the env file."""

    max_instances_per_revision: int = 20
