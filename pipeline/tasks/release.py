"""`invoke release.*`: inspect, extract, start and stop a release tarball by hand.

Each writes its result as a sealed receipts file of its own, like the phases (`--receipts`,
`--json`), so an incident's manual steps leave the same evidence as a phase."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, json_echo, number, required

RECEIPTS_HELP = "where to write the receipts (default runs/<run-id>/receipts.jsonl)"
JSON_HELP = "print the receipts as JSON lines on stdout; the human view goes to stderr"
ENV_HELP = "env name or path (default local)"


def _record(kind, stage, fields, env, receipts, json):
    from pipeline import config
    from pipeline.phases import standalone

    environment = config.load_env(env)
    path = standalone.recorded(
        kind, stage, fields, environment, receipts=receipts, on_record=json_echo(json)
    )
    human_console(json).print(f"receipts: {path}", highlight=False)


@task(
    help={
        "tarball": "the release tarball",
        "env": ENV_HELP,
        "receipts": RECEIPTS_HELP,
        "json": JSON_HELP,
    },
    aliases=("validate",),
    positional=[],
)
def inspect(c, tarball, env="local", receipts=None, json=False):
    """Name, version, ERTS, layout, size, file count and sha256 of a tarball (nothing extracted)."""
    with exit_codes():
        tarball = required("--tarball", tarball, "release.inspect")
        from pathlib import Path

        from pipeline import release

        facts = release.inspect(Path(tarball)).as_receipt()
        for key, value in facts.items():
            human_console(json).print(f"{key:>18}  {value}", highlight=False)
        _record("release", "validate", facts, env, receipts, json)


@task(
    help={
        "tarball": "the release tarball",
        "dest": "directory to create (must not exist or be empty)",
        "env": "env whose [release] max_files / max_bytes apply (default local)",
        "receipts": RECEIPTS_HELP,
        "json": JSON_HELP,
    },
    positional=[],
)
def extract(c, tarball, dest, env="local", receipts=None, json=False):
    """Safely extract a release: refuses escapes, links out, devices, setuid, size bombs."""
    with exit_codes():
        tarball = required("--tarball", tarball, "release.extract")
        dest = required("--dest", dest, "release.extract")
        import time
        from pathlib import Path

        from pipeline import config, release

        limits = config.load_env(env).release
        began = time.monotonic()
        done = release.extract(
            Path(tarball), Path(dest), max_files=limits.max_files, max_bytes=limits.max_bytes
        )
        facts = {
            "root": str(done.root),
            "seconds": round(time.monotonic() - began, 4),
            "files": done.info.file_count,
            "sha256": done.info.sha256,
        }
        _record("extract", "extract", facts, env, receipts, json)
        human_console(json).print(f"root: {done.root}", highlight=False)


@task(
    help={
        "tarball": "the release tarball",
        "env": "env name or path (start settings, TAIEA_ENV; default local)",
        "port": "port to listen on; 0 picks a free one",
        "receipts": RECEIPTS_HELP,
        "json": JSON_HELP,
    },
    aliases=("up",),
    positional=[],
)
def start(c, tarball, env="local", port=None, receipts=None, json=False):
    """Start a release in the background (waits until ready); `release.stop` ends it."""
    with exit_codes():
        tarball = required("--tarball", tarball, "release.start")
        from pathlib import Path

        from pipeline import config
        from pipeline.phases import standalone

        chosen = number("--port", port, integer=True, at_least=0, at_most=65535)
        state = standalone.start_background(Path(tarball), config.load_env(env), port=chosen)
        facts = {k: state[k] for k in ("url", "pid", "log")} | {"seconds": state["ready_s"]}
        _record("startup", "start", facts, env, receipts, json)
        human_console(json).print(
            f"ready in {state['ready_s']} s: {state['url']} (pid {state['pid']}, log {state['log']})",
            highlight=False,
        )


@task(
    help={
        "grace": "seconds between SIGTERM and SIGKILL (default 10)",
        "env": ENV_HELP,
        "receipts": RECEIPTS_HELP,
        "json": JSON_HELP,
    },
    aliases=("down",),
)
def stop(c, grace=None, env="local", receipts=None, json=False):
    """Stop the release `release.start` started: SIGTERM, SIGKILL after the grace; remove its files."""
    with exit_codes():
        from pipeline.phases import standalone

        state = standalone.stop_background(number("--grace", grace, 10.0, at_least=0))
        facts = {"pid": state["pid"], "stopped": state["stopped"], "url": state["url"]}
        _record("shutdown", "stop", facts, env, receipts, json)
        human_console(json).print(f"pid {state['pid']} {state['stopped']}", highlight=False)


ns = Collection("release")
for _task in (inspect, extract, start, stop):
    ns.add_task(_task)
