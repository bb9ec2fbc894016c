"""`invoke cloudrun.*`: Cloud Run by hand — status, deploy, shift, scale, drain, rollback, resume."""

from invoke import Collection, task

from pipeline.tasks._cli import (
    exit_codes,
    finish_phase,
    human_console,
    number,
    phase_view,
    required,
)

ENV_HELP = "env name or path (default cloudrun-local: the emulator; cloudrun-prod: Google)"
ENDPOINT_HELP = "Cloud Run API endpoint, overriding the env file (or PIPELINE_CLOUDRUN_ENDPOINT)"


def _where(env, endpoint):
    from pipeline import config
    from pipeline.cloudrun.endpoint import answering_endpoint
    from pipeline.cloudrun.metrics import default_backend

    environment = config.load_env(env)
    where = answering_endpoint(environment, endpoint)
    return environment, where, default_backend(environment.cloudrun, where)


@task(
    help={"env": ENV_HELP, "endpoint": ENDPOINT_HELP, "json": "print one JSON object for scripts"},
    aliases=("show",),
)
def status(c, env="cloudrun-local", endpoint=None, json=False):
    """The service: URI, revisions, traffic, tags, instances."""
    with exit_codes():
        import json as jsonlib

        from rich import box
        from rich.table import Table

        from pipeline.cloudrun import ops

        environment, where, backend = _where(env, endpoint)
        facts = ops.status(environment, where, backend)
        if json:
            print(jsonlib.dumps(facts))
            return
        console = human_console(False)
        console.print(f"[bold]{facts['service']}[/bold]  {facts['uri']}", highlight=False)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # 80 columns
        table.add_column("revision", no_wrap=True)  # the name a user copies: never cut
        for column in ("ok", "traffic", "tags", "inst.", "busy", "min/max", "conc."):
            table.add_column(column)
        for rev in facts["revisions"]:
            table.add_row(
                rev["name"],
                "✓" if rev["ready"] else f"✗ {rev['failed'] or ''}",
                f"{rev['percent']} %",
                ", ".join(rev["tags"]),
                str(rev["instances"] if rev["instances"] is not None else "–"),
                str(rev["inflight"] if rev["inflight"] is not None else "–"),
                f"{rev['min_instances']}/{rev['max_instances']}",
                str(rev["concurrency"]),
            )
        console.print(table)
        for tag, uri in facts["tags"].items():
            console.print(f"tag {tag}: {uri}", highlight=False)


@task(
    help={
        "tarball": "the release tarball (its Gate 2 and Gate 3 must have passed)",
        "env": ENV_HELP,
        "endpoint": ENDPOINT_HELP,
    },
    positional=[],
)
def deploy(c, tarball, env="cloudrun-local", endpoint=None):
    """Preflight, then deploy a new revision tagged `candidate` with no traffic, and smoke it."""
    with exit_codes():
        tarball = required("--tarball", tarball, "cloudrun.deploy")
        from pipeline.phases.week5 import deploy_only

        environment, where, _ = _where(env, endpoint)
        console, view = phase_view(False, f"cloudrun.deploy · {environment.cloudrun.service}")
        finish_phase(deploy_only(tarball, environment, endpoint=where, view=view), console)


@task(
    help={
        "to": "the split, REV=PCT[,REV=PCT…] summing to 100 (REV may be `latest`)",
        "env": ENV_HELP,
        "endpoint": ENDPOINT_HELP,
    },
    positional=[],
)
def shift(c, to, env="cloudrun-local", endpoint=None):
    """Set the traffic split and verify what the service reports."""
    with exit_codes():
        to = required("--to", to, "cloudrun.shift")
        from pipeline.cloudrun import ops

        environment, where, _ = _where(env, endpoint)
        split = ops.shift(environment, where, to)
        human_console(False).print(
            "traffic now: " + ", ".join(f"{rev} {pct} %" for rev, pct in split.items()),
            highlight=False,
        )


@task(
    help={
        "min_instances": "minimum instances (default: the env file's)",
        "max_instances": "maximum instances (default: the env file's)",
        "concurrency": "requests per instance (default: the env file's)",
        "env": ENV_HELP,
        "endpoint": ENDPOINT_HELP,
    }
)
def scale(
    c, min_instances=None, max_instances=None, concurrency=None, env="cloudrun-local", endpoint=None
):
    """Apply min/max instances and concurrency (a new revision takes the traffic) and verify them."""
    with exit_codes():
        from pipeline import config
        from pipeline.cloudrun import ops

        settings = config.load_env(env).cloudrun
        wanted = (
            number(
                "--min-instances", min_instances, settings.min_instances, integer=True, at_least=0
            ),
            number(
                "--max-instances", max_instances, settings.max_instances, integer=True, at_least=1
            ),
            number("--concurrency", concurrency, settings.concurrency, integer=True, at_least=1),
        )
        environment, where, _ = _where(env, endpoint)
        applied = ops.scale(environment, where, *wanted)
        human_console(False).print(
            f"applied: {applied['revision']} runs {applied['min_instances']}–"
            f"{applied['max_instances']} instances at {applied['concurrency']} requests each",
            highlight=False,
        )


@task(
    help={
        "revision": "the revision to drain (it must have 0 % of the traffic)",
        "timeout": "seconds to wait for in-flight requests (default 60)",
        "env": ENV_HELP,
        "endpoint": ENDPOINT_HELP,
    },
    positional=[],
)
def drain(c, revision, timeout=None, env="cloudrun-local", endpoint=None):
    """Wait until a revision at 0 % has no request in flight, then remove its tag."""
    with exit_codes():
        revision = required("--revision", revision, "cloudrun.drain")
        from pipeline.cloudrun import ops

        timeout = number("--timeout", timeout, 60.0, above=0)
        environment, where, _ = _where(env, endpoint)
        human_console(False).print(
            ops.drain(environment, where, revision, timeout), highlight=False
        )


@task(
    help={
        "state": "the rollout's state file (default: the newest runs/*-week5-*/rollout.json)",
        "env": ENV_HELP,
        "force": "roll back a rollout that finished and passed Gate 4 too",
    }
)
def rollback(c, state=None, env="cloudrun-local", force=False):
    """All traffic back to the revision that served before the rollout; exit 99 (a rolled-back rollout failed)."""
    with exit_codes():
        _resume(state, env, "rollback", force=force)


@task(
    help={
        "state": "the rollout's state file (default: the newest runs/*-week5-*/rollout.json)",
        "env": ENV_HELP,
    },
    aliases=("continue",),
)
def resume(c, state=None, env="cloudrun-local"):
    """Continue an interrupted rollout from its last completed step."""
    with exit_codes():
        _resume(state, env, "resume")


def _resume(state, env, action, force=False):
    from pathlib import Path

    from pipeline import config
    from pipeline.phases.week5 import latest_state, resume

    environment = config.load_env(env)
    path = Path(state) if state else latest_state()
    console, view = phase_view(False, f"cloudrun.{action} · {path}")
    finish_phase(resume(path, environment, action=action, force=force, view=view), console)


ns = Collection("cloudrun")
for _task in (status, deploy, shift, scale, drain, rollback, resume):
    ns.add_task(_task)
