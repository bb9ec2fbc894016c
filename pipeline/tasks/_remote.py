"""The `--host` flags the live phase tasks share: run the release on a host over SSH.

Light on purpose (invoke --list imports every task module): fabric and paramiko are imported
only when a task runs with --host.
"""

REMOTE_HELP = {
    "host": "run the release on this host over SSH: user@host[:port] (keys or an agent only)",
    "identity": "with --host: private key file to log in with (default: ssh-agent, ~/.ssh/id_*)",
    "known_hosts": "with --host: known_hosts file to check the host key against "
    "(default ~/.ssh/known_hosts, or the env's [remote] known_hosts)",
    "accept_new_host_key": "with --host: trust an unknown host key and add it to that file",
}


def remote_runtime(host, tarball, identity=None, known_hosts=None, accept_new_host_key=False):
    """The phase's `runtime_factory` for --host, or None to run here. Checks the flags now."""
    if not host:
        if identity or known_hosts or accept_new_host_key:
            from pipeline.errors import PipelineError

            raise PipelineError("--identity, --known-hosts and --accept-new-host-key need --host")
        return None
    from pipeline.runtime.remote import remote_factory

    return remote_factory(
        host,
        tarball=tarball,
        identity=identity,
        known_hosts=known_hosts,
        accept_new_host_key=accept_new_host_key,
    )


def runtime_kwargs(factory):
    """`runtime_factory=…` for the phase call when --host was given; nothing otherwise."""
    return {} if factory is None else {"runtime_factory": factory}


def run_live_task(
    title,
    runner,
    tarball,
    env,
    *,
    port,
    receipts,
    json,
    host,
    identity,
    known_hosts,
    accept_new_host_key,
    **phase_kwargs,
):
    """What the tasks of weeks 2–4 share: load the env, choose here or --host, show the live
    view, run the phase. Returns (result, console) for the task to finish."""
    from pipeline import config
    from pipeline.tasks._cli import json_echo, number, phase_view

    port = number("--port", port, integer=True, at_least=0, at_most=65535)
    environment = config.load_env(env)
    factory = remote_runtime(host, tarball, identity, known_hosts, accept_new_host_key)
    where = f" · on {host}" if host else ""
    console, view = phase_view(json, f"{title} · env {environment.name}{where}")
    result = runner(
        tarball,
        environment,
        port=port,
        receipts=receipts,
        view=view,
        on_record=json_echo(json),
        **phase_kwargs,
        **runtime_kwargs(factory),
    )
    return result, console
