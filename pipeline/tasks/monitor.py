"""`invoke monitor --pid P --seconds S`: sample a running release's memory and CPU."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, json_echo, number, phase_view, required


@task(
    help={
        "pid": "pid of the release (beam.smp or its start script); its whole process tree is sampled",
        "seconds": "how long to sample (default 10)",
        "env": "env with the sampling interval, memory limit and soft bands (default local)",
        "receipts": "where to write the receipts (default runs/<run-id>/receipts.jsonl)",
        "json": "print the receipts as JSON lines on stdout; the human view goes to stderr",
    },
    default=True,
    positional=[],
)
def run(c, pid, seconds=None, env="local", receipts=None, json=False):
    """A metrics receipt every interval (rss_mb, cpu_percent, band); prints the peak."""
    with exit_codes():
        pid = required("--pid", pid, "monitor")
        from pipeline import config
        from pipeline.phases import standalone

        pid = number("--pid", pid, integer=True, above=0)
        seconds = number("--seconds", seconds, 10.0, above=0)
        environment = config.load_env(env)
        console, view = phase_view(json, f"monitor · pid {pid}")
        peak, samples, path = standalone.monitor(
            pid,
            environment,
            seconds=seconds,
            receipts=receipts,
            view=view,
            on_record=json_echo(json),
        )
        human_console(json).print(
            f"{samples} samples, peak {peak:.1f} MB\nreceipts: {path}", highlight=False
        )


ns = Collection("monitor")
ns.add_task(run)
