"""`invoke phase2.*`: the Phase 2 weeks, each ending in its gate."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console

COMMON_HELP = {
    "tarball": "the release tarball (tai_autonomics-<vsn>.tar.gz, rebar3 or wrapped layout)",
    "env": "env name (envs/NAME.toml) or path; default local",
    "port": "port for the release; 0 picks a free one (default: the env file's)",
    "receipts": "where to write the receipts (default runs/<run-id>/receipts.jsonl)",
    "json": "print the receipts as JSON lines on stdout; the human view goes to stderr",
}


def _finish(result, console, json_mode):
    from pipeline import report
    from pipeline.errors import GateFailed

    report.render_verdict(console, result.verdict)
    console.print(f"receipts: {result.receipts}  ({result.wall_s:.2f} s)", highlight=False)
    if not result.verdict.passed:
        raise GateFailed(result.verdict.summary())


def _phase_console(json_mode, title):
    from pipeline import report

    console = human_console(json_mode)
    return console, report.PhaseView(console, title)


def _echo_json(json_mode):
    """A receipts listener printing each record as a JSON line on stdout, or None."""
    if not json_mode:
        return None
    import sys

    import orjson

    def echo(record):
        sys.stdout.buffer.write(orjson.dumps(record) + b"\n")
        sys.stdout.flush()

    return echo


@task(
    help={
        **COMMON_HELP,
        "rate": "override the load profile's arrival rate (req/s)",
        "duration": "override the load profile's duration (s); down to 2 s for a quick check",
    },
    aliases=("live",),
)
def week3(c, tarball, env="local", port=None, receipts=None, json=False, rate=None, duration=None):
    """Week 3, live integration: extract, start, smoke, load + monitor, stop, Gate 2."""
    with exit_codes():
        from pipeline import config
        from pipeline.phases.week3 import run_week3

        environment = config.load_env(env)
        console, view = _phase_console(json, f"week 3 · live integration · env {environment.name}")
        result = run_week3(
            tarball,
            environment,
            port=int(port) if port is not None else None,
            receipts=receipts,
            view=view,
            rate=float(rate) if rate else None,
            duration=float(duration) if duration else None,
            on_record=_echo_json(json),
        )
        _finish(result, console, json)


ns = Collection("phase2")
ns.add_task(week3)
