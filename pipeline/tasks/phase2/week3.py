"""`invoke phase2.week3` (alias phase2.live): live integration on this machine, Gate 2."""

from invoke import task

from pipeline import catalogue
from pipeline.tasks._cli import PHASE_HELP, exit_codes, finish_phase, number, required
from pipeline.tasks._remote import REMOTE_HELP, run_live_task


@task(
    help={
        **PHASE_HELP,
        **REMOTE_HELP,
        "rate": "override the load profile's arrival rate (req/s)",
        "duration": "override the load profile's duration (s); down to 2 s for a quick check",
    },
    aliases=(catalogue.week("week3").alias,),
    positional=[],
    auto_shortflags=False,  # -h is help, not --host
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
        tarball = required("--tarball", tarball, "phase2.week3")
        from pipeline.phases.week3 import run_week3

        result, console = run_live_task(
            catalogue.week("week3").heading,
            run_week3,
            tarball,
            env,
            port=port,
            receipts=receipts,
            json=json,
            host=host,
            identity=identity,
            known_hosts=known_hosts,
            accept_new_host_key=accept_new_host_key,
            rate=number("--rate", rate, above=0),
            duration=number("--duration", duration, at_least=2),
        )
        finish_phase(result, console)


TASK = week3
