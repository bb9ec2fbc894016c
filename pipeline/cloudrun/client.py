"""Cloud Run Admin API v2 through the official client (REST transport), and a fake of it.

`CloudRun` is the small interface the rollout uses; `RunV2` is the real adapter (it imports
`google.cloud.run_v2` — ~0.45 s — only when first used), `FakeCloudRun` an in-memory one shipped
for zero-time tests of the rollout's decisions. Every call of the real adapter is retried with
tenacity on 429, 503 and connection errors (exponential backoff, one overall deadline);
`update_service` re-reads and re-applies on 409/ABORTED (a stale etag).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential, wait_random

from pipeline.config import CloudRunSettings
from pipeline.errors import PipelineError

# ---------------------------------------------------------------- what the rollout sees


@dataclass(frozen=True)
class Route:
    revision: str | None  # None: the latest ready revision
    percent: int
    tag: str = ""


@dataclass(frozen=True)
class ServiceState:
    name: str
    uri: str
    etag: str
    generation: int
    latest_ready: str
    latest_created: str
    traffic: tuple[Route, ...]
    tag_uris: dict[str, str] = field(default_factory=dict)
    image: str = ""

    def percent_of(self, revision: str) -> int:
        return sum(r.percent for r in self.traffic if (r.revision or self.latest_ready) == revision)

    def serving(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for route in self.traffic:
            name = route.revision or self.latest_ready
            if route.percent:
                out[name] = out.get(name, 0) + route.percent
        return out


@dataclass(frozen=True)
class RevisionState:
    name: str
    ready: bool
    failed_reason: str | None
    min_instances: int
    max_instances: int
    concurrency: int
    desired_min_instances: int | None
    image: str = ""


@dataclass(frozen=True)
class Template:
    """What a deploy changes: the revision's image, environment and limits."""

    image: str
    env: dict[str, str]
    min_instances: int
    max_instances: int
    concurrency: int
    cpu: str
    memory: str
    timeout_s: int
    startup_probe_path: str
    liveness_probe_path: str
    service_account: str | None = None

    @classmethod
    def of(cls, settings: CloudRunSettings, image: str) -> Template:
        return cls(
            image,
            dict(settings.env),
            settings.min_instances,
            settings.max_instances,
            settings.concurrency,
            settings.cpu,
            settings.memory,
            settings.timeout_s,
            settings.startup_probe_path,
            settings.liveness_probe_path,
            settings.service_account,
        )


class DeployFailed(Exception):
    """The new revision never got ready; the service keeps serving its previous traffic."""


class CloudRun(Protocol):
    def get_service(self) -> ServiceState | None: ...

    def deploy(self, template: Template, traffic: list[Route] | None) -> ServiceState: ...

    def set_traffic(self, routes: list[Route]) -> ServiceState: ...

    def set_scaling(
        self, min_instances: int, max_instances: int, concurrency: int
    ) -> ServiceState: ...

    def get_revision(self, name: str) -> RevisionState: ...

    def list_revisions(self) -> list[RevisionState]: ...

    def delete_revision(self, name: str) -> None: ...


# ---------------------------------------------------------------- the real adapter


def _transient(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    try:
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError):
            return True
    except ImportError:  # pragma: no cover - requests comes with google-api-core
        pass
    return isinstance(exc, gexc.TooManyRequests | gexc.ServiceUnavailable)


def is_deploy_failure(exc: Exception) -> bool:
    """A deploy refused for the revision itself (FAILED_PRECONDITION, or an operation that
    ended because the revision never got ready), not a call that failed on its way."""
    from google.api_core import exceptions as gexc

    return (
        isinstance(exc, gexc.FailedPrecondition)
        or _rest_status(exc) == "FAILED_PRECONDITION"  # over REST: a 400 saying so in its body
        or bool(re.search(r"\bready\b", str(exc), re.IGNORECASE))  # not "already exists"
    )


def _rest_status(exc: Exception) -> str | None:
    try:
        return str(getattr(exc, "response", None).json()["error"]["status"])  # type: ignore[union-attr]
    except Exception:
        return None


class RunV2:
    """ServicesClient / RevisionsClient over REST; `endpoint` None means Google itself."""

    def __init__(
        self,
        settings: CloudRunSettings,
        *,
        endpoint: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_initial: float = 0.02,
        poll_max: float = 0.5,
    ):
        self.settings = settings
        self.endpoint = endpoint if endpoint is not None else settings.endpoint
        self.parent = f"projects/{settings.project}/locations/{settings.region}"
        self.service_name = f"{self.parent}/services/{settings.service}"
        self._sleep = sleep
        self._poll = (poll_initial, poll_max)
        self._clients: tuple[Any, Any] | None = None

    # --- plumbing

    def _api(self) -> tuple[Any, Any]:
        if self._clients is None:
            from google.cloud import run_v2

            options: dict[str, Any] = {}
            credentials = None
            if self.endpoint:
                from google.auth.credentials import AnonymousCredentials

                options["api_endpoint"] = self.endpoint
                credentials = AnonymousCredentials()  # the local emulator; Google uses ADC
            self._clients = (
                run_v2.ServicesClient(
                    transport="rest", credentials=credentials, client_options=options
                ),
                run_v2.RevisionsClient(
                    transport="rest", credentials=credentials, client_options=options
                ),
            )
        return self._clients

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.05),
            stop=stop_after_delay(self.settings.api_deadline_s),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except Exception as exc:
            if _transient(exc):
                raise PipelineError(
                    f"Cloud Run API at {self.endpoint or 'run.googleapis.com'}: {what} still failing after "
                    f"{self.settings.api_deadline_s:g} s: {exc}"
                ) from None
            raise

    def _wait(self, operation: Any) -> Any:
        from google.api_core.future import polling

        initial, maximum = self._poll
        retry = polling.DEFAULT_POLLING.with_delay(initial=initial, maximum=maximum)
        # a 429/503 while polling ends result() without finishing the operation: poll again
        return self._call(
            "wait for the operation",
            lambda: operation.result(timeout=self.settings.api_deadline_s, polling=retry),
        )

    # --- conversions

    @staticmethod
    def _service(svc: Any) -> ServiceState:
        routes = []
        for target in svc.traffic:
            latest = int(target.type_) == 1
            routes.append(
                Route(None if latest else target.revision, int(target.percent), target.tag)
            )
        tag_uris = {status.tag: status.uri for status in svc.traffic_statuses if status.tag}
        image = svc.template.containers[0].image if svc.template.containers else ""
        return ServiceState(
            svc.name,
            svc.uri,
            svc.etag,
            int(svc.generation),
            svc.latest_ready_revision.rsplit("/", 1)[-1],
            svc.latest_created_revision.rsplit("/", 1)[-1],
            tuple(routes),
            tag_uris,
            image,
        )

    def _traffic(self, routes: list[Route]) -> list[Any]:
        from google.cloud import run_v2

        out = []
        for route in routes:
            if route.revision is None:
                out.append(run_v2.TrafficTarget(type_=1, percent=route.percent, tag=route.tag))
            else:
                out.append(
                    run_v2.TrafficTarget(
                        type_=2, revision=route.revision, percent=route.percent, tag=route.tag
                    )
                )
        return out

    def _template(self, template: Template) -> Any:
        from google.cloud import run_v2
        from google.protobuf import duration_pb2

        def probe(path: str) -> Any:
            return run_v2.Probe(
                http_get=run_v2.HTTPGetAction(path=path), period_seconds=1, failure_threshold=30
            )

        container = run_v2.Container(
            image=template.image,
            env=[run_v2.EnvVar(name=k, value=v) for k, v in sorted(template.env.items())],
            ports=[run_v2.ContainerPort(container_port=8080)],
            resources=run_v2.ResourceRequirements(
                limits={"cpu": template.cpu, "memory": template.memory}
            ),
            startup_probe=probe(template.startup_probe_path),
            liveness_probe=probe(template.liveness_probe_path),
        )
        return run_v2.RevisionTemplate(
            containers=[container],
            scaling=run_v2.RevisionScaling(
                min_instance_count=template.min_instances, max_instance_count=template.max_instances
            ),
            max_instance_request_concurrency=template.concurrency,
            timeout=duration_pb2.Duration(seconds=template.timeout_s),
            service_account=template.service_account or "",
        )

    def _binary_authorization(self) -> Any:
        """`[cloudrun] binary_authorization` as the service's field (None: leave it as is)."""
        from google.cloud import run_v2

        chosen = self.settings.binary_authorization
        if not chosen:
            return None
        if chosen == "default":
            return run_v2.BinaryAuthorization(use_default=True)
        return run_v2.BinaryAuthorization(policy=chosen)

    # --- the interface

    def get_service(self) -> ServiceState | None:
        from google.api_core import exceptions as gexc

        services, _ = self._api()
        try:
            return self._service(
                self._call("get service", lambda: services.get_service(name=self.service_name))
            )
        except gexc.NotFound:
            return None

    def _update(self, what: str, change: Callable[[Any], None]) -> ServiceState:
        """Read, change, write with the etag; on 409/ABORTED read again and re-apply."""
        from google.api_core import exceptions as gexc

        services, _ = self._api()
        for attempt in itertools.count():
            current = self._call(
                "get service", lambda: services.get_service(name=self.service_name)
            )
            change(current)
            try:
                operation = self._call(what, partial(services.update_service, service=current))
                return self._service(self._wait(operation))
            except (gexc.Aborted, gexc.Conflict):
                if attempt >= 5:
                    raise
        raise AssertionError("unreachable")

    def deploy(self, template: Template, traffic: list[Route] | None) -> ServiceState:
        from google.api_core import exceptions as gexc
        from google.cloud import run_v2

        services, _ = self._api()
        try:
            authorization = self._binary_authorization()
            if self.get_service() is None:
                service = run_v2.Service(
                    template=self._template(template), binary_authorization=authorization
                )
                operation = self._call(
                    "create service",
                    lambda: services.create_service(
                        parent=self.parent, service=service, service_id=self.settings.service
                    ),
                )
                return self._service(self._wait(operation))

            def change(svc: Any) -> None:
                svc.template = self._template(template)
                if authorization is not None:
                    svc.binary_authorization = authorization
                if traffic is not None:
                    svc.traffic = self._traffic(traffic)

            return self._update("deploy", change)
        except gexc.GoogleAPICallError as exc:
            if is_deploy_failure(exc):
                raise DeployFailed(str(exc)) from None
            raise

    def set_traffic(self, routes: list[Route]) -> ServiceState:
        def change(svc: Any) -> None:
            svc.traffic = self._traffic(routes)

        return self._update("set traffic", change)

    def set_scaling(self, min_instances: int, max_instances: int, concurrency: int) -> ServiceState:
        def change(svc: Any) -> None:
            svc.template.scaling.min_instance_count = min_instances
            svc.template.scaling.max_instance_count = max_instances
            svc.template.max_instance_request_concurrency = concurrency

        return self._update("set scaling", change)

    def _revision(self, rev: Any) -> RevisionState:
        failed = None
        ready = False
        for condition in rev.conditions:
            if condition.type_ == "Ready":
                ready = int(condition.state) == 4  # CONDITION_SUCCEEDED
                if int(condition.state) == 3:  # CONDITION_FAILED
                    failed = condition.message or condition.reason or "failed"
        status = rev.scaling_status
        image = rev.containers[0].image if rev.containers else ""
        return RevisionState(
            rev.name.rsplit("/", 1)[-1],
            ready,
            failed,
            int(rev.scaling.min_instance_count),
            int(rev.scaling.max_instance_count),
            int(rev.max_instance_request_concurrency),
            int(status.desired_min_instance_count) if status else None,
            image,
        )

    def get_revision(self, name: str) -> RevisionState:
        _, revisions = self._api()
        full = f"{self.service_name}/revisions/{name}"
        return self._revision(self._call("get revision", lambda: revisions.get_revision(name=full)))

    def list_revisions(self) -> list[RevisionState]:
        _, revisions = self._api()
        pages = self._call(
            "list revisions", lambda: list(revisions.list_revisions(parent=self.service_name))
        )
        return [self._revision(rev) for rev in pages]

    def delete_revision(self, name: str) -> None:
        _, revisions = self._api()
        full = f"{self.service_name}/revisions/{name}"
        operation = self._call("delete revision", lambda: revisions.delete_revision(name=full))
        self._wait(operation)


# ---------------------------------------------------------------- the fake, for zero-time tests


class FakeCloudRun:
    """In memory: revisions are ready at once unless their image is in `failing_images`."""

    def __init__(self, service: str = "svc", *, failing_images: tuple[str, ...] = ()):
        self.service = service
        self.failing_images = failing_images
        self.state: ServiceState | None = None
        self.revisions: dict[str, RevisionState] = {}
        self.calls: list[str] = []
        self._serial = itertools.count(1)

    def get_service(self) -> ServiceState | None:
        self.calls.append("get_service")
        return self.state

    def _new_revision(self, template: Template) -> str:
        name = f"{self.service}-{next(self._serial):05d}-abc"
        failed = "never ready" if template.image in self.failing_images else None
        self.revisions[name] = RevisionState(
            name,
            failed is None,
            failed,
            template.min_instances,
            template.max_instances,
            template.concurrency,
            template.min_instances,
            template.image,
        )
        if failed:
            raise DeployFailed(f"revision {name} failed: {failed}")
        return name

    def deploy(self, template: Template, traffic: list[Route] | None) -> ServiceState:
        self.calls.append("deploy")
        name = self._new_revision(template)
        if self.state is None:
            routes: tuple[Route, ...] = (Route(None, 100),)
            self.state = ServiceState(
                self.service, "http://svc", "e1", 1, name, name, routes, {}, template.image
            )
        else:
            routes = tuple(traffic) if traffic is not None else (Route(None, 100),)
            self.state = replace(
                self.state,
                latest_ready=name,
                latest_created=name,
                traffic=routes,
                generation=self.state.generation + 1,
                image=template.image,
            )
        return self._with_tags()

    def set_traffic(self, routes: list[Route]) -> ServiceState:
        self.calls.append(
            "set_traffic:"
            + ",".join(f"{r.revision}={r.percent}{'#' + r.tag if r.tag else ''}" for r in routes)
        )
        assert self.state is not None
        if sum(r.percent for r in routes) != 100:
            raise PipelineError("traffic percentages must sum to 100")
        self.state = replace(
            self.state, traffic=tuple(routes), generation=self.state.generation + 1
        )
        return self._with_tags()

    def _with_tags(self) -> ServiceState:
        assert self.state is not None
        tags = {r.tag: f"http://{r.tag}---svc" for r in self.state.traffic if r.tag}
        self.state = replace(self.state, tag_uris=tags)
        return self.state

    def set_scaling(self, min_instances: int, max_instances: int, concurrency: int) -> ServiceState:
        self.calls.append(f"set_scaling:{min_instances}-{max_instances}/{concurrency}")
        assert self.state is not None
        name = self.state.latest_ready
        self.revisions[name] = replace(
            self.revisions[name],
            min_instances=min_instances,
            max_instances=max_instances,
            concurrency=concurrency,
            desired_min_instances=min_instances,
        )
        return self.state

    def get_revision(self, name: str) -> RevisionState:
        return self.revisions[name]

    def list_revisions(self) -> list[RevisionState]:
        return list(self.revisions.values())

    def delete_revision(self, name: str) -> None:
        self.calls.append(f"delete:{name}")
        assert self.state is not None
        if self.state.percent_of(name):
            raise PipelineError(f"revision {name} still has traffic")
        del self.revisions[name]
