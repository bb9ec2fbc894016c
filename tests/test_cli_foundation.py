"""The real `invoke` command line over the foundation: gate.check, receipts.verify, receipts.show.

Every test runs .venv/bin/invoke as a subprocess from the repo root, as a release engineer does,
with PIPELINE_RUNS_DIR pointing at the test's temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline import config, receipts
from pipeline.receipts import ReceiptWriter

REPO = Path(__file__).resolve().parent.parent
INVOKE = REPO / ".venv" / "bin" / "invoke"
SHA = "ab" * 32


def invoke(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), *args],
        cwd=REPO,
        env=dict(os.environ, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_bad_input(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 with exactly one line on stderr that starts with `error:`, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def runs_dir() -> Path:
    return Path(os.environ["PIPELINE_RUNS_DIR"])


def write_run(path: Path, *, latencies: Sequence[float] = (20, 30, 40, 50), seal=True) -> Path:
    with ReceiptWriter(path, run_id="cli-run", phase="week3") as w:
        w.write("run", tool="pipeline", release={"name": "tai", "version": "1.0", "sha256": SHA})
        w.write("startup", "start", seconds=1.5)
        w.write("stage", "start", event="end", passed=True, seconds=1.6)
        for n in range(5):
            w.write("receipt", "smoke", test=f"t{n}", status=200, latency_ms=8, passed=True)
        for n, latency in enumerate(latencies):
            w.write("request", "load", endpoint="/health", method="GET", status=200,
                    latency_ms=float(latency), sent_s=n / 10, passed=True, error=None)  # fmt: skip
        w.write("metrics", "monitor", rss_mb=150.0, cpu_percent=4.0)
        if seal:
            w.seal()
    return path


FAILING = [100] * 18 + [900, 1000]  # p(95) = 905 ms


# ---------------------------------------------------------------------------------------------
# invoke --list


HEAVY = ("google", "grpc", "aiohttp", "fabric", "paramiko", "pydantic", "requests", "numpy", "rich")


def test_list_shows_the_collections_and_loads_no_heavy_package() -> None:
    """`invoke --list` stays fast because it imports no client library (its wall time is a bar
    of bench/bench_week3_phase.py): every heavy import waits inside the task that needs it."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "invoke", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name in (
        "gate.check",
        "receipts.verify",
        "receipts.show",
        "phase2.week5",
        "emulator.start",
    ):
        assert name in result.stdout, result.stdout
    loaded = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "invoke" in loaded and "pipeline" in loaded, "importtime output not understood"
    assert sorted(loaded & set(HEAVY)) == []


def test_every_flag_has_help() -> None:
    for task, flags in {
        "gate.check": ["--gate", "--receipts", "--env", "--json", "--unsealed"],
        "receipts.verify": ["--file", "--unsealed"],
        "receipts.show": ["--file", "--kind", "--limit", "--json"],
    }.items():
        result = invoke("--help", task)
        assert result.returncode == 0, result.stderr
        options = result.stdout.split("Options:", 1)[1].splitlines()
        for flag in flags:
            (line,) = [x for x in options if f" {flag}" in x or x.strip().startswith(flag)]
            help_text = line.split("  ")[-1].strip()
            assert len(help_text) > 10 and not help_text.startswith("-"), (task, line)


# ---------------------------------------------------------------------------------------------
# gate.check


def test_gate_check_passes_a_sealed_run(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl")
    result = invoke("gate.check", "--gate", "week3", "--receipts", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "p(95) < 250" in result.stdout
    assert result.stderr == ""


def test_gate_check_fails_naming_the_expression_and_measured_value(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl", latencies=FAILING)
    result = invoke("gate.check", "--gate", "gate2", "--receipts", str(path))
    assert result.returncode == 99, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "905" in result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith("gate failed: week3: FAIL — http.latency_ms p(95) < 250 (measured 905)")
    assert "Traceback" not in result.stdout + result.stderr


def test_gate_check_fails_an_edited_run_naming_the_line(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl")
    data = path.read_bytes()
    line = 1 + data[: data.index(b'"latency_ms":40.0')].count(b"\n")
    path.write_bytes(data.replace(b'"latency_ms":40.0', b'"latency_ms":4.0'))
    result = invoke("gate.check", "--gate", "week3", "--receipts", str(path))
    assert result.returncode == 99
    assert f"line {line}: edited" in result.stderr


def test_gate_check_unsealed_run_fails_unless_asked(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl", seal=False)
    result = invoke("gate.check", "--gate", "week3", "--receipts", str(path))
    assert result.returncode == 99 and "unsealed" in result.stderr
    allowed = invoke("gate.check", "--gate", "week3", "--receipts", str(path), "--unsealed")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_gate_check_bad_input_exits_2_with_one_error_line(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl")
    missing = invoke("gate.check", "--gate", "week3", "--receipts", str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in assert_bad_input(missing)

    unknown = invoke("gate.check", "--gate", "week9", "--receipts", str(path))
    assert "[gates.week9]" in assert_bad_input(unknown)

    bad_env = tmp_path / "bad.toml"
    base = config.ENVS_DIR / "base.toml"
    bad_env.write_text(f'extends = "{base}"\n[gates.week3]\n"http.latency_ms" = ["p(95) <"]\n')
    malformed = invoke(
        "gate.check", "--gate", "week3", "--receipts", str(path), "--env", str(bad_env)
    )
    line = assert_bad_input(malformed)
    assert str(bad_env) in line and "'http.latency_ms'" in line

    not_toml = tmp_path / "broken.toml"
    not_toml.write_text("[gates\n")
    assert str(not_toml) in assert_bad_input(
        invoke("gate.check", "--gate", "week3", "--receipts", str(path), "--env", str(not_toml))
    )
    folder = invoke("gate.check", "--gate", "week3", "--receipts", str(tmp_path))
    assert (
        assert_bad_input(folder)
        == f"error: {tmp_path}: a directory with no receipts.jsonl, not a receipts file"
    )
    no_env = invoke("gate.check", "--gate", "week3", "--receipts", str(path), "--env", "nosuch")
    assert "nosuch.toml: no such env file" in assert_bad_input(no_env)
    assert not (runs_dir() / "gates.jsonl").exists()  # bad input is not a verdict


def test_gate_check_json_prints_one_object_on_stdout(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl", latencies=FAILING)
    result = invoke("gate.check", "--gate", "week3", "--receipts", str(path), "--json")
    assert result.returncode == 99
    verdict = json.loads(result.stdout)  # exactly one JSON document, nothing else
    assert result.stdout.count("\n") == 1
    assert verdict["gate"] == "week3" and verdict["passed"] is False
    by_expr = {(r["metric"], r["expression"]): r for r in verdict["results"]}
    assert by_expr[("http.latency_ms", "p(95) < 250")]["measured"] == pytest.approx(905.0)
    assert by_expr[("http.latency_ms", "p(95) < 250")]["passed"] is False
    assert by_expr[("smoke.passed", "count == 5")]["passed"] is True
    assert "p(95) < 250" in result.stderr and "metric" in result.stderr  # the table
    passing = invoke(
        "gate.check", "--gate", "week3", "--receipts", str(write_run(tmp_path / "ok.jsonl")),
        "--json",
    )  # fmt: skip
    assert passing.returncode == 0 and json.loads(passing.stdout)["passed"] is True


URL = "http://127.0.0.1:9"
BAD_NUMBERS = [
    ("week3 negative rate", ["phase2.week3", "--tarball", "x", "--rate", "-5"], "--rate"),
    ("week3 nan duration", ["phase2.week3", "--tarball", "x", "--duration", "nan"], "--duration"),
    ("week3 port too big", ["phase2.week3", "--tarball", "x", "--port", "99999"], "--port"),
    ("week2 zero duration", ["phase2.week2", "--tarball", "x", "--duration", "0"], "--duration"),
    (
        "week4 concurrency",
        ["phase2.week4", "--tarball", "x", "--concurrency", "-3"],
        "--concurrency",
    ),
    ("all duration", ["phase2.all", "--tarball", "x", "--duration", "soon"], "--duration"),
    ("load rate text", ["load", "--url", URL, "--rate", "abc"], "--rate"),
    ("load connections", ["load", "--url", URL, "--closed", "--connections", "0"], "--connections"),
    ("monitor pid", ["monitor", "--pid", "abc"], "--pid"),
    ("monitor seconds", ["monitor", "--pid", "1", "--seconds", "-1"], "--seconds"),
    ("scale max", ["cloudrun.scale", "--max-instances", "0"], "--max-instances"),
    ("drain timeout", ["cloudrun.drain", "--revision", "r", "--timeout", "x"], "--timeout"),
    ("release.start port", ["release.start", "--tarball", "x", "--port", "-1"], "--port"),
    ("release.stop grace", ["release.stop", "--grace", "-1"], "--grace"),
    (
        "pilot operations",
        ["pilot.generate", "--tenant", "acme", "--operations", "0"],
        "--operations",
    ),
    ("emulator port", ["emulator.start", "--port", "abc"], "--port"),
    ("emulator timeout", ["emulator.stop", "--timeout", "never"], "--timeout"),
]


@pytest.mark.parametrize(
    "argv, flag", [b[1:] for b in BAD_NUMBERS], ids=[b[0] for b in BAD_NUMBERS]
)
def test_a_bad_number_is_one_line_naming_the_flag(argv: list[str], flag: str) -> None:
    line = assert_bad_input(invoke(*argv))
    assert line.startswith(f"error: {flag}: expected "), line
    assert not (runs_dir() / "gates.jsonl").exists()


@pytest.mark.parametrize("task", ["smoke", "load"])
@pytest.mark.parametrize("url", ["not-a-url", "ftp://x:21", "http://127.0.0.1:99999"])
def test_a_url_that_names_no_release_is_bad_input(task: str, url: str) -> None:
    line = assert_bad_input(invoke(task, "--url", url))
    assert line == f"error: --url: expected http://HOST:PORT of a running release, got {url!r}"
    assert not any(runs_dir().glob("*/receipts.jsonl")), "bad input writes no receipts"


URLS_WITH_MORE_THAN_A_BASE = [
    ("path", "http://127.0.0.1:9/health"),
    ("path-and-slash", "http://127.0.0.1:9/api/"),
    ("double-slash", "http://127.0.0.1:9//"),
    ("query", "http://127.0.0.1:9/?probe=1"),
    ("empty-query", "http://127.0.0.1:9?"),
    ("fragment", "http://127.0.0.1:9#top"),
]
WHERE_PATHS_COME_FROM = {
    "smoke": "each smoke test's path comes from the env",
    "load": "the request mix comes from the env's smoke tests",
}


@pytest.mark.parametrize("task", ["smoke", "load"])
@pytest.mark.parametrize(
    "url",
    [u[1] for u in URLS_WITH_MORE_THAN_A_BASE],
    ids=[u[0] for u in URLS_WITH_MORE_THAN_A_BASE],
)
def test_a_url_with_a_path_is_refused_not_joined_with_every_request(
    task: str, url: str, tmp_path: Path
) -> None:
    """`--url http://host:port/health` used to send every request to /health/health."""
    out = tmp_path / "receipts.jsonl"
    line = assert_bad_input(invoke(task, "--url", url, "--receipts", str(out)))
    assert line == (
        f"error: --url: expected the release's base URL (http://HOST:PORT), got {url!r}: "
        f"{WHERE_PATHS_COME_FROM[task]}"
    )
    assert not out.exists() and not runs_dir().exists(), "bad input starts no run"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9", "http://127.0.0.1:9/"], ids=["bare", "slash"]
)
def test_a_base_url_with_or_without_its_slash_is_taken(url: str, tmp_path: Path) -> None:
    out = tmp_path / "receipts.jsonl"
    done = invoke("smoke", "--url", url, "--receipts", str(out))
    assert done.returncode == 99, done.stderr  # nothing listens there: every test fails, judged
    records = list(receipts.iter_records(out))
    assert records[0]["kind"] == "run" and records[0]["target"] == "http://127.0.0.1:9"
    assert sum(1 for r in records if r["kind"] == "receipt") == 5


@pytest.mark.parametrize("argv", [["cloudrun.status"], ["cloudrun.scale", "--min-instances", "1"]])
def test_cloudrun_by_hand_with_nothing_at_a_local_endpoint_says_so_at_once(argv) -> None:
    from pipeline.runtime.process import free_port

    where = f"http://127.0.0.1:{free_port()}"
    line = assert_bad_input(invoke(*argv, "--endpoint", where, timeout=20))
    assert line.startswith(f"error: nothing answers at {where}: start the emulator")


BAD_PATHS = [
    ("receipts under a file", ["smoke", "--url", URL, "--receipts", "{file}/r.jsonl"],
     "{file}/r.jsonl: cannot write receipts here"),
    ("extract under a file", ["release.extract", "--tarball", "{tarball}", "--dest", "{file}/x"],
     "{file}/x: cannot extract here"),
    ("rollout state a directory", ["cloudrun.resume", "--state", "{dir}"],
     "{dir}: cannot read the rollout state"),
    ("rollout state binary", ["cloudrun.rollback", "--state", "{binary}"],
     "{binary}: cannot read the rollout state: not UTF-8 text"),
    ("scenario out a directory", ["pilot.generate", "--tenant", "acme", "--out", "{dir}"],
     "{dir}: cannot write the scenario"),
    ("emulator state a file", ["emulator.status", "--state-dir", "{file}"],
     "{file}: the emulator's state dir is not a directory"),
    ("damaged release state", ["release.stop"], "current.json: not a release state"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", [b[1:] for b in BAD_PATHS], ids=[b[0] for b in BAD_PATHS])
def test_a_path_that_cannot_serve_is_one_line(argv, message, tmp_path, reference_tarball) -> None:
    names = {
        "file": tmp_path / "a-file",
        "dir": tmp_path / "a-dir",
        "binary": tmp_path / "binary.json",
        "tarball": reference_tarball(),
    }
    names["file"].write_text("x")
    names["dir"].mkdir()
    names["binary"].write_bytes(b"\xff\xfe\x00garbage")
    (runs_dir() / "releases").mkdir(parents=True)
    (runs_dir() / "releases" / "current.json").write_text("{not json")
    line = assert_bad_input(invoke(*[a.format(**names) for a in argv]))
    assert message.format(**names) in line, line
    assert names["file"].read_text() == "x" and not any(names["dir"].iterdir())


def test_receipts_show_refuses_a_bad_limit(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl")
    line = assert_bad_input(invoke("receipts.show", str(path), "--limit", "-1"))
    assert line.startswith("error: --limit: expected an integer >= 1")


def test_gate_check_appends_to_a_ledger_that_verifies(tmp_path: Path) -> None:
    good = write_run(tmp_path / "good.jsonl")
    bad = write_run(tmp_path / "bad.jsonl", latencies=FAILING)
    assert invoke("gate.check", "--gate", "week3", "--receipts", str(good)).returncode == 0
    assert invoke("gate.check", "--gate", "week3", "--receipts", str(bad)).returncode == 99
    ledger = runs_dir() / "gates.jsonl"
    entries = list(receipts.iter_records(ledger))
    assert [(e["gate"], e["passed"], e["seq"]) for e in entries] == [
        ("week3", True, 0),
        ("week3", False, 1),
    ]
    assert entries[0]["receipts"] == str(good.resolve())
    assert entries[0]["receipts_head"] == receipts.verify(good).head
    assert entries[0]["release_sha256"] == SHA
    assert entries[1]["failed"] == ["http.latency_ms p(95) < 250"]
    verified = invoke("receipts.verify", str(ledger))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 receipts verified" in verified.stdout


# ---------------------------------------------------------------------------------------------
# receipts.verify and receipts.show


def test_receipts_verify_exit_codes(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl")
    ok = invoke("receipts.verify", str(path))
    assert ok.returncode == 0 and "receipts verified, sealed" in ok.stdout

    lines = path.read_bytes().splitlines(keepends=True)
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_bytes(b"".join(lines[:3] + [lines[4], lines[3]] + lines[5:]))
    broken = invoke("receipts.verify", str(swapped))
    assert broken.returncode == 99
    assert "line 4: reordered" in broken.stdout + broken.stderr

    unsealed = write_run(tmp_path / "open.jsonl", seal=False)
    assert invoke("receipts.verify", str(unsealed)).returncode == 99
    assert invoke("receipts.verify", str(unsealed), "--unsealed").returncode == 0

    assert "nope.jsonl" in assert_bad_input(invoke("receipts.verify", str(tmp_path / "nope.jsonl")))


def test_receipts_show_filters_by_kind(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.jsonl")
    shown = invoke("receipts.show", str(path), "--kind", "request", "--json")
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["kind"] for r in records] == ["request"] * 4
    assert [r["latency_ms"] for r in records] == [20.0, 30.0, 40.0, 50.0]
    limited = invoke("receipts.show", str(path), "--kind", "receipt", "--limit", "2", "--json")
    assert [json.loads(x)["test"] for x in limited.stdout.splitlines()] == ["t0", "t1"]
    table = invoke("receipts.show", str(path), "--kind", "metrics")
    assert table.returncode == 0 and "metrics" in table.stdout and "rss_mb=150.0" in table.stdout
    assert "request" not in table.stdout and "startup" not in table.stdout
    assert "nope" in assert_bad_input(invoke("receipts.show", str(tmp_path / "nope")))
    typo = assert_bad_input(invoke("receipts.show", str(path), "--kind", "reqeust"))
    assert "no receipt of kind 'reqeust'" in typo and "metrics, receipt, request" in typo
    array = tmp_path / "array.jsonl"
    array.write_text("[1, 2]\n")
    assert "line 1: not a JSON object" in assert_bad_input(invoke("receipts.show", str(array)))


def test_tasks_module_is_the_only_entry_point() -> None:
    """tasks.py holds nothing but the re-export of the pipeline namespace (no task of its own),
    and invoke lists exactly the collections `pipeline.tasks` composes."""
    import ast

    from pipeline.tasks import namespace

    tree = ast.parse((REPO / "tasks.py").read_text())
    [statement] = [node for node in tree.body if not isinstance(node, ast.Expr)]
    assert isinstance(statement, ast.ImportFrom) and statement.module == "pipeline.tasks"
    assert [(a.name, a.asname) for a in statement.names] == [("namespace", "ns")]
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "--list", "--list-format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert sorted(c["name"] for c in listed["collections"]) == sorted(namespace.collections)
    assert listed["tasks"] == [] or sorted(t["name"] for t in listed["tasks"]) == sorted(
        namespace.tasks
    ), "tasks at the top level come from pipeline.tasks only"


HELP_AFTER_TASK = [
    ("phase2.week3", "--help"),
    ("phase2.week3", "-h"),  # not --host: weeks 2-4 have no short flags
    ("phase2.week5", "--help"),
    ("gate.check", "--help"),
    ("release.extract", "--help"),
    ("cloudrun.deploy", "--help"),
    ("receipts.verify", "--help"),  # a positional path: the help is shown all the same
    ("receipts.show", "-h"),
    ("pilot.validate", "--help"),
]


@pytest.mark.parametrize(
    ("task", "flag"), HELP_AFTER_TASK, ids=[" ".join(h) for h in HELP_AFTER_TASK]
)
def test_help_after_the_task_name_shows_its_help(task: str, flag: str) -> None:
    result = invoke(task, flag)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"Usage: inv[oke] [--core-opts] {task} ")
    assert "Options:" in result.stdout and "error" not in result.stderr


MISSING = [
    (["phase2.week3"], "--tarball is required (invoke --help phase2.week3)"),
    (["phase2.all"], "--tarball is required (invoke --help phase2.all)"),
    (["gate.check", "--gate", "week3"], "--receipts is required (invoke --help gate.check)"),
    (
        ["release.extract", "--tarball", "t.tar.gz"],
        "--dest is required (invoke --help release.extract)",
    ),
    (["cloudrun.shift"], "--to is required (invoke --help cloudrun.shift)"),
    (
        ["receipts.verify", "--unsealed", "-x"],
        "-x: a flag where receipts.verify expects a path (invoke --help receipts.verify)",
    ),
]


@pytest.mark.parametrize(("args", "said"), MISSING, ids=[" ".join(m[0]) for m in MISSING])
def test_a_missing_required_flag_is_one_line(args: list[str], said: str) -> None:
    assert assert_bad_input(invoke(*args)) == f"error: {said}"


def test_a_run_directory_stands_for_its_receipts(tmp_path: Path) -> None:
    run = tmp_path / "20261128T000000Z-week3-abcdef"
    run.mkdir()
    write_run(run / "receipts.jsonl")
    assert invoke("receipts.verify", str(run)).returncode == 0
    assert invoke("gate.check", "--gate", "week3", "--receipts", str(run)).returncode == 0


def test_receipts_show_prints_nested_fields_as_json(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with receipts.ReceiptWriter(path, run_id="r", phase="week5") as w:
        w.write("run")
        w.write("traffic", "canary-10", split={"svc-00002-abc": 10, "svc-00001-xyz": 90}, ok=True)
        w.seal()
    shown = invoke("receipts.show", str(path), "--kind", "traffic")
    assert shown.returncode == 0, shown.stderr
    assert 'split={"svc-00001-xyz":90,"svc-00002-abc":10}' in shown.stdout
