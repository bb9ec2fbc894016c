"""`invoke phase2.week5` (alias phase2.production): the gated Cloud Run rollout, Gate 4."""

from invoke import task

from pipeline import catalogue
from pipeline.tasks._cli import (
    PHASE_HELP,
    exit_codes,
    finish_phase,
    json_echo,
    phase_view,
    required,
)


@task(
    help={
        "tarball": PHASE_HELP["tarball"],
        "env": "env name or path (default cloudrun-local: the local emulator; cloudrun-prod: Google)",
        "endpoint": "Cloud Run API endpoint, overriding the env file (or PIPELINE_CLOUDRUN_ENDPOINT)",
        "receipts": PHASE_HELP["receipts"],
        "json": PHASE_HELP["json"],
        "keep_emulator": "leave running the local emulator this run had to start (default: "
        "stopped at the end; its services are kept for the next start)",
    },
    aliases=(catalogue.week("week5").alias,),
    positional=[],
)
def week5(
    c, tarball, env="cloudrun-local", endpoint=None, receipts=None, json=False, keep_emulator=False
):
    """Week 5: preflight (Gate 2 + 3), deploy tagged, smoke, canary steps, scale, drain, Gate 4."""
    with exit_codes():
        tarball = required("--tarball", tarball, "phase2.week5")
        from pipeline import config
        from pipeline.phases.week5 import run_week5

        environment = config.load_env(env)
        console, view = phase_view(
            json, f"{catalogue.week('week5').heading} · env {environment.name}"
        )
        result = run_week5(
            tarball,
            environment,
            endpoint=endpoint,
            receipts=receipts,
            view=view,
            on_record=json_echo(json),
            keep_emulator=keep_emulator,
        )
        finish_phase(result, console)


TASK = week5
