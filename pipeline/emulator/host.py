"""The instance host: a child process of the emulator that runs revisions' instances.

Instances are started and watched through the runtime interface only (`runtime_for(env)`,
`Runtime.start(LaunchSpec)`, `Instance.wait_ready/alive/stats/logs/stop`). They live in this
separate process so that reading their output (a JSON receipt per request) never competes with
the router for the emulator's interpreter lock, and so that they die with the emulator: when the
emulator goes away — even by SIGKILL — this process reads end-of-file on its stdin and stops every
instance before it exits.

Protocol: JSON lines. Requests on stdin `{"id": N, "op": OP, ...}`; replies on stdout
`{"id": N, "ok": true, "result": ...}` or `{"id": N, "ok": false, "error": KIND, "reason": ...,
"log_tail": [...]}`; events `{"event": "exited", "instance": ID}` when an instance dies on its own.
Ops: start(spec) → {instance, url, pid}; wait_ready(instance, timeout) → seconds;
stats(instance) → {rss_bytes, cpu_percent}; logs(instance, n) → lines; stop(instance, grace) →
exit status; shutdown(grace) → stops all and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

WATCH_INTERVAL_S = 0.1


# ------------------------------------------------------------------------------------------
# the host process


class Host:
    def __init__(self, env: Any):
        from pipeline.runtime import runtime_for

        self.runtime = runtime_for(env.model_copy(update={"runtime": env.emulator.runtime}))
        self.instances: dict[str, Any] = {}
        self.exited: set[str] = set()
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="host")
        self.done = threading.Event()

    def send(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message) + b"\n"
        with self.out_lock:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (BrokenPipeError, ValueError):
                self.done.set()

    def handle(self, request: dict[str, Any]) -> None:
        rid = request.get("id")
        try:
            result = self.run(request)
        except _Failed as exc:
            self.send({"id": rid, "ok": False, **exc.fields})
        except Exception as exc:  # reported to the emulator, which decides
            self.send({"id": rid, "ok": False, "error": "error", "reason": f"{exc}"})
        else:
            self.send({"id": rid, "ok": True, "result": result})

    def run(self, request: dict[str, Any]) -> Any:
        from pipeline.runtime.base import ImageRoot, LaunchSpec, StartupFailed

        op = request.get("op")
        if op == "start":
            spec = dict(request["spec"])
            spec["root"] = Path(spec["root"])
            if spec.get("image"):
                image = dict(spec["image"])
                spec["image"] = ImageRoot(
                    rootfs=Path(image["rootfs"]),
                    argv=tuple(image["argv"]),
                    env=dict(image["env"]),
                    uid=int(image["uid"]),
                    gid=int(image["gid"]),
                    cwd=str(image["cwd"]),
                )
            instance = self.runtime.start(LaunchSpec(**spec))
            iid = f"i{next(self.ids)}"
            with self.lock:
                self.instances[iid] = instance
            return {"instance": iid, "url": instance.url, "pid": instance.pid}
        instance = self.instances.get(str(request.get("instance")))
        if op == "shutdown":
            self.stop_all(float(request.get("grace", 10.0)))
            self.done.set()
            return None
        if instance is None:
            raise _Failed({"error": "unknown", "reason": f"no instance {request.get('instance')}"})
        if op == "wait_ready":
            try:
                return instance.wait_ready(float(request["timeout"]))
            except StartupFailed as exc:
                raise _Failed(
                    {"error": "startup_failed", "reason": exc.reason, "log_tail": exc.log_tail}
                ) from None
        if op == "stats":
            stats = instance.stats()
            return {"rss_bytes": stats.rss_bytes, "cpu_percent": stats.cpu_percent}
        if op == "logs":
            return instance.logs(int(request.get("n", 50)))
        if op == "alive":
            return instance.alive()
        if op == "stop":
            status = instance.stop(float(request.get("grace", 10.0)))
            with self.lock:
                self.instances.pop(str(request["instance"]), None)
            return status
        raise _Failed({"error": "unknown", "reason": f"unknown op {op!r}"})

    def stop_all(self, grace: float) -> None:
        with self.lock:
            instances = list(self.instances.items())
            self.instances.clear()
        list(self.pool.map(lambda item: _quiet_stop(item[1], grace), instances))

    def watch(self) -> None:
        while not self.done.wait(WATCH_INTERVAL_S):
            with self.lock:
                items = list(self.instances.items())
            for iid, instance in items:
                if iid not in self.exited and not instance.alive():
                    self.exited.add(iid)
                    self.send({"event": "exited", "instance": iid})

    def serve(self) -> None:
        threading.Thread(target=self.watch, name="watch", daemon=True).start()
        for raw in sys.stdin.buffer:
            if self.done.is_set():
                break
            try:
                request = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if request.get("op") == "shutdown":
                self.handle(request)
                break
            self.pool.submit(self.handle, request)
        # end of file: the emulator is gone (or asked us to stop): no instance outlives it
        self.stop_all(2.0)
        self.done.set()


class _Failed(Exception):
    def __init__(self, fields: dict[str, Any]):
        super().__init__(fields.get("reason", ""))
        self.fields = fields


def _quiet_stop(instance: Any, grace: float) -> None:
    with contextlib.suppress(Exception):
        instance.stop(grace)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_env

    args = argv if argv is not None else sys.argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the emulator decides when we stop
    env = load_env(args[0] if args else "cloudrun-local")
    Host(env).serve()
    return 0


# ------------------------------------------------------------------------------------------
# the emulator's side


class HostError(Exception):
    def __init__(self, kind: str, reason: str, log_tail: list[str] | None = None):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.log_tail = log_tail or []


class RemoteInstance:
    """An instance in the host, as the data plane sees it."""

    def __init__(self, client: HostClient, iid: str, url: str, pid: int):
        self.client = client
        self.id = iid
        self.url = url
        self.pid = pid
        self.exited = False
        self.stopped = False  # a stop was asked for (the data plane asks once)

    def alive(self) -> bool:
        return not self.exited and self.client.running

    async def wait_ready(self, timeout: float) -> float:
        return float(await self.client.call("wait_ready", instance=self.id, timeout=timeout))

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.call("stats", instance=self.id)
        return result

    async def logs(self, n: int = 50) -> list[str]:
        result: list[str] = await self.client.call("logs", instance=self.id, n=n)
        return result

    async def stop(self, grace: float) -> int:
        return int(await self.client.call("stop", instance=self.id, grace=grace))


class HostClient:
    """Starts the host process and talks to it."""

    def __init__(self, env_path: str, on_exit: Any = None):
        self.env_path = env_path
        self.on_exit = on_exit or (lambda instance_id: None)
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.instances: dict[str, RemoteInstance] = {}
        self.running = False
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline.emulator.host",
            self.env_path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            limit=16 << 20,
        )
        self.running = True
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if "event" in message:
                    instance = self.instances.get(str(message.get("instance")))
                    if instance is not None:
                        instance.exited = True
                        self.on_exit(instance)
                    continue
                fut = self.pending.pop(int(message.get("id", 0)), None)
                if fut is None or fut.done():
                    continue
                if message.get("ok"):
                    fut.set_result(message.get("result"))
                else:
                    fut.set_exception(
                        HostError(
                            str(message.get("error")),
                            str(message.get("reason")),
                            list(message.get("log_tail") or []),
                        )
                    )
        finally:
            self.running = False
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(HostError("gone", "the instance host exited"))
            self.pending.clear()

    async def call(self, op: str, **fields: Any) -> Any:
        if not self.running or self.proc is None or self.proc.stdin is None:
            raise HostError("gone", "the instance host is not running")
        rid = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.proc.stdin.write(orjson.dumps({"id": rid, "op": op, **fields}) + b"\n")
        return await fut

    async def launch(self, spec: dict[str, Any]) -> RemoteInstance:
        result = await self.call("start", spec=spec)
        instance = RemoteInstance(self, result["instance"], result["url"], int(result["pid"]))
        self.instances[instance.id] = instance
        return instance

    def forget(self, instance: RemoteInstance) -> None:
        self.instances.pop(instance.id, None)

    async def close(self, grace: float) -> None:
        """Stop every instance, then the host."""
        proc = self.proc
        if proc is None:
            return
        if self.running:
            with contextlib.suppress(HostError, ConnectionError):
                await asyncio.wait_for(self.call("shutdown", grace=grace), grace + 30)
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


if __name__ == "__main__":
    sys.exit(main())
