"""`invoke demo.*`: the reference TAIEA release (examples/taiea) that the pipeline orchestrates."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes


@task(
    help={
        "version": "release version (default 1.0.0): tai_autonomics-<version>.tar.gz",
        "fault": "fault baked into sys.config: none, slow, errors, leak, crash, noready, "
        "slowstart, prod_errors or prod_slow (TAIEA_FAULT overrides it at start; default none)",
        "layout": "tarball layout: rebar3 (files at the root, as `rebar3 as prod tar`) or "
        "wrapped (under one top folder tai_autonomics/); default rebar3",
        "out": "directory to write the tarball to (default build/)",
    },
    default=True,
)
def build(c, version="1.0.0", fault="none", layout="rebar3", out="build"):
    """Build the reference release with erlc + systools; the last line is the tarball path."""
    with exit_codes():
        from pathlib import Path

        from pipeline import reference

        tarball = reference.build(Path(out), version=version, fault=fault, layout=layout)
    print(tarball)


ns = Collection("demo")
ns.add_task(build)
