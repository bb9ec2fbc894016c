"""`invoke demo.*`: the reference TAIEA release (examples/taiea) that the pipeline orchestrates."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, number


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
        "duration": "load window of weeks 2 and 3 in seconds (default 5; the env files say 15)",
        "out": "where the reference release is built (default build/)",
    },
    default=True,
)
def run(c, duration=None, out="build"):
    """The main job on the embedded default: build the reference release, then phase2.all on it
    (gVisor for week 2, the local Cloud Run emulator for week 5)."""
    with exit_codes():
        from pathlib import Path

        from pipeline import reference
        from pipeline.tasks.phase2.all import all_weeks

        duration = number("--duration", duration, 5.0, above=0)
        tarball = reference.build(Path(out))
        print(f"reference release: {tarball}")
        all_weeks(c, str(tarball), duration=duration)  # without runsc, week 2 exits 2 naming it


ns = Collection("demo")
ns.add_task(build)
ns.add_task(run)
