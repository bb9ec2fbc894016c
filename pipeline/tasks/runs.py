"""`invoke runs.recover`: close the runs a SIGKILL cut off, and stop what they left running."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes


@task(
    help={
        "runs": "the runs dir to look in (default: PIPELINE_RUNS_DIR or ./runs)",
        "receipts": "one receipts file (or run dir) to recover instead of every unsealed run",
        "json": "print one JSON object per recovered run",
    },
    aliases=("recover-runs",),
)
def recover(c, runs=None, receipts=None, json=False):
    """Find runs that never sealed (killed), stop the releases they left, remove their temp
    dirs and close each file with a sealed `crashed` record: its gate stays failed, its chain
    verifies. Nothing is rewritten."""
    with exit_codes():
        from pathlib import Path

        import orjson

        from pipeline import receipts as receipt_log
        from pipeline.phases import recovery

        if receipts:
            paths = [receipt_log.receipts_file(receipts)]
        else:
            paths = recovery.unsealed(Path(runs) if runs else receipt_log.runs_dir())
        for path in paths:
            done = recovery.recover(path)
            if json:
                print(orjson.dumps(recovery.describe(done)).decode())
            else:
                stopped = ", ".join(map(str, done.stopped)) or "nothing left running"
                print(f"{path}: closed as crashed (run {done.run_id}); stopped: {stopped}")
                for what in done.removed:
                    print(f"  removed {what}")
                if done.traffic:
                    print(f"  {done.traffic}")
        if not paths and not json:
            print("no unsealed run: nothing to recover")


ns = Collection("runs")
ns.add_task(recover)
