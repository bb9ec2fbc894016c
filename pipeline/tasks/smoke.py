"""`invoke smoke --url U`: the five smoke tests against a running release."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, json_echo, phase_view, required


@task(
    help={
        "url": "base URL of the release, e.g. http://127.0.0.1:8080 (no path: the paths "
        "come from the env's [[smoke]] tests)",
        "env": "env whose [[smoke]] tests to run (default local)",
        "receipts": "where to write the receipts (default runs/<run-id>/receipts.jsonl)",
        "json": "print the receipts as JSON lines on stdout; the human view goes to stderr",
    },
    default=True,
    positional=[],
)
def run(c, url, env="local", receipts=None, json=False):
    """Run the smoke tests concurrently: exit 0 when all pass, 99 otherwise."""
    with exit_codes():
        url = required("--url", url, "smoke")
        from pipeline import config
        from pipeline.errors import GateFailed
        from pipeline.phases import standalone

        url = standalone.release_url(url)
        console, view = phase_view(json, f"smoke · {url}")
        passed, total, path = standalone.smoke(
            url, config.load_env(env), receipts=receipts, view=view, on_record=json_echo(json)
        )
        human_console(json).print(f"receipts: {path}", highlight=False)
        if passed < total:
            raise GateFailed(f"smoke: {passed}/{total} passed")


ns = Collection("smoke")
ns.add_task(run)
