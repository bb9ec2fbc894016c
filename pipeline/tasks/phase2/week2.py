"""`invoke phase2.week2` (alias phase2.sandbox): the release in a real gVisor sandbox, Gate 1."""

from invoke import task

from pipeline import catalogue
from pipeline.tasks._cli import PHASE_HELP, exit_codes, finish_phase, number, required
from pipeline.tasks._remote import REMOTE_HELP, run_live_task


@task(
    help={
        **PHASE_HELP,
        **REMOTE_HELP,
        "env": 'env name (envs/NAME.toml) or path with runtime = "gvisor"; default ccw-sandbox',
        "rate": "override the load profile's arrival rate (req/s)",
        "duration": "override the load profile's duration (s); down to 2 s for a quick check",
    },
    aliases=(catalogue.week("week2").alias,),
    positional=[],
    auto_shortflags=False,  # -h is help, not --host
)
def week2(
    c,
    tarball,
    env="ccw-sandbox",
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
    """Week 2, sandbox rehearsal: eleven measured stages inside gVisor (runsc), Gate 1."""
    with exit_codes():
        tarball = required("--tarball", tarball, "phase2.week2")
        from pipeline.errors import GateFailed
        from pipeline.phases.week2 import run_week2

        result, console = run_live_task(
            catalogue.week("week2").heading,
            run_week2,
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
        try:
            finish_phase(result, console)
        except GateFailed as exc:
            oom = result.facts.get("oom_kill")  # say why, in the one line that ends the run
            raise GateFailed(f"{exc} — {oom}" if oom else str(exc)) from None


TASK = week2
