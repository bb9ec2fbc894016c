"""`invoke report`: a run's HTML report (charts) and JUnit XML, from its receipts alone."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console


@task(
    help={
        "receipts": "the run's receipts.jsonl (required)",
        "html": "where to write the HTML report (default: beside the receipts, report.html for "
        "a receipts.jsonl, else STEM.report.html; report-2.html … when another run's is there); "
        "refused if it holds another run's report",
        "junit": "where to write the JUnit XML (default: beside the receipts, junit.xml for a "
        "receipts.jsonl, else STEM.junit.xml; junit-2.xml … when another run's is there); "
        "refused if it holds another run's report",
        "env": "env name (envs/NAME.toml) or path for the memory limit and soft bands; "
        "default: the run's own env",
    },
    auto_shortflags=False,  # -h stays help, not --html
)
def write(c, receipts=None, html=None, junit=None, env=None):
    """Write the HTML report (self-contained, charts) and JUnit XML of a run; prints their paths.
    Rewrites the same run's reports; never overwrites another run's."""
    with exit_codes():
        from pipeline.errors import PipelineError
        from pipeline.reporting import write_reports

        if not receipts:
            raise PipelineError("report: --receipts FILE is required (a run's receipts.jsonl)")
        html_path, junit_path = write_reports(receipts, env, html_path=html, junit_path=junit)
        console = human_console(False)
        console.print(f"report: {html_path}", highlight=False, soft_wrap=True)
        console.print(f"junit: {junit_path}", highlight=False, soft_wrap=True)


ns = Collection("report")
ns.add_task(write, default=True)
