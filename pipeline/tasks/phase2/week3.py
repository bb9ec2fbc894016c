"""`invoke phase2.week3` (alias phase2.live): live integration on this machine, Gate 2."""

from invoke import task

from pipeline.tasks._cli import PHASE_HELP, exit_codes, finish_phase, json_echo, phase_view
from pipeline.tasks._remote import REMOTE_HELP, remote_runtime, runtime_kwargs


@task(
    help={
        **PHASE_HELP,
        **REMOTE_HELP,
        "rate": "override the load profile's arrival rate (req/s)",
        "duration": "override the load profile's duration (s); down to 2 s for a quick check",
    },
    aliases=("live",),
)
def week3(
    c,
    tarball,
    env="local",
    port=None,
    receipts=None,
    json=False,
    rate=None,
    duration=None,
    host=None,
    identity=None,
    known_hosts=None,
    accept_new_host_key=False,
):
    """Week 3, live integration: extract, start, smoke, load + monitor, stop, Gate 2."""
    with exit_codes():
        from pipeline import config
        from pipeline.phases.week3 import run_week3

        environment = config.load_env(env)
        factory = remote_runtime(host, tarball, identity, known_hosts, accept_new_host_key)
        where = f" · on {host}" if host else ""
        console, view = phase_view(
            json, f"week 3 · live integration · env {environment.name}{where}"
        )
        result = run_week3(
            tarball,
            environment,
            port=int(port) if port is not None else None,
            receipts=receipts,
            view=view,
            rate=float(rate) if rate else None,
            duration=float(duration) if duration else None,
            on_record=json_echo(json),
            **runtime_kwargs(factory),
        )
        finish_phase(result, console)


TASK = week3
