"""`invoke demo.*`: the reference TAIEA release (examples/taiea) that the pipeline orchestrates."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, number


@task(
    help={
        "version": "release version (default 1.0.0): tai_autonomics-<version>.tar.gz",
        "fault": "fault baked into sys.config: none, slow, errors, leak, crash, noready, "
        "slowstart, prod_errors or prod_slow (TAIEA_FAULT overrides it at start; default none)",
        "layout": "tarball layout: rebar3 (files at the root, as `rebar3 as prod tar`) or "
        "wrapped (under one top folder tai_autonomics/); default rebar3",
        "out": "directory to write the tarball to (default build/)",
    },
    aliases=("release",),
)
def build(c, version="1.0.0", fault="none", layout="rebar3", out="build"):
    """Build the reference release with erlc + systools; the last line is the tarball path."""
    with exit_codes():
        from pathlib import Path

        from pipeline import reference

        tarball = reference.build(Path(out), version=version, fault=fault, layout=layout)
    print(tarball)


@task(
    help={
        "duration": "load window of weeks 2 and 3 in seconds, at least 2 (default 3; the env "
        "files say 15)",
        "out": "where the three reference releases are built (default build/: "
        "build/demo/tai_autonomics-<vsn>.tar.gz)",
        "runs": "where the demo's runs dir is made, one per demo (default runs/demo): its "
        "receipts, reports, ledger and emulator state, apart from runs/",
        "env": "env for week 5 (default demo: envs/demo.toml, cloudrun-local with short windows)",
    },
    default=True,
)
def run(c, duration=None, out="build", runs="runs/demo", env="demo"):
    """Phase 2's mission on the reference release, weeks 2 → 5 for each of three releases:
    1.0.0 deployed, 1.0.1 rolled out over it through the canary steps, 1.0.2 (a prod-only fault)
    caught at the first step and rolled back. A runs dir and emulator of its own, stopped at the
    end. Exit 0 when everything went as meant (1.0.2 caught included), 99 otherwise."""
    with exit_codes():
        from pathlib import Path

        from pipeline import views
        from pipeline.errors import GateFailed
        from pipeline.phases.demo import WEEK_WINDOW_S, run_demo

        window = number("--duration", duration, WEEK_WINDOW_S, at_least=2)
        console = human_console(False)
        result = run_demo(
            build_dir=Path(out) / "demo",
            runs_root=Path(runs),
            view_for=lambda title: views.PhaseView(console, title),
            say=lambda text: console.print(text, highlight=False),
            env=env,
            week_window_s=window,
        )
        show(console, result)
        if not result.passed:
            raise GateFailed("demo: " + "; ".join(result.problems or ["it did not get to the end"]))


def show(console, result):
    """The closing screen: the gates of every release, week 5 of each, the rollback, who serves
    afterwards, where the reports are, and whether it all went as meant."""
    from rich import box
    from rich.table import Table

    from pipeline import views
    from pipeline.catalogue import WEEKS
    from pipeline.phases.demo import ACTS

    marks = {True: views.PASS, False: views.FAIL, None: "[dim]–[/dim]"}
    console.rule("the demo")
    table = Table(
        title="Phase 2, per release",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
    )
    table.add_column("release", no_wrap=True)
    for week in WEEKS:
        table.add_column(
            f"{week.gate}\n{week.heading.split(' · ')[0]}", justify="center", no_wrap=True
        )
    table.add_column("as meant", no_wrap=True)
    for release in result.releases:
        fault = "" if release.act.fault == "none" else f" {release.act.fault}"
        table.add_row(
            release.act.version + fault,
            *(marks[release.passed(week)] for week in ("week2", "week3", "week4", "week5")),
            f"{marks[not release.problems]} {MEANT[release.act.role]}",
        )
    for act in ACTS[len(result.releases) :]:
        table.add_row(act.version, *[marks[None]] * 4, f"{marks[False]} not run")
    console.print(table)
    console.print("week 5:")
    for release in result.releases:
        console.print(f"  {release.act.version}  {week5_summary(release)}", highlight=False)
    for release in result.releases:
        rollback = release.rollout.rollback if release.rollout else None
        if rollback:
            console.print(
                f"rollback: {release.act.version} at {rollback.get('at')}, 100 % back on "
                f"{rollback.get('to')}: {rollback.get('reason')}",
                highlight=False,
            )
    if result.serving is not None:
        show_service(console, result)
    for release in result.releases:
        facts = release.rollout
        if facts is not None and facts.report is not None:
            console.print(
                f"report: {relative(facts.report)}  ({release.act.version}, week 5)",
                highlight=False,
            )
    console.print(
        f"every run's receipts, report.html, junit.xml and the ledger: {relative(result.runs_dir)}",
        highlight=False,
    )
    verdict = "[green]as meant[/green]" if result.passed else "[red]NOT as meant[/red]"
    console.print(f"demo: {verdict} in {result.wall_s:.0f} s", highlight=False)
    for problem in result.problems:
        console.print(f"  {views.FAIL} {problem}", highlight=False)


MEANT = {
    "first": "first deployment",
    "upgrade": "canary over 1.0.0",
    "caught": "caught, rolled back",
}


def show_service(console, result):
    """cloudrun.status's view of the service at the end, and who answered its URL."""
    from rich import box
    from rich.table import Table

    status = result.serving.status
    versions = {r.rollout.revision: r.act.version for r in result.releases if r.rollout}
    console.print(f"the service afterwards: {status['uri']}", highlight=False)
    view = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    view.add_column("revision", no_wrap=True)
    for column in ("release", "traffic", "tags", "instances"):
        view.add_column(column)
    for rev in status["revisions"]:
        view.add_row(
            rev["name"],
            versions.get(rev["name"], "?"),
            f"{rev['percent']} %",
            ", ".join(rev["tags"]),
            str(rev["instances"] if rev["instances"] is not None else "–"),
        )
    console.print(view)
    answers = result.serving.answers
    ok = [a for a in answers if a.status == 200]
    who = sorted({f"{a.version} (revision {a.revision}, fault {a.fault})" for a in ok})
    console.print(
        f"{len(ok)}/{len(answers)} GET {status['uri']}/metrics answered 200 by "
        + (", ".join(who) or "nobody"),
        highlight=False,
    )


def week5_summary(release):
    facts = release.rollout
    if facts is None:
        outcome = release.outcome("week5")
        return outcome.note if outcome else "not run"
    if facts.rollback:
        return (
            f"{facts.revision} caught at {facts.rollback.get('at')} "
            f"({facts.rollback.get('at', '').removeprefix('canary-')} % of the traffic), "
            f"rolled back to {facts.rollback.get('to')}"
        )
    if facts.first:
        return f"first deployment: {facts.revision} took 100 % at once, nothing to drain"
    parts = []
    if facts.steps:
        parts.append(
            "canary "
            + ", ".join(f"{p} %" + (f" on {n} instance(s)" if n else "") for p, n in facts.steps)
        )
    if facts.instances:
        served = "/".join(map(str, facts.served))
        each = f" (requests served each: {served})" if served else ""
        parts.append(f"Gate 4's load on {facts.peak_instances} instance(s){each}")
    parts.append(
        f"{facts.drained} drained ({facts.drain_how})" if facts.drained else "nothing drained"
    )
    if facts.phase != "done":
        parts.append(f"the rollout ended {facts.phase}")
    return f"{facts.revision}: " + "; ".join(parts)


def relative(path):
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


ns = Collection("demo")
ns.add_task(build)
ns.add_task(run)
