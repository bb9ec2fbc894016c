"""`invoke release.*`: inspect, extract, start and stop a release tarball by hand."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console


@task(
    help={"tarball": "the release tarball", "json": "print the facts as one JSON object"},
    aliases=("validate",),
)
def inspect(c, tarball, json=False):
    """Name, version, ERTS, layout, size, file count and sha256 of a release tarball (nothing extracted)."""
    with exit_codes():
        import json as jsonlib
        from pathlib import Path

        from pipeline import release

        info = release.inspect(Path(tarball))
        if json:
            print(jsonlib.dumps(info.as_receipt()))
            return
        for key, value in info.as_receipt().items():
            human_console(False).print(f"{key:>18}  {value}", highlight=False)


@task(
    help={
        "tarball": "the release tarball",
        "dest": "directory to create (must not exist or be empty)",
        "env": "env whose [release] max_files / max_bytes apply (default local)",
    }
)
def extract(c, tarball, dest, env="local"):
    """Safely extract a release: refuses escapes, links out, devices, setuid, size bombs; prints the root."""
    with exit_codes():
        from pathlib import Path

        from pipeline import config, release

        limits = config.load_env(env).release
        extracted = release.extract(
            Path(tarball), Path(dest), max_files=limits.max_files, max_bytes=limits.max_bytes
        )
        print(extracted.root)


@task(
    help={
        "tarball": "the release tarball",
        "env": "env name or path (start settings, TAIEA_ENV; default local)",
        "port": "port to listen on; 0 picks a free one",
        "json": "print the started release's state as one JSON object",
    },
    aliases=("up",),
)
def start(c, tarball, env="local", port=None, json=False):
    """Start a release in the background (waits until ready); `release.stop` ends it."""
    with exit_codes():
        import json as jsonlib
        from pathlib import Path

        from pipeline import config
        from pipeline.phases import standalone

        state = standalone.start_background(
            Path(tarball), config.load_env(env), port=int(port) if port is not None else None
        )
        if json:
            print(jsonlib.dumps(state))
            return
        human_console(False).print(
            f"ready in {state['ready_s']} s: {state['url']} (pid {state['pid']}, log {state['log']})",
            highlight=False,
        )


@task(help={"grace": "seconds between SIGTERM and SIGKILL (default 10)"}, aliases=("down",))
def stop(c, grace=10.0):
    """Stop the release `release.start` started: SIGTERM, SIGKILL after the grace; remove its files."""
    with exit_codes():
        from pipeline.phases import standalone

        state = standalone.stop_background(float(grace))
        human_console(False).print(f"pid {state['pid']} {state['stopped']}", highlight=False)


ns = Collection("release")
for _task in (inspect, extract, start, stop):
    ns.add_task(_task)
