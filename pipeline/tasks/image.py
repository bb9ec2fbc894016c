"""`invoke image.build` and `image.inspect`: the release as an OCI image, proven under gVisor."""

from invoke import Collection, task

from pipeline.tasks._cli import PHASE_HELP, exit_codes, human_console, positional, required


@task(
    help={
        "tarball": PHASE_HELP["tarball"],
        "env": "env name (envs/NAME.toml) or path: the image's TAIEA_ENV, uid, port, push target "
        "([image] ref) and the sandbox it is proven in; default local",
        "tag": "push to this reference after the proof, REGISTRY/REPO:TAG ({name} and {version} "
        "filled in); default the env's [image] ref; none: build and prove only",
        "receipts": PHASE_HELP["receipts"],
        "json": PHASE_HELP["json"],
    },
    aliases=("make",),
    positional=[],
)
def build(c, tarball, env="local", tag=None, receipts=None, json=False):
    """Build an OCI image from the tarball (no daemon, no base image), run it under gVisor from
    its own root with the five smoke tests, then push it (exit 99 if it does not start)."""
    with exit_codes():
        tarball = required("--tarball", tarball, "image.build")
        from pipeline import config
        from pipeline.phases.image import run_image_build
        from pipeline.tasks._cli import finish_phase, json_echo, phase_view

        environment = config.load_env(env)
        console, view = phase_view(json, f"image · env {environment.name}")
        result = run_image_build(
            tarball,
            environment,
            tag=tag,
            receipts=receipts,
            view=view,
            on_record=json_echo(json),
        )
        for label, key in (
            ("image", "image_digest"),
            ("layout", "image_layout"),
            ("pushed", "image_ref"),
        ):
            if result.facts.get(key):
                console.print(f"{label}: {result.facts[key]}", highlight=False)
        finish_phase(result, console)


@task(
    help={
        "ref": "REGISTRY/REPO[:TAG][@DIGEST], or an image layout dir (DIR or DIR:TAG)",
        "json": "print one JSON object for scripts",
    },
    aliases=("show",),
)
def inspect(c, ref, json=False):
    """Digest, layers with sizes, config and the release an image holds."""
    with exit_codes():
        ref = positional(ref, "image.inspect")
        from pipeline import views
        from pipeline.image.inspect import describe

        facts = describe(ref)
        if json:
            import orjson

            print(orjson.dumps(facts).decode())
            return
        views.render_image(human_console(False), facts)


ns = Collection("image")
ns.add_task(build)
ns.add_task(inspect)
