"""Shared test fixtures. Each area keeps its fixtures in a tests/fixtures_*.py plugin module."""

import contextlib
import os
import shutil

import pytest

# Every receipt a phase, a task or runs.recover writes during the suite is checked against
# pipeline/schema.py as it is written (in this process and in every invoke it starts).
os.environ["PIPELINE_SCHEMA_CHECK"] = "1"

pytest_plugins = [
    name[:-3]
    for name in sorted(os.listdir(os.path.dirname(__file__)))
    if name.startswith("fixtures_") and name.endswith(".py")
]


# Modules that start gVisor sandboxes: under pytest-xdist (`make test` runs two workers) they run
# on one worker, one after another, because `gvisor_clean` judges "left behind" by what appeared
# in `runsc list` and the cgroups during a test, machine-wide. Every other module is a unit of its
# own (its module-scoped fixtures start once; some tests build on the one before).
SANDBOX_MODULES = {
    "test_chaos_sandbox.py",
    "test_demo.py",
    "test_emulator_lifecycle.py",
    "test_gvisor.py",
    "test_image_sandbox.py",
    "test_phase2_all.py",
    "test_remote.py",
    "test_remote_week2.py",
    "test_week2.py",
}


def _unit(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return "sandboxes" if module.rsplit("/", 1)[-1] in SANDBOX_MODULES else module


# The longest units go first (xdist hands units out in collection order, so the long ones do
# not end up last on one worker while the other idles); order is kept within each unit.
LONGEST_FIRST = (
    "sandboxes",
    "tests/test_week5.py",
    "tests/test_emulator_api.py",
    "tests/test_chaos.py",
    "tests/test_chaos_rollout.py",
    "tests/test_attest_enforced.py",
    "tests/test_week3.py",
    "tests/test_load_probe.py",
    "tests/test_reference_release.py",
    "tests/test_stage_tasks.py",
    "tests/test_reporting.py",
)


# Markers per real component a test starts (`pytest -m unit` for the quick loop, `-m "not gvisor"`
# …), from the fixtures it uses and, for modules whose phases start a component themselves, by
# module. A test with none of them is `unit`.
COMPONENT_FIXTURES = {
    "reference_tarball": "release",
    "start_reference": "release",
    "runsc": "gvisor",
    "gvisor_clean": "gvisor",
    "sandbox_env": "gvisor",
    "sshd": "sshd",
    "sshd_factory": "sshd",
    "start_emulator": "emulator",
    "shared_emulator": "emulator",
    "chromium": "chromium",
    "local_registry": "registry",
    "registry_factory": "registry",
}
COMPONENT_MODULES = {
    "test_chaos_sandbox.py": ("gvisor", "release"),
    "test_chaos_rollout.py": ("emulator", "release"),
    "test_week5.py": ("emulator",),
    "test_emulator_lifecycle.py": ("emulator",),
    "test_demo.py": ("emulator", "gvisor", "release"),
    "test_phase2_all.py": ("emulator", "gvisor"),
    "test_week2.py": ("gvisor",),
    "test_remote_week2.py": ("gvisor", "sshd"),
}
COMPONENTS = ("release", "gvisor", "sshd", "emulator", "chromium", "registry")


@pytest.fixture(autouse=True)
def _signal_handlers_as_found():
    """Each test leaves SIGINT, SIGTERM and SIGHUP as it found them: a handler left behind
    would change how a later test's Ctrl-C behaves. One that was left is put back and named in
    the warnings summary."""
    import signal
    import warnings

    ours = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.getsignal(sig) for sig in ours}
    yield
    for sig, handler in before.items():
        if signal.getsignal(sig) is not handler:
            warnings.warn(
                f"{sig.name} handler left changed: {signal.getsignal(sig)!r}", stacklevel=1
            )
            signal.signal(sig, handler)


def pytest_collection_modifyitems(config, items):
    rank = {unit: n for n, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        found = {COMPONENT_FIXTURES[f] for f in item.fixturenames if f in COMPONENT_FIXTURES}
        found.update(COMPONENT_MODULES.get(module, ()))
        for name in sorted(found) or ["unit"]:
            item.add_marker(getattr(pytest.mark, name))


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's loadscope, with the sandbox modules as one scope (xdist_group marks no longer
    reach the scheduler under pytest 9.2, which made node ids read-only)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ByModule(config, log)


def require_tool(tool: str, package: str) -> str:
    """The path of an external tool, or a failure naming the Debian package (never a skip)."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"{tool} is not installed: apt-get install -y {package} (make test does this as root)"
        )
    return path


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    """Every test writes its runs and ledger under its own temp dir, never ./runs."""
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("PIPELINE_RECEIPT_KEY", raising=False)


_OURS: list[str] = []  # the session's temp root: every release a test starts lives under it
_SHARED: list[str] = []  # roots of processes a module-scoped fixture keeps across its tests


@contextlib.contextmanager
def shared_processes(root):
    """For a module-scoped fixture (an emulator and its instances): processes under `root` may
    outlive single tests; when the fixture ends, none of them may be left."""
    _SHARED.append(str(root))
    try:
        yield
    finally:
        _SHARED.remove(str(root))
        from pipeline.waiting import WaitTimeout, poll

        try:
            poll(
                lambda: True if not _live(_beams(str(root))) else None,
                timeout=15,
                what="shared processes",
            )
        except WaitTimeout:
            pytest.fail(f"processes left under {root}: {sorted(_live(_beams(str(root))))}")


@pytest.fixture(scope="session", autouse=True)
def _session_tempdir(tmp_path_factory):
    """mkdtemp() goes under pytest's basetemp, so the VMs this session starts can be told apart
    from those of any other run on the machine (by the release root in their command line)."""
    import tempfile

    base = tmp_path_factory.getbasetemp()
    previous, tempfile.tempdir = tempfile.tempdir, str(base)
    _OURS.append(str(base))
    yield
    tempfile.tempdir = previous


def _beams(within: str | None = None) -> set[int]:
    """Erlang VMs and sandboxes of this session (or under `within`), shared ones excepted."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] in ("beam.smp", "runsc", "runsc-sandbox", "runsc-gofer"):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if within is not None:
                if within in cmdline:
                    found.add(proc.pid)
            elif any(base in cmdline for base in _OURS) and not any(s in cmdline for s in _SHARED):
                found.add(proc.pid)
    return found


def _live(pids: set[int]) -> list[int]:
    import psutil

    live = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                live.append(pid)
        except psutil.NoSuchProcess:
            pass
    return live


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    """Every test stops what it started: no Erlang VM or sandbox outlives it."""
    before = _beams()
    yield
    from pipeline.waiting import WaitTimeout, poll

    def settled():
        return True if not _live(_beams() - before) else None

    try:
        poll(settled, timeout=5, interval=0.05, what="processes to exit")
    except WaitTimeout:
        left = sorted(_beams() - before)
        pytest.fail(f"processes left running after the test: {left}")
