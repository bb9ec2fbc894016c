"""`invoke registry.start|stop|status`: the local OCI registry (Debian's docker-registry)."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, number

STATE_HELP = "where the registry keeps its config and storage (default <runs>/registry)"


def _state_dir(state_dir):
    from pathlib import Path

    from pipeline import receipts

    return Path(state_dir) if state_dir else receipts.runs_dir() / "registry"


@task(
    help={
        "port": "port on 127.0.0.1 (default 5000; 0 picks a free one)",
        "background": "detach and return once it answers; stop it with `invoke registry.stop`",
        "htpasswd": "an htpasswd file (bcrypt): pushes and pulls then need credentials",
        "state_dir": STATE_HELP,
    }
)
def start(c, port=None, background=False, htpasswd=None, state_dir=None):
    """Serve an OCI registry on 127.0.0.1 until Ctrl-C (or, with --background, registry.stop)."""
    with exit_codes():
        from pathlib import Path

        from pipeline.image import server

        port = number("--port", port, server.DEFAULT_PORT, integer=True, at_least=0, at_most=65535)
        where = _state_dir(state_dir)
        running = server.start(
            where, port, htpasswd=Path(htpasswd) if htpasswd else None, background=background
        )
        console = human_console(False)
        console.print(f"registry at {running.address} (storage {where / 'storage'})")
        if background:
            return
        try:
            running.proc.wait()
        finally:
            running.stop()


@task(
    help={
        "state_dir": STATE_HELP,
        "timeout": "seconds to wait after SIGTERM before SIGKILL (default 10)",
    }
)
def stop(c, state_dir=None, timeout=None):
    """Stop the background registry."""
    with exit_codes():
        from pipeline.image import server

        done = server.stop(_state_dir(state_dir), number("--timeout", timeout, 10.0, above=0))
        human_console(False).print(
            f"stopped (pid {done['pid']})" if done["stopped"] else done["reason"]
        )


@task(help={"state_dir": STATE_HELP, "json": "print one JSON object for scripts"})
def status(c, state_dir=None, json=False):
    """Whether the background registry runs, and where."""
    with exit_codes():
        from pipeline.image import server

        found = server.status(_state_dir(state_dir))
        if json:
            import json as json_module

            print(json_module.dumps(found))
            return
        human_console(False).print(
            f"running at {found['address']} (pid {found['pid']})"
            if found["running"]
            else "not running"
        )


ns = Collection("registry")
ns.add_task(start)
ns.add_task(stop)
ns.add_task(status, default=True)
