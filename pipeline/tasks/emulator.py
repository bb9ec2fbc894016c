"""`invoke emulator.start|stop|status`: the local Cloud Run (Admin API v2 emulator).

Thin: each task runs `python -m pipeline.emulator <command>` (the emulator is a server; nothing
outside pipeline/emulator imports it) and exits with its status.
"""

import signal

from invoke import Collection, task

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

ENV_HELP = "env name (envs/NAME.toml) or path with the [emulator] settings; default cloudrun-local"
STATE_HELP = "where the emulator keeps its state (default <runs>/emulator, PIPELINE_RUNS_DIR)"


def _run(*args):
    """Run the emulator's command line and exit with its status. The emulator runs in its own
    process group: a signal that ends this process (SIGINT, SIGTERM, SIGHUP, sent to it alone or
    to its group) is passed on once, and we wait for the emulator to stop its instances; if this
    process is killed outright, the kernel sends the emulator SIGTERM (PR_SET_PDEATHSIG)."""
    import signal
    import subprocess
    import sys

    from invoke.exceptions import Exit

    from pipeline.runtime.process import dies_with_us

    proc = subprocess.Popen(
        dies_with_us([sys.executable, "-m", "pipeline.emulator", *args]), start_new_session=True
    )

    def forward(signum, _frame):
        proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code:
        raise Exit(code=code)


@task(
    help={
        "port": "port of the Admin API on 127.0.0.1 (default: the env file's, 8089; 0 picks one)",
        "env": ENV_HELP,
        "background": "detach and return once it answers; stop it with `invoke emulator.stop`",
        "state_dir": STATE_HELP,
    }
)
def start(c, port=None, env="cloudrun-local", background=False, state_dir=None):
    """Serve the Cloud Run Admin API v2 on 127.0.0.1 until Ctrl-C (or, with --background, until
    `invoke emulator.stop`); services, revisions and traffic come back after a restart."""
    from pipeline.tasks._cli import exit_codes, number

    args = ["start", "--env", env]
    if port is not None:
        with exit_codes():
            args += ["--port", str(number("--port", port, integer=True, at_least=0, at_most=65535))]
    if state_dir:
        args += ["--state-dir", state_dir]
    if background:
        args.append("--background")
    _run(*args)


@task(
    help={
        "state_dir": STATE_HELP,
        "timeout": "seconds to wait for it to stop its instances before SIGKILL (default 60)",
        "json": "print one JSON object for scripts",
    }
)
def stop(c, state_dir=None, timeout=None, json=False):
    """Stop the running emulator and every instance it started."""
    from pipeline.tasks._cli import exit_codes, number

    with exit_codes():
        args = ["stop", "--timeout", str(number("--timeout", timeout, 60.0, above=0))]
    if state_dir:
        args += ["--state-dir", state_dir]
    if json:
        args.append("--json")
    _run(*args)


@task(help={"state_dir": STATE_HELP, "json": "print one JSON object for scripts"})
def status(c, state_dir=None, json=False):
    """Whether an emulator is running, where, and what it serves."""
    args = ["status"]
    if state_dir:
        args += ["--state-dir", state_dir]
    if json:
        args.append("--json")
    _run(*args)


ns = Collection("emulator")
ns.add_task(start)
ns.add_task(stop)
ns.add_task(status, default=True)
