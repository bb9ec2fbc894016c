"""The emulator's life: restart with its state, death by SIGKILL, the invoke tasks, config."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from fixtures_emulator import PARENT, get, http_json, release_pids

from pipeline.waiting import poll

REPO = Path(__file__).resolve().parent.parent
INVOKE = REPO / ".venv" / "bin" / "invoke"


def deploy_tagged(emu: Any, image: str, image2: str) -> Any:
    """A service at min 1 instance whose second revision has a tag and no traffic."""
    from google.cloud import run_v2 as v2

    kind = v2.TrafficTargetAllocationType
    sc = emu.services()
    svc = v2.Service(
        template=v2.RevisionTemplate(
            containers=[v2.Container(image=image)],
            scaling=v2.RevisionScaling(min_instance_count=1),
        )
    )
    svc = sc.create_service(parent=PARENT, service_id="keep", service=svc).result(
        timeout=90, polling=emu.POLL
    )
    first = svc.latest_ready_revision.rsplit("/", 1)[1]
    svc.template.containers[0].image = image2
    svc.template.revision = "keep-next"
    svc.traffic = [
        v2.TrafficTarget(
            type_=kind.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION, revision=first, percent=100
        ),
        v2.TrafficTarget(
            type_=kind.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION, revision="keep-next", tag="next"
        ),
    ]
    return sc.update_service(service=svc).result(timeout=90, polling=emu.POLL)


def ready_instances(emu: Any, service: str) -> int | None:
    counts = [r["instance_states"]["ready"] for r in emu.metrics(service)["revisions"]]
    return sum(counts) if counts else None


def test_a_restart_brings_back_services_revisions_traffic_and_instances(
    start_emulator, reference_tarball
):
    emu = start_emulator()
    image = f"file://{reference_tarball('none')}"
    image2 = f"file://{reference_tarball('none', version='1.0.1')}"
    before = deploy_tagged(emu, image, image2)
    tag_url = {t.tag: t.uri for t in before.traffic_statuses}["next"]
    assert get(tag_url)[:2] == (200, "keep-next")
    assert len(emu.instance_pids()) == 2

    assert emu.stop() == 0
    assert release_pids(emu.state_dir) == [], "stopping the emulator stops every instance"
    state = json.loads((emu.state_dir / "state.json").read_text())
    assert [s["name"] for s in state["services"]] == [before.name]

    emu.start()
    after = emu.services().get_service(name=before.name)
    assert (after.uid, after.etag, after.generation) == (before.uid, before.etag, before.generation)
    assert after.uri == before.uri, "the service URL survives the restart"
    assert [(t.revision, t.percent, t.tag, t.uri) for t in after.traffic_statuses] == [
        (t.revision, t.percent, t.tag, t.uri) for t in before.traffic_statuses
    ]
    poll(
        lambda: True if ready_instances(emu, before.name) == 2 else None, timeout=30, what="2 ready"
    )
    assert get(before.uri)[0] == 200 and get(tag_url)[:2] == (200, "keep-next")
    revs = [r.name for r in emu.revisions().list_revisions(parent=before.name)]
    assert len(revs) == 2

    # killed outright, the emulator still takes its instances with it (its host sees EOF)
    assert emu.stop(kill=True) == -9
    poll(lambda: True if not release_pids(emu.state_dir) else None, timeout=15, what="no instance")
    emu.start()
    assert emu.services().get_service(name=before.name).etag == before.etag
    poll(
        lambda: True if ready_instances(emu, before.name) == 2 else None, timeout=30, what="2 ready"
    )


def test_an_operation_pending_across_a_restart_still_finishes(start_emulator, reference_tarball):
    from google.cloud import run_v2 as v2

    emu = start_emulator()
    ready_late = v2.Container(
        image=f"file://{reference_tarball('slowstart')}",  # /ready answers 503 for 6 s
        startup_probe=v2.Probe(
            http_get=v2.HTTPGetAction(path="/ready"), period_seconds=1, failure_threshold=60
        ),
    )
    op = emu.services().create_service(
        parent=PARENT,
        service_id="patient",
        service=v2.Service(template=v2.RevisionTemplate(containers=[ready_late])),
    )
    assert not op.done()
    assert emu.stop() == 0
    assert release_pids(emu.state_dir) == []

    emu.start()
    services = emu.services()
    pending = services.get_operation(request={"name": op.operation.name})
    assert not pending.done, "the restart did not settle the operation by itself"
    done = services.wait_operation(request={"name": op.operation.name, "timeout": {"seconds": 60}})
    assert done.done and not done.HasField("error"), done
    assert done.response.type_url == "type.googleapis.com/google.cloud.run.v2.Service"
    svc = services.get_service(name=f"{PARENT}/services/patient")
    assert svc.latest_ready_revision and get(svc.uri)[:2] == (
        200,
        svc.latest_ready_revision.rsplit("/", 1)[-1],
    )


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_invoke_tasks_start_in_background_report_status_and_stop(tmp_path):
    state = str(tmp_path / "state")
    started = invoke("emulator.start", "--background", "--port", "0", "--state-dir", state)
    assert started.returncode == 0, started.stderr
    assert "running in the background at http://127.0.0.1:" in started.stdout
    assert "invoke emulator.stop" in started.stdout
    try:
        status = invoke("emulator.status", "--state-dir", state, "--json")
        facts = json.loads(status.stdout)
        assert facts["running"] and facts["answering"] and facts["services"] == []
        code, body = http_json(facts["url"], "GET", f"/v2/{PARENT}/services")
        assert (code, body) == (200, {"services": []})

        again = invoke("emulator.start", "--background", "--port", "0", "--state-dir", state)
        assert again.returncode == 2
        assert again.stderr.strip().splitlines()[-1].startswith("error: emulator: already running")
    finally:
        stopped = invoke("emulator.stop", "--state-dir", state)
    assert stopped.returncode == 0 and "emulator: stopped" in stopped.stdout
    after = json.loads(invoke("emulator.status", "--state-dir", state, "--json").stdout)
    assert after["running"] is False


def test_week5_starts_the_emulator_where_its_env_points_and_plain_tasks_find_it(
    tmp_path, reference_tarball
):
    """With no flags the emulator keeps its state under the runs dir (PIPELINE_RUNS_DIR, set
    per test by conftest) and takes its port from the env file; week 5 starts it in the
    background when nothing answers at the env's endpoint, and `invoke emulator.status/stop`
    with no flags find it there."""
    from pipeline import config
    from pipeline.cloudrun.endpoint import ensure_endpoint
    from pipeline.runtime.process import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_file = tmp_path / "local-cloud.toml"
    env_file.write_text(
        f'extends = "{config.resolve("cloudrun-local").resolve()}"\n'
        f'[emulator]\nport = {port}\n[cloudrun]\nendpoint = "{url}"\n'
    )
    env = config.load_env(env_file)
    state = tmp_path / "runs" / "emulator"
    notes: list[str] = []
    try:
        assert ensure_endpoint(env, None, notes.append) == url
        assert notes == [
            f"started the local Cloud Run emulator at {url} (stop it with `invoke emulator.stop`)"
        ]
        code, _ = http_json(
            url,
            "POST",
            f"/v2/{PARENT}/services?serviceId=kept",
            {"template": {"containers": [{"image": f"file://{reference_tarball('none')}"}]}},
        )
        assert code == 200
        status = invoke("emulator.status").stdout.splitlines()
        assert re.fullmatch(
            rf"emulator: running at {re.escape(url)} \(pid \d+\), 1 service\(s\), "
            rf"[01] instance\(s\), state {re.escape(str(state))}",
            status[0],
        ), status
        assert status[1:] == [f"  {PARENT}/services/kept"]
        pid = json.loads(invoke("emulator.status", "--json").stdout)["pid"]
        assert ensure_endpoint(env, None, notes.append) == url
        assert len(notes) == 1, "an emulator that answers is used, not started again"
        assert json.loads(invoke("emulator.status", "--json").stdout)["pid"] == pid
    finally:
        stopped = invoke("emulator.stop")
    assert stopped.stdout.startswith(f"emulator: stopped (pid {pid}, {url})"), stopped.stdout
    assert release_pids(state) == []
    assert invoke("emulator.status").stdout.startswith(f"emulator: not running (state {state})")

    restarted = invoke("emulator.start", "--env", str(env_file), "--background")
    try:
        assert restarted.returncode == 0, restarted.stderr
        assert f"running in the background at {url} " in restarted.stdout
        code, body = http_json(url, "GET", f"/v2/{PARENT}/services/kept")
        assert code == 200 and body["name"] == f"{PARENT}/services/kept", "state kept"
    finally:
        invoke("emulator.stop")
    assert release_pids(state) == []


def test_week5_starts_no_emulator_for_input_it_refuses(tmp_path, reference_tarball):
    from pipeline import config
    from pipeline.runtime.process import free_port

    port = free_port()
    env_file = tmp_path / "local-cloud.toml"
    env_file.write_text(
        f'extends = "{config.resolve("cloudrun-local").resolve()}"\n'
        f'[emulator]\nport = {port}\n[cloudrun]\nendpoint = "http://127.0.0.1:{port}"\n'
    )
    missing = invoke(
        "phase2.week5", "--tarball", str(tmp_path / "nope.tar.gz"), "--env", str(env_file)
    )
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    ungated = invoke("phase2.week5", "--tarball", str(reference_tarball()), "--env", str(env_file))
    assert ungated.returncode == 99 and "preflight: no Gate 2 (week3) run" in ungated.stderr
    assert not (tmp_path / "runs" / "emulator").exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.parametrize(
    "settings, status, google_status",
    [
        ({"admin_error_rate": 1.0, "admin_error_code": 429}, 429, "RESOURCE_EXHAUSTED"),
        ({"admin_error_rate": 1.0, "admin_error_code": 503}, 503, "UNAVAILABLE"),
        ({"admin_error_rate": 0.0}, 200, None),
    ],
    ids=["429 from the env file", "503 from the env file", "none"],
)
def test_fault_injection_from_the_env_file(start_emulator, settings, status, google_status):
    emu = start_emulator(settings=settings, in_process=True)
    code, body = http_json(emu.url, "GET", f"/v2/{PARENT}/services")
    assert code == status
    if google_status:
        assert body["error"]["status"] == google_status and body["error"]["code"] == status


def test_a_busy_port_or_a_bad_env_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "pipeline.emulator", "serve", "--port", str(port)]
        out = subprocess.run(
            [*cmd, "--state-dir", str(tmp_path / "a")], capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: emulator: cannot listen on 127.0.0.1:{port}")
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'extends = "{REPO}/envs/cloudrun-local.toml"\n[emulator]\nqueue_timeout_s = -1\n'
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.emulator",
            "serve",
            "--env",
            str(bad),
            "--state-dir",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "key emulator.queue_timeout_s" in out.stderr.strip().splitlines()[-1]


SIGNALLED = [
    ("SIGINT", True),  # Ctrl-C in a terminal: the whole process group
    ("SIGINT", False),  # `kill -INT` to invoke alone, as a script does
    ("SIGTERM", False),  # a supervisor, `timeout`, CI cancelling the job
    ("SIGHUP", False),  # the terminal or SSH session going away
    ("SIGKILL", False),  # nothing to handle: the kernel tells the emulator (PR_SET_PDEATHSIG)
]


@pytest.mark.parametrize(
    ("signame", "group"),
    SIGNALLED,
    ids=[
        "ctrl-c-to-the-group",
        "sigint-to-invoke",
        "sigterm-to-invoke",
        "sighup-to-invoke",
        "sigkill-to-invoke",
    ],
)
def test_a_signal_to_a_foreground_invoke_start_stops_every_instance(
    tmp_path, reference_tarball, signame, group
):
    import signal

    from pipeline.emulator import daemon

    state = tmp_path / "state"
    proc = subprocess.Popen(
        [str(INVOKE), "emulator.start", "--port", "0", "--state-dir", str(state)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the "terminal" we press Ctrl-C in
    )
    try:
        reg = poll(
            lambda: r if (r := daemon.read_registry(state)) and daemon.probe(r["url"]) else None,
            timeout=60,
            what="the emulator",
        )
        code, _ = http_json(
            reg["url"],
            "POST",
            f"/v2/{PARENT}/services?serviceId=fg",
            {"template": {"containers": [{"image": f"file://{reference_tarball('none')}"}]}},
        )
        assert code == 200
        poll(
            lambda: (
                True
                if http_json(reg["url"], "GET", f"/v2/{PARENT}/services/fg")[1].get(
                    "latestReadyRevision"
                )
                else None
            ),
            timeout=60,
            what="a ready revision",
        )
        assert release_pids(state)
        sig = getattr(signal, signame)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        poll(
            lambda: True if not release_pids(state) and not psutil.pid_exists(reg["pid"]) else None,
            timeout=60,
            what="the emulator and its instances to stop",
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in release_pids(state):
            psutil.Process(pid).kill()
    if signame == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0, out
        assert b"emulator: stopped" in out
    assert release_pids(state) == []
    assert daemon.status(state)["running"] is False


def test_a_second_foreground_start_on_a_held_state_dir_fails_at_once(tmp_path):
    """It used to hang for ever, printing nothing and deaf to SIGINT/SIGTERM."""
    state = tmp_path / "state"
    first = invoke("emulator.start", "--background", "--port", "0", "--state-dir", str(state))
    assert first.returncode == 0, first.stderr
    try:
        second = subprocess.run(
            [str(INVOKE), "emulator.start", "--port", "0", "--state-dir", str(state)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        invoke("emulator.stop", "--state-dir", str(state))
    assert second.returncode == 2, second.stdout + second.stderr
    [line] = second.stderr.strip().splitlines()
    assert "another emulator already uses" in line and str(state) in line


def test_revisions_run_in_gvisor_when_the_env_says_so(
    gvisor_clean, start_emulator, reference_tarball, tmp_path
):
    """`[emulator] runtime = "gvisor"`: each instance is a runsc sandbox with the env's limits;
    stopping the emulator removes every sandbox and cgroup (gvisor_clean, set up first so it
    checks after the emulator fixture's own clean-up)."""
    from fixtures_gvisor import runsc_ids, write_env
    from google.cloud import run_v2 as v2

    before = runsc_ids()
    env = write_env(tmp_path / "emulator-gvisor.toml", {"emulator": {"runtime": "gvisor"}})
    emu = start_emulator(str(env))
    svc = (
        emu.services()
        .create_service(
            parent=PARENT,
            service_id="boxed",
            service=v2.Service(
                template=v2.RevisionTemplate(
                    containers=[v2.Container(image=f"file://{reference_tarball()}")],
                    scaling=v2.RevisionScaling(min_instance_count=1),
                )
            ),
        )
        .result(timeout=120, polling=emu.POLL)
    )
    status, revision, body = get(svc.uri)
    assert (status, revision) == (200, svc.latest_ready_revision.rsplit("/", 1)[1])
    assert json.loads(body)["status"] == "ok"
    (instance,) = emu.metrics(svc.name)["revisions"][0]["instance_list"]
    assert "runsc" in psutil.Process(instance["pid"]).cmdline()[0]
    sandboxes = runsc_ids() - before
    assert len(sandboxes) == 1 and next(iter(sandboxes)).startswith("taiea-")
    assert emu.stop() == 0
    assert runsc_ids() - before == set()


def test_cloudrun_tasks_by_hand_say_what_the_api_refused_in_one_line(tmp_path, reference_tarball):
    """The runbooks' manual commands against a running emulator: an unknown revision is bad
    input (exit 2, one line), not a traceback or a false "drained"."""
    from pipeline import config
    from pipeline.runtime.process import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_file = tmp_path / "by-hand.toml"
    env_file.write_text(
        f'extends = "{config.resolve("cloudrun-local").resolve()}"\n'
        f'[emulator]\nport = {port}\n[cloudrun]\nendpoint = "{url}"\n'
    )
    where = ["--env", str(env_file)]
    started = invoke("emulator.start", "--background", *where)
    assert started.returncode == 0, started.stderr
    try:
        code, body = http_json(
            url,
            "POST",
            "/v2/projects/taiea-local/locations/us-central1/services?serviceId=tai-autonomics",
            {"template": {"containers": [{"image": f"file://{reference_tarball('none')}"}]}},
        )
        assert code == 200, body

        def first_revision() -> str | None:
            _, svc = http_json(
                url, "GET", "/v2/projects/taiea-local/locations/us-central1/services/tai-autonomics"
            )
            return (svc.get("latestReadyRevision") or "").rsplit("/", 1)[-1] or None

        revision = poll(first_revision, timeout=60, what="the first revision")
        for args, said in [
            (["cloudrun.shift", "--to", "nosuch=100"], "error: --to 'nosuch=100': "),
            (["cloudrun.drain", "--revision", "nosuch"], "error: --revision nosuch: "),
            (["cloudrun.drain", "--revision", revision], f"error: {revision} still gets 100 %"),
        ]:
            done = invoke(*args, *where)
            assert done.returncode == 2, done.stdout + done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(said), done.stderr
        shifted = invoke("cloudrun.shift", "--to", f"{revision}=100", *where)
        assert shifted.returncode == 0, shifted.stderr
        assert shifted.stdout.strip() == f"traffic now: {revision} 100 %"
        status = subprocess.run(
            [str(INVOKE), "cloudrun.status", *where],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "80"},  # what CI logs and pipes get
        )
        row = next(line for line in status.stdout.splitlines() if revision in line)
        assert "100 %" in row and len(row.rstrip()) <= 80, status.stdout
    finally:
        invoke("emulator.stop")


def test_week5_stops_the_emulator_it_started_and_keeps_its_services(tmp_path, reference_tarball):
    """Everything a run starts, it stops: the emulator week 5 had to start is stopped at the
    end; the deployed service comes back with the next start."""
    from pipeline import config
    from pipeline.phases.week3 import run_week3
    from pipeline.phases.week4 import run_week4
    from pipeline.phases.week5 import run_week5
    from pipeline.runtime.process import free_port

    tarball = reference_tarball("none")
    local = config.load_env("local")
    assert run_week3(tarball, local, duration=2).verdict.passed
    assert run_week4(tarball, local).verdict.passed
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_file = tmp_path / "auto.toml"
    env_file.write_text(
        f'extends = "{config.resolve("cloudrun-local").resolve()}"\n'
        f'[emulator]\nport = {port}\n[cloudrun]\nendpoint = "{url}"\n'
        "production_s = 2\nproduction_rate = 200\ndrain_timeout_s = 10\n"
    )
    from pipeline.phases.base import QuietView

    class Notes(QuietView):
        def note(self, text: str) -> None:
            notes.append(text)

    notes: list[str] = []
    try:
        result = run_week5(tarball, config.load_env(env_file), view=Notes())
        assert result.verdict.passed, result.verdict.summary()
        assert any(n.startswith(f"started the local Cloud Run emulator at {url}") for n in notes)
        assert notes[-1].startswith("stopped the emulator this run started"), notes
        assert invoke("emulator.status").stdout.startswith("emulator: not running")
        assert release_pids(tmp_path / "runs" / "emulator") == []
        again = invoke("emulator.start", "--env", str(env_file), "--background")
        assert again.returncode == 0, again.stderr
        code, body = http_json(
            url, "GET", "/v2/projects/taiea-local/locations/us-central1/services/tai-autonomics"
        )
        assert code == 200 and body["latestReadyRevision"], body
    finally:
        invoke("emulator.stop")
