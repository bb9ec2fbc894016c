"""`invoke gate.check`: re-judge any run from its receipts alone, as CI does before a deploy."""

import json as jsonlib

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, required


@task(
    help={
        "gate": "gate to judge: week2..week5 (or gate1..gate4), image, or canary:STEP (one canary "
        "step's window, e.g. canary:canary-10, with its comparison with the baseline)",
        "receipts": "the run's receipts.jsonl",
        "env": "env name (envs/NAME.toml) or path holding the [gates.*] thresholds; default local",
        "json": "print the verdict as one JSON line on stdout; human view on stderr",
        "unsealed": "judge an unfinished run (no seal line) instead of failing it",
    },
    aliases=("judge",),
    positional=[],
)
def check(c, gate, receipts, env="local", json=False, unsealed=False):
    """Verify a receipts file, judge a gate over it, add the verdict to runs/gates.jsonl: exit 0 pass, 99 fail, 2 bad input."""
    with exit_codes():
        gate = required("--gate", gate, "gate.check")
        receipts = required("--receipts", receipts, "gate.check")
        from pipeline import envfiles, verdicts, views
        from pipeline import receipts as receipt_log
        from pipeline.errors import GateFailed

        if gate.startswith("canary:"):
            from pipeline import config
            from pipeline.analysis import step_gate

            spec = step_gate(config.load_env(env), gate.removeprefix("canary:"))
        else:
            spec = envfiles.gate_spec(env, gate)  # the rest of the env is not needed to judge
        receipts = receipt_log.receipts_file(receipts)  # bad input (exit 2), not a ledger verdict
        verdict = verdicts.judge_file(receipts, spec, require_seal=not unsealed)
        console = human_console(json)
        if verdict.verification is not None:
            views.render_verification(console, verdict.verification)
        views.render_verdict(console, verdict)
        if json:
            print(jsonlib.dumps(verdict.as_fields(), ensure_ascii=False))
        if not verdict.passed:
            raise GateFailed(verdict.summary())


ns = Collection("gate")
ns.add_task(check, default=True)
