"""`invoke receipts.verify` and `receipts.show`: the chain, and what is in it."""

import sys

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, number, positional


@task(
    help={
        "file": "the receipts file (a run's receipts.jsonl, or runs/gates.jsonl)",
        "unsealed": "accept a file without a seal (a run still going, or the ledger)",
    },
    aliases=("check",),
)
def verify(c, file, unsealed=False):
    """Verify the hash chain: exit 0 verified, 99 broken (first bad line named), 2 unreadable."""
    with exit_codes():
        file = positional(file, "receipts.verify")
        from pipeline import receipts, views
        from pipeline.errors import GateFailed

        verification = receipts.verify_file(receipts.receipts_file(file), unsealed=unsealed)
        views.render_verification(human_console(False), verification)
        if not verification.ok:
            raise GateFailed(verification.describe())


@task(
    help={
        "file": "the receipts file",
        "kind": "only receipts of this kind (request, receipt, metrics, gate, …)",
        "limit": "show at most this many rows",
        "json": "print the matching receipts as JSON lines instead of a table",
    },
    aliases=("list",),
)
def show(c, file, kind=None, limit=None, json=False):
    """Show the receipts of a run as a table (no verification: use receipts.verify)."""
    with exit_codes():
        file = positional(file, "receipts.show")
        from pathlib import Path

        import orjson

        from pipeline import receipts, views

        limit = number("--limit", limit, integer=True, at_least=1)
        records = receipts.select(Path(file), kind or None, limit)
        if json:
            for record in records:
                sys.stdout.buffer.write(orjson.dumps(record) + b"\n")
            return
        human_console(False).print(views.receipts_table(records))


ns = Collection("receipts")
ns.add_task(verify)
ns.add_task(show)
