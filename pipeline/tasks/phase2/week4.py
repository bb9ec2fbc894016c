"""`invoke phase2.week4` (alias phase2.pilot): the first customer's pilot, Gate 3."""

from invoke import task

from pipeline.tasks._cli import PHASE_HELP, exit_codes, finish_phase, json_echo, phase_view
from pipeline.tasks._remote import REMOTE_HELP, remote_runtime, runtime_kwargs


@task(
    help={
        **PHASE_HELP,
        **REMOTE_HELP,
        "scenario": "pilot scenario file (default pilots/first-customer.toml)",
        "concurrency": "operations in flight at once (each tenant's stay in order); default: the scenario's",
    },
    aliases=("pilot",),
)
def week4(
    c,
    tarball,
    env="local",
    scenario=None,
    concurrency=None,
    port=None,
    receipts=None,
    json=False,
    host=None,
    identity=None,
    known_hosts=None,
    accept_new_host_key=False,
):
    """Week 4, customer pilot: replay the scenario, check every answer, record revenue, Gate 3."""
    with exit_codes():
        from pipeline import config
        from pipeline.phases.week4 import DEFAULT_SCENARIO, run_week4

        environment = config.load_env(env)
        factory = remote_runtime(host, tarball, identity, known_hosts, accept_new_host_key)
        where = f" · on {host}" if host else ""
        console, view = phase_view(json, f"week 4 · customer pilot · env {environment.name}{where}")
        result = run_week4(
            tarball,
            environment,
            scenario=scenario or DEFAULT_SCENARIO,
            concurrency=int(concurrency) if concurrency else None,
            port=int(port) if port is not None else None,
            receipts=receipts,
            view=view,
            on_record=json_echo(json),
            **runtime_kwargs(factory),
        )
        finish_phase(result, console)


TASK = week4
