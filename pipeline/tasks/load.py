"""`invoke load --url U --rate R --duration S`: a load profile against a running release."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, json_echo, number, phase_view, required


@task(
    help={
        "url": "base URL of the release, e.g. http://127.0.0.1:8080 (no path: the paths "
        "come from the env's smoke tests)",
        "rate": "arrival rate, requests per second (open loop; default 10)",
        "duration": "seconds of load (default 15)",
        "closed": "closed loop instead: --connections connections sending back to back",
        "connections": "connections for --closed (default 16)",
        "env": "env whose smoke endpoints make the request mix (default local)",
        "receipts": "where to write the receipts (default runs/<run-id>/receipts.jsonl)",
        "json": "print the receipts as JSON lines on stdout; the human view goes to stderr",
    },
    default=True,
    positional=[],
)
def run(
    c,
    url,
    rate=None,
    duration=None,
    closed=False,
    connections=None,
    env="local",
    receipts=None,
    json=False,
):
    """Load a release over its smoke endpoints, a request receipt per request; prints p50/p95/p99."""
    with exit_codes():
        url = required("--url", url, "load")
        from pipeline import config
        from pipeline.phases import standalone

        rate = number("--rate", rate, 10.0, above=0)
        duration = number("--duration", duration, 15.0, above=0)
        connections = number("--connections", connections, 16, integer=True, at_least=1)
        environment = config.load_env(env)
        url = standalone.release_url(url, "the request mix comes from the env's smoke tests")
        console, view = phase_view(json, f"load · {url}")
        summary, path = standalone.load(
            url,
            environment,
            rate=rate,
            duration=duration,
            closed=closed,
            connections=connections,
            receipts=receipts,
            view=view,
            on_record=json_echo(json),
        )
        human_console(json).print(
            f"{summary.completed} requests, {summary.achieved_rps:.1f} req/s, success {summary.success_rate:.2%}, "
            f"p50 {summary.p50_ms:.2f} ms, p95 {summary.p95_ms:.2f} ms, p99 {summary.p99_ms:.2f} ms, "
            f"dropped {summary.dropped}\nreceipts: {path}",
            highlight=False,
        )


ns = Collection("load")
ns.add_task(run)
