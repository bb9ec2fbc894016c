"""`invoke phase2.all`: weeks 2 → 5, stopping at the first failure, with a table of all gates."""

from invoke import task

from pipeline.tasks._cli import exit_codes, human_console, number, required


@task(
    name="all",
    help={
        "tarball": "the release tarball",
        "week2_env": "env for week 2 (default ccw-sandbox: gVisor)",
        "week3_env": "env for week 3 (default local)",
        "week4_env": "env for week 4 (default local)",
        "week5_env": "env for week 5 (default cloudrun-local: the emulator)",
        "duration": "shorten the load windows of weeks 2 and 3 to this many seconds (at least 2)",
        "endpoint": "Cloud Run API endpoint for week 5 (default: the env file's)",
        "keep_emulator": "leave running the local emulator week 5 had to start (default: stopped)",
    },
    aliases=("everything",),
    positional=[],
)
def all_weeks(
    c,
    tarball,
    week2_env=None,
    week3_env=None,
    week4_env=None,
    week5_env=None,
    duration=None,
    endpoint=None,
    keep_emulator=False,
):
    """Phase 2 end to end: weeks 2 → 5, each refusing to start without the previous gate's pass."""
    with exit_codes():
        tarball = required("--tarball", tarball, "phase2.all")
        from pipeline import config, views
        from pipeline.catalogue import DEFAULT_ENVS
        from pipeline.errors import GateFailed
        from pipeline.phases.all import run_all

        chosen = {"week2": week2_env, "week3": week3_env, "week4": week4_env, "week5": week5_env}
        envs = {week: config.load_env(chosen[week] or DEFAULT_ENVS[week]) for week in DEFAULT_ENVS}
        console = human_console(False)
        options: dict = {"week5": {"endpoint": endpoint, "keep_emulator": keep_emulator}}
        window = number("--duration", duration, at_least=2)
        if window is not None:
            options["week2"] = {"duration": window}
            options["week3"] = {"duration": window}

        def view_for(week, env):
            return views.PhaseView(console, f"{week} · env {env.name}")

        outcomes = run_all(tarball, envs, view_for=view_for, options=options)
        console.print(views.gates_table(outcomes))
        failed = [o for o in outcomes if o.result is None or not o.result.verdict.passed]
        if failed:
            raise GateFailed(f"{failed[0].gate} ({failed[0].week}): {failed[0].note}")


TASK = all_weeks
