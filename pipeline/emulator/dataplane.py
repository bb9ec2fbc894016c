"""The data plane: listeners for service and tag URLs, revision pools, instances, autoscaling.

It runs what the control plane's `plan()` says, on the emulator's event loop. Instances are
started and stopped through the runtime interface only (`Runtime.start(LaunchSpec)`,
`Instance.wait_ready/alive/stop/stats/logs`), always in an executor thread since that interface
is blocking. Releases are extracted once per tarball sha256 under `<state>/releases/`.

Autoscaling, per revision, every `scale_interval_s`: the demand is the most requests that were in
flight or queued at once; it wants ceil(peak demand over the last `scale_in_delay_s` /
concurrency) instances, between its min and max. A request that finds every instance busy starts
one at once (cold start) when the max allows. A revision without traffic or tag wants none: its
instances drain (no new requests, in-flight ones finish), then SIGTERM, `shutdown_grace_s`,
SIGKILL. A dead instance is forgotten and replaced by the same rule; so is one that fails its
liveness probe (killed at once), while one failing readiness only leaves the rotation (health.py).

Why ~780 lines: the instance lifecycle (start, health, drain, stop, replace) and the autoscaler
act on the same per-revision state on one event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.emulator import health, router
from pipeline.emulator.control import ControlPlane
from pipeline.emulator.host import HostClient, HostError, RemoteInstance
from pipeline.emulator.records import RevisionPlan, ServicePlan
from pipeline.emulator.router import DRAINING, READY, STARTING, STOPPED, Listener, Pool, Route, Slot
from pipeline.emulator.samples import InstanceSamples
from pipeline.waiting import apoll

log = logging.getLogger("pipeline.emulator")

_FAILED_LOG_LINES = 5
_STARTING_GRACE_S = 1.0


class RevisionRuntime:
    """One revision in the data plane: its pool, its instances and its scaling history."""

    def __init__(self, dp: DataPlane, plan: RevisionPlan):
        self.dp = dp
        self.plan = plan
        self.name = plan.name
        self.short = plan.name.rsplit("/", 1)[-1]
        self.pool = Pool(
            plan.name,
            concurrency=plan.concurrency,
            timeout_s=plan.timeout_s,
            queue_timeout_s=dp.settings.queue_timeout_s,
            want_instance=self._want_instance,
            on_idle=self._on_idle,
            on_suspect=self._on_suspect,
        )
        self.pool.max_instances = plan.max_instances
        self.history: collections.deque[tuple[float, int]] = collections.deque()
        self.counter = 0
        self.checking = False
        self.failures = 0
        self.backoff_until = 0.0
        self.last_failure: dict[str, Any] | None = None
        self.retired = False
        self.restored = False
        self.busy = 0  # instance tasks still launching or stopping
        self.fresh_until = 0.0  # a revision just checked keeps its instance a while
        self.health: dict[str, dict[str, health.Tally]] = {}  # slot id → kind → results
        self.watchers: dict[str, list[asyncio.Task[Any]]] = {}  # slot id → its health checks
        self.instance_history: collections.deque[tuple[float, int, int]] = collections.deque(
            maxlen=14400
        )  # (wall time, ready, starting or draining) per tick: Monitoring's instance_count
        self.samples = InstanceSamples()  # Monitoring's per-instance concurrency and usage

    # ---- scaling

    def live(self) -> list[Slot]:
        return [s for s in self.pool.slots if s.state in (STARTING, READY)]

    def _want_instance(self, pool: Pool) -> None:
        if self.retired or self.plan.state != "ready" or self.dp.closing:
            return
        starting = sum(1 for s in pool.slots if s.state == STARTING)
        if starting * pool.concurrency >= len(pool.queue):
            return
        if len(self.live()) >= self.plan.max_instances:
            return
        if time.monotonic() < self.backoff_until:
            return
        self.start_instance()

    def desired(self, now: float) -> int:
        pool = self.pool
        demand = pool.peak
        pool.peak = pool.inflight + len(pool.queue)
        self.history.append((now, demand))
        horizon_s = self.dp.settings.scale_in_delay_s
        horizon = now - horizon_s
        while len(self.history) > 1 and self.history[0][0] < horizon:
            self.history.popleft()
        if self.plan.state != "ready" or self.retired:
            return 0
        if not self.plan.active:
            if pool.queue or now < self.fresh_until:
                return min(len(self.live()), self.plan.max_instances)
            return 0
        self.fresh_until = 0.0
        peak = max(d for _, d in self.history)
        wanted = math.ceil(peak / pool.concurrency)
        young = sum(1 for s in pool.ready if s.ready_at and now - s.ready_at < horizon_s)
        wanted = max(wanted, young)  # an instance lives at least scale_in_delay_s
        if self.restored:
            wanted = max(wanted, self.plan.restore_instances)
        return max(self.plan.min_instances, min(wanted, self.plan.max_instances))

    def tick(self, now: float) -> None:
        pool = self.pool
        pool.sweep()
        serving = len(pool.ready)
        wall = time.time()
        self.instance_history.append((wall, serving, len(pool.slots) - serving))
        self.samples.tick(pool.slots, pool.ready, wall)
        if self.samples.usage_due(wall) and pool.slots:
            self.dp.spawn(
                self.samples.sample_usage(
                    list(pool.slots), self.plan.cpu_limit, self.plan.memory_limit
                )
            )
        if self.checking:
            return
        want = self.desired(now)
        live = self.live()
        if len(live) < want and time.monotonic() >= self.backoff_until:
            for _ in range(want - len(live)):
                self.start_instance()
        elif len(live) > want:
            # a cold start under way is let finish (it was wanted a moment ago), unless the
            # revision wants no instance at all any more
            starting = [s for s in live if s.state == STARTING] if want == 0 else []
            ready = sorted(
                (s for s in live if s.state == READY), key=lambda s: (s.inflight, -s.started_at)
            )
            extra = len(live) - want
            for slot in starting:
                self.stop_slot(slot)
            for slot in ready[: max(0, extra - len(starting))]:
                pool.drain(slot)
        if self.restored and want <= len(self.live()):
            self.restored = False

    # ---- instances

    def start_instance(self, check: bool = False) -> Slot:
        self.counter += 1
        slot = Slot(self.pool, f"{self.short}-{self.counter}")
        self.pool.add(slot)
        self.busy += 1
        self.dp.spawn(self._busy(self._run_instance(slot, check)))
        return slot

    async def _busy(self, coro: Any) -> None:
        try:
            await coro
        finally:
            self.busy -= 1
            self.dp.poke()

    async def _run_instance(self, slot: Slot, check: bool) -> None:
        dp = self.dp
        workdir = dp.state_dir / "instances" / slot.id
        try:
            release = await dp.release_for(self.plan)
            spec = await dp.blocking(self._launch_spec, release, workdir)
            handle = await dp.host.launch(spec)
        except Exception as exc:  # extraction or launch failed
            self._start_failed(slot, check, f"the instance could not start: {exc}", [])
            await self._cleanup(slot)
            return
        slot.handle = handle
        dp.by_instance[handle.id] = (self, slot)
        parts = urlsplit(handle.url)
        slot.host, slot.port = parts.hostname or "127.0.0.1", int(parts.port or 0)
        dp.instances_changed()
        if slot.state == STOPPED:  # removed while it was starting
            await self._stop(slot)
            return
        timeout = self.plan.ready_timeout_s or dp.settings.instance_ready_timeout_s
        try:
            await handle.wait_ready(timeout)
        except HostError as exc:
            reason = exc.reason if exc.kind == "startup_failed" else f"readiness check: {exc}"
            await self._stop(slot, 0.0)
            self._start_failed(slot, check, reason, exc.log_tail)
            return
        if slot.state == STOPPED or dp.closing:
            await self._stop(slot)
            return
        self.failures = 0
        if check:
            self.plan = replace(self.plan, state="ready")
            self.fresh_until = time.monotonic() + dp.settings.scale_in_delay_s
        self.pool.slot_ready(slot)
        self._watch_health(slot)
        log.info("%s: instance %s ready at %s", self.short, slot.id, handle.url)
        dp.instances_changed()
        if check:
            self.checking = False
            dp.control.revision_ready(self.name)

    def _launch_spec(self, release: Any, workdir: Path) -> dict[str, Any]:
        """A LaunchSpec (as JSON for the host), with a fresh TMPDIR for the instance."""
        dp = self.dp
        tmp = workdir / "tmp"
        shutil.rmtree(workdir, ignore_errors=True)
        tmp.mkdir(parents=True)
        env = dict(self.plan.env)
        env.update(
            {
                "TMPDIR": str(tmp),
                "HOME": str(tmp),
                "ERL_CRASH_DUMP": str(tmp / "erl_crash.dump"),
                "HTTP_HOST": "127.0.0.1",
            }
        )
        start = dp.env.start
        image = self.plan.image
        extra: dict[str, Any] = {}
        if image.rootfs:  # the gvisor runtime runs the image's root; the process one its release
            facts = image.start_facts()
            extra["image"] = {k: facts[k] for k in ("argv", "env", "uid", "gid", "cwd")}
            extra["image"]["rootfs"] = image.rootfs
        return {
            **extra,
            "root": str(release.root),
            "name": release.info.name,
            "env": env,
            "port": 0,
            "host": "127.0.0.1",
            "ready_path": self.plan.ready_path or start.ready_path,
            "fallback_ready_path": "" if self.plan.ready_path else start.fallback_ready_path,
            "poll_interval_s": start.poll_interval_s,
            "run_id": f"emulator-{self.short}",
        }

    def _start_failed(self, slot: Slot, check: bool, reason: str, tail: list[str]) -> None:
        self.pool.remove(slot)
        if self.dp.closing:
            return
        lines = [line for line in tail if line.strip()][-_FAILED_LOG_LINES:]
        self.last_failure = {"instance": slot.id, "reason": reason, "log_tail": lines}
        log.warning("%s: instance %s failed to start: %s", self.short, slot.id, reason)
        self.dp.instances_changed()
        if check:
            self.checking = False
            self.plan = replace(self.plan, state="failed")
            last = f" Last log line: {lines[-1][:300]}" if lines else ""
            self.dp.control.revision_failed(
                self.name,
                "The user-provided container failed the startup probe and never got ready: "
                f"{reason}.{last}",
            )
            return
        self.failures += 1
        self.backoff_until = time.monotonic() + min(30.0, 0.5 * 2**self.failures)
        if not any(s.state in (STARTING, READY) for s in self.pool.slots):
            # nothing will serve the queue: answer it now rather than after the queue timeout
            while self.pool.queue:
                client = self.pool.queue.popleft()
                if not client.closed:
                    self.pool.answer(
                        client, 503, "Service Unavailable", f"no instance could start: {reason}"
                    )

    def lost(self, slot: Slot) -> None:
        """The instance died on its own: forget it; its in-flight requests fail."""
        if slot.state == STOPPED:
            return
        log.warning("%s: instance %s exited on its own; replacing it", self.short, slot.id)
        self.last_failure = {"instance": slot.id, "reason": "exited on its own", "log_tail": []}
        slot.abort_all()
        self.stop_slot(slot)
        self.pool.kick()
        self.dp.poke()

    # ---- health checks (liveness and readiness probes)

    def _watch_health(self, slot: Slot) -> None:
        checks = [c for c in (self.plan.liveness, self.plan.readiness) if c is not None]
        if not checks:
            return
        tallies = self.health[slot.id] = {}
        tasks = self.watchers[slot.id] = []
        for check in checks:
            tally = tallies[check.kind] = health.Tally(check)
            on_change = functools.partial(self._health_changed, slot)
            tasks.append(self.dp.spawn(health.watch(tally, (slot.host, slot.port), on_change)))

    def stop_health_checks(self, slot: Slot) -> None:
        for task in self.watchers.pop(slot.id, []):
            if task is not asyncio.current_task():
                task.cancel()

    def _health_changed(self, slot: Slot, healthy: bool, tally: health.Tally) -> bool:
        """Acts on what a health check decided; False: stop checking this instance."""
        if slot.state == STOPPED:
            return False
        if tally.check.kind == health.LIVENESS:
            self.kill(
                slot,
                f"liveness probe failed {tally.failures} times in a row: {tally.last_error}",
            )
            return False
        if healthy:
            log.info("%s: instance %s passes its readiness probe again", self.short, slot.id)
            self.pool.back_in_rotation(slot)
        else:
            log.warning(
                "%s: instance %s failed its readiness probe %d times in a row (%s): "
                "no new requests for it",
                self.short,
                slot.id,
                tally.failures,
                tally.last_error,
            )
            self.pool.out_of_rotation(slot)
            self.dp.poke()
        self.dp.instances_changed()
        return True

    def kill(self, slot: Slot, reason: str) -> None:
        """Shut the instance down at once with SIGKILL (as Cloud Run does when liveness fails):
        its in-flight requests are answered 503, and the autoscaler replaces it."""
        if slot.state == STOPPED:
            return
        log.warning("%s: instance %s killed: %s", self.short, slot.id, reason)
        self.last_failure = {"instance": slot.id, "reason": reason, "log_tail": []}
        slot.killed = f"the instance was shut down: {reason}"
        self.pool.remove(slot)
        slot.abort_all()
        if slot.handle is not None:
            self.busy += 1
            self.dp.spawn(self._busy(self._stop(slot, 0.0)))
        self.pool.kick()
        self.dp.instances_changed()

    def _on_suspect(self, slot: Slot) -> None:
        """The router could not reach the instance: no new requests for it, and check it."""
        if slot.state == READY:
            log.warning("%s: instance %s unreachable; draining it", self.short, slot.id)
            self.pool.drain(slot)
            self.dp.poke()

    def _on_idle(self, slot: Slot) -> None:
        if slot.state == DRAINING:
            self.stop_slot(slot)

    def stop_slot(self, slot: Slot) -> None:
        if slot.state == STOPPED:
            return
        self.pool.remove(slot)
        if slot.handle is None:
            return  # still launching: its task stops it when the launch returns
        self.busy += 1
        self.dp.spawn(self._busy(self._stop(slot)))

    async def _stop(self, slot: Slot, grace: float | None = None) -> None:
        slot.state = STOPPED
        self.stop_health_checks(slot)
        handle = slot.handle
        if handle is not None and not handle.stopped:
            handle.stopped = True
            if grace is None:
                grace = 0.0 if self.dp.killing else self.dp.settings.shutdown_grace_s
                if slot.ready_at is None:  # never served: no request to let finish
                    grace = min(grace, _STARTING_GRACE_S)
            try:
                status = await handle.stop(grace)
                log.info("%s: instance %s stopped (exit %s)", self.short, slot.id, status)
            except HostError as exc:
                log.warning("%s: stopping %s: %s", self.short, slot.id, exc)
            self.dp.by_instance.pop(handle.id, None)
            self.dp.host.forget(handle)
        await self._cleanup(slot)

    async def _cleanup(self, slot: Slot) -> None:
        slot.state = STOPPED
        self.health.pop(slot.id, None)
        slot.abort_all()
        workdir = self.dp.state_dir / "instances" / slot.id
        await self.dp.blocking(shutil.rmtree, workdir, True)
        self.dp.instances_changed()

    def check(self) -> None:
        """A new revision: start one instance; its readiness decides the revision's."""
        if self.checking:
            return
        self.checking = True
        self.start_instance(check=True)

    def retire(self) -> None:
        """Deleted: no new requests; drain everything."""
        self.retired = True
        self.pool.close()
        for slot in list(self.pool.slots):
            if slot.state == STARTING:
                self.stop_slot(slot)
            else:
                self.pool.drain(slot)

    def finished(self) -> bool:
        return self.retired and not self.pool.slots and self.busy == 0

    def counts(self) -> dict[str, int]:
        return self.pool.counts()


class ServiceRuntime:
    def __init__(self, name: str):
        self.name = name
        self.listener = Listener(name, Route([]))
        self.tags: dict[str, Listener] = {}
        self.revisions: set[str] = set()


class DataPlane:
    def __init__(
        self,
        *,
        control: ControlPlane,
        env: Any,
        host: HostClient,
        state_dir: Path,
        on_instances: Callable[[], None] = lambda: None,
    ):
        self.control = control
        self.env = env
        self.settings = env.emulator
        self.host = host
        self.by_instance: dict[str, tuple[RevisionRuntime, Slot]] = {}
        self.state_dir = state_dir
        self.on_instances = on_instances
        self.services: dict[str, ServiceRuntime] = {}
        self.revisions: dict[str, RevisionRuntime] = {}
        self.executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="emulator-io")
        self.tasks: set[asyncio.Task[Any]] = set()
        self.releases: dict[str, Any] = {}
        self.release_locks: dict[str, asyncio.Lock] = {}
        self.closing = False
        self.killing = False
        self._dirty = False
        self._applying: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping: dict[str, int] = {}
        self._wake = asyncio.Event()

    # ---- plumbing

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("emulator task failed", exc_info=task.exception())

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def instances_changed(self) -> None:
        if self.closing:  # keep the counts of before the shutdown: a restart brings them back
            return
        self.control.note_instances(
            {name: len(rr.live()) for name, rr in self.revisions.items() if not rr.retired}
        )
        self.on_instances()
        self.poke()

    def instance_exited(self, instance: RemoteInstance) -> None:
        """The host saw an instance die on its own."""
        found = self.by_instance.get(instance.id)
        if found is not None:
            rr, slot = found
            if slot.state in (READY, DRAINING):
                rr.lost(slot)

    def poke(self) -> None:
        self._wake.set()

    def instance_counts(self, revision: str) -> dict[str, int]:
        rr = self.revisions.get(revision)
        return rr.counts() if rr is not None else {}

    def pids(self) -> list[int]:
        out = []
        for rr in self.revisions.values():
            for slot in rr.pool.slots:
                if slot.handle is not None:
                    out.append(int(slot.handle.pid))
        return out

    async def release_for(self, plan: RevisionPlan) -> Any:
        from pipeline import release as releases

        if plan.image.rootfs:  # a registry image: its release is already unpacked
            from pipeline.emulator.images import ImageRelease

            return await self.blocking(ImageRelease.of, plan.image)
        sha = plan.image.sha256
        if sha in self.releases:
            return self.releases[sha]
        lock = self.release_locks.setdefault(sha, asyncio.Lock())
        async with lock:
            if sha not in self.releases:
                dest = self.state_dir / "releases" / sha[:16]
                limits = self.env.release

                def extract() -> Any:
                    if dest.exists():
                        shutil.rmtree(dest)
                    return releases.extract(
                        Path(plan.image.tarball),
                        dest,
                        max_files=limits.max_files,
                        max_bytes=limits.max_bytes,
                    )

                self.releases[sha] = await self.blocking(extract)
        return self.releases[sha]

    # ---- applying the plan

    def request_apply(self) -> None:
        self._dirty = True
        if self._applying is None or self._applying.done():
            self._applying = self.spawn(self._apply_loop())

    async def _apply_loop(self) -> None:
        while self._dirty and not self.closing:
            self._dirty = False
            await self.apply(self.control.plan())

    async def apply(self, plans: list[ServicePlan]) -> None:
        wanted = {sp.name for sp in plans}
        for sp in plans:
            await self._apply_service(sp)
        for name in list(self.services):
            if name not in wanted:
                await self._remove_service(name)
        self._check_finished()

    async def _apply_service(self, sp: ServicePlan) -> None:
        srt = self.services.get(sp.name)
        if srt is None:
            srt = self.services[sp.name] = ServiceRuntime(sp.name)
            await srt.listener.listen("127.0.0.1", _port_of(sp.uri))
            log.info("%s: service URL http://127.0.0.1:%d", sp.name, srt.listener.port)
        planned = set()
        for plan in sp.revisions:
            planned.add(plan.name)
            rr = self.revisions.get(plan.name)
            if rr is None:
                rr = self.revisions[plan.name] = RevisionRuntime(self, plan)
                if plan.restore_instances:
                    rr.restored = True
            else:
                rr.plan = replace(plan, restore_instances=rr.plan.restore_instances)
                rr.pool.max_instances = plan.max_instances
            if plan.state == "pending":
                rr.check()
            srt.revisions.add(plan.name)
        for name in list(srt.revisions):
            if name not in planned:
                srt.revisions.discard(name)
                rr = self.revisions.get(name)
                if rr is not None:
                    rr.retire()
        srt.listener.route = Route(
            [(self.revisions[rev].pool, pct) for rev, pct in sp.routes if rev in self.revisions]
        )
        old_tag_uris = dict(sp.tag_uris)
        tags = dict(sp.tags)
        for tag, rev in tags.items():
            route = Route([(self.revisions[rev].pool, 1)]) if rev in self.revisions else Route([])
            listener = srt.tags.get(tag)
            if listener is None:
                listener = srt.tags[tag] = Listener(f"{sp.name}#{tag}", route)
                await listener.listen("127.0.0.1", _port_of(old_tag_uris.get(tag, "")))
                log.info("%s: tag %s URL http://127.0.0.1:%d", sp.name, tag, listener.port)
            listener.route = route
        for tag in list(srt.tags):
            if tag not in tags:
                srt.tags.pop(tag).close()
        uri = f"http://127.0.0.1:{srt.listener.port}"
        tag_uris = {tag: f"http://127.0.0.1:{lst.port}" for tag, lst in srt.tags.items()}
        self.control.set_urls(sp.name, uri, tag_uris, sp.route_version)
        self.poke()

    async def _remove_service(self, name: str) -> None:
        srt = self.services[name]
        srt.listener.close()
        for listener in srt.tags.values():
            listener.close()
        for rev in srt.revisions:
            rr = self.revisions.get(rev)
            if rr is not None:
                rr.retire()
        del self.services[name]

    def _check_finished(self) -> None:
        for name, rr in list(self.revisions.items()):
            if rr.finished():
                del self.revisions[name]
                self.control.stopped(name)
        for name in self.control.deleting_names():
            prefix = name + "/revisions/"
            if name in self.services or any(r.startswith(prefix) for r in self.revisions):
                continue
            if "/revisions/" in name and name in self.revisions:
                continue
            self.control.stopped(name)

    # ---- the autoscaler

    async def run(self) -> None:
        interval = self.settings.scale_interval_s
        while not self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            now = time.monotonic()
            for rr in list(self.revisions.values()):
                try:
                    rr.tick(now)
                except Exception:  # pragma: no cover - keep scaling the others
                    log.exception("%s: scaling tick failed", rr.short)
            self._check_finished()

    def start(self) -> None:
        self._ticker = self.spawn(self.run())

    async def shutdown(self, kill: bool = False) -> None:
        """Stop listening, let in-flight requests finish briefly, stop every instance."""
        self.closing = True
        self.killing = kill
        self._wake.set()
        for srt in self.services.values():
            srt.listener.close()
            for listener in srt.tags.values():
                listener.close()
        for rr in self.revisions.values():
            rr.retired = True
            rr.pool.close()
            for slot in rr.pool.slots:
                rr.stop_health_checks(slot)
        if not kill:  # in-flight requests get up to 2 s to finish
            await apoll(
                lambda: (
                    None
                    if any(s.inflight for rr in self.revisions.values() for s in rr.pool.slots)
                    else True
                ),
                timeout=2.0,
                what="in-flight requests",
            )
        for rr in self.revisions.values():
            for slot in list(rr.pool.slots):
                rr.stop_slot(slot)
        # the ones still launching stop themselves when their launch returns
        pending = [t for t in self.tasks if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.instance_ready_timeout_s + 15)
        for task in list(self.tasks):
            if task is not asyncio.current_task() and not task.done():
                task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=False)

    # ---- metrics

    async def metrics(self, service: str, window_s: float | None) -> dict[str, Any]:
        srt = self.services.get(service)
        revisions = []
        names = sorted(srt.revisions) if srt is not None else []
        shares = {}
        tags: dict[str, list[str]] = {}
        for plan in self.control.plan():
            if plan.name == service:
                shares = dict(plan.routes)
                for tag, rev in plan.tags:
                    tags.setdefault(rev, []).append(tag)
        for name in names:
            rr = self.revisions.get(name)
            if rr is None:
                continue
            pool = rr.pool
            st = pool.stats
            instances = []
            for slot in list(pool.slots):
                entry: dict[str, Any] = {
                    "id": slot.id,
                    "state": slot.state,
                    "url": f"http://{slot.host}:{slot.port}" if slot.port else None,
                    "pid": slot.handle.pid if slot.handle is not None else None,
                    "in_flight": slot.inflight,
                    "requests": slot.requests,
                    "age_s": round(time.monotonic() - slot.started_at, 3),
                    "ready_s": round(slot.ready_at - slot.started_at, 3) if slot.ready_at else None,
                    "serving": slot in pool.ready,
                }
                checks = rr.health.get(slot.id)
                if checks:
                    entry["health"] = {kind: t.as_json() for kind, t in checks.items()}
                if slot.handle is not None and slot.state != STARTING:
                    try:
                        stats = await slot.handle.stats()
                        entry["rss_mb"] = round(stats["rss_bytes"] / 2**20, 3)
                        entry["cpu_percent"] = round(stats["cpu_percent"], 1)
                    except HostError:  # the instance just went away
                        pass
                instances.append(entry)
            counts = pool.counts()
            revisions.append(
                {
                    "revision": rr.short,
                    "name": name,
                    "state": rr.plan.state,
                    "active": rr.plan.active,
                    "percent": shares.get(name, 0),
                    "tags": sorted(tags.get(name, [])),
                    "requests": st.requests,
                    "responses": {f"{i}xx": st.codes[i] for i in range(1, 6)},
                    "failed": st.failed,
                    "rejected": st.rejected,
                    "in_flight": pool.inflight,
                    "queued": len(pool.queue),
                    "instances": sum(counts.values()),
                    "instance_states": counts,
                    "min_instances": rr.plan.min_instances,
                    "max_instances": rr.plan.max_instances,
                    "concurrency": pool.concurrency,
                    "latency_ms": router.percentiles(st.latencies(window_s)),
                    "instance_list": instances,
                    "last_failure": rr.last_failure,
                }
            )
        return {
            "service": service,
            "uri": f"http://127.0.0.1:{srt.listener.port}" if srt is not None else None,
            "window_s": window_s,
            "revisions": revisions,
        }

    async def logs(self, revision: str, lines: int) -> dict[str, Any]:
        rr = self.revisions.get(revision)
        out: dict[str, Any] = {"revision": revision, "instances": []}
        if rr is None:
            return out
        for slot in list(rr.pool.slots):
            if slot.handle is not None:
                try:
                    text = await slot.handle.logs(lines)
                except HostError:
                    continue
                out["instances"].append({"id": slot.id, "pid": slot.handle.pid, "lines": text})
        out["last_failure"] = rr.last_failure
        return out


def _port_of(uri: str) -> int:
    if not uri:
        return 0
    try:
        return int(urlsplit(uri).port or 0)
    except ValueError:
        return 0
