"""`invoke phase2.week4` (alias phase2.pilot): the first customer's pilot, Gate 3."""

from invoke import task

from pipeline import catalogue
from pipeline.tasks._cli import PHASE_HELP, exit_codes, finish_phase, number, required
from pipeline.tasks._remote import REMOTE_HELP, run_live_task


@task(
    help={
        **PHASE_HELP,
        **REMOTE_HELP,
        "scenario": "pilot scenario file (default pilots/first-customer.toml)",
        "concurrency": "operations in flight at once (each tenant's stay in order); default: the scenario's",
    },
    aliases=(catalogue.week("week4").alias,),
    positional=[],
    auto_shortflags=False,  # -h is help, not --host
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
        tarball = required("--tarball", tarball, "phase2.week4")
        from pipeline.phases.week4 import DEFAULT_SCENARIO, run_week4

        result, console = run_live_task(
            catalogue.week("week4").heading,
            run_week4,
            tarball,
            env,
            port=port,
            receipts=receipts,
            json=json,
            host=host,
            identity=identity,
            known_hosts=known_hosts,
            accept_new_host_key=accept_new_host_key,
            scenario=scenario or DEFAULT_SCENARIO,
            concurrency=number("--concurrency", concurrency, integer=True, at_least=1),
        )
        finish_phase(result, console)


TASK = week4
