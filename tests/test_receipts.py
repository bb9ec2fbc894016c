"""pipeline.receipts: the line format, the chain, the seal, and every way a file can go bad.

The hash is re-derived here with hashlib + json alone (never with pipeline code), and every
tampering property is checked both on the serial reader and on the forked parallel one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import receipts
from pipeline.errors import PipelineError
from pipeline.receipts import ReceiptWriter

GENESIS = "sha256:" + "0" * 64
COMMON = {"ts", "kind", "run_id", "seq", "phase", "stage", "prev", "hash"}
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# independent helpers (no pipeline code)


def lines_of(data: bytes) -> list[bytes]:
    """Lines split on \\n only, each with its newline (the last one may have none)."""
    return io.BytesIO(data).readlines()


def derive(line: bytes) -> tuple[bytes, str]:
    """(B, hash) from a raw line without its newline: drop the last 82 bytes, add `}`."""
    body = line[:-82] + b"}"
    return body, "sha256:" + hashlib.sha256(body).hexdigest()


def chained(record: dict[str, Any], *, raw: bytes | None = None) -> tuple[bytes, str]:
    """A hand-made line (with newline) and its hash; `raw` overrides the body B verbatim."""
    body = raw if raw is not None else canonical_json(record)
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"sha256:' + digest.encode() + b'"}\n', "sha256:" + digest


def canonical_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def first_diff(original: bytes, mutated: bytes) -> int:
    """1-based number of the first line of `mutated` that is not the original's line."""
    old, new = lines_of(original), lines_of(mutated)
    for number, (a, b) in enumerate(zip(old, new, strict=False), 1):
        if a != b:
            return number
    return min(len(old), len(new)) + 1


def hand_record(seq: int, prev: str, kind: str = "request", **fields: Any) -> dict[str, Any]:
    record = {
        "ts": "2026-01-26T14:28:05.180Z",
        "kind": kind,
        "run_id": "hand",
        "seq": seq,
        "phase": "test",
        "stage": None,
        "prev": prev,
    }
    record.update(fields)
    return record


def hand_file(path: Path, bodies: list[dict[str, Any]]) -> list[str]:
    """Write a hand-chained file of records (seq/prev filled in); returns the hashes."""
    prev, hashes, out = GENESIS, [], b""
    for seq, fields in enumerate(bodies):
        line, prev = chained(hand_record(seq, prev, **fields))
        out += line
        hashes.append(prev)
    path.write_bytes(out)
    return hashes


@contextlib.contextmanager
def parallel_scan(enabled: bool | str, workers: int = 8) -> Iterator[None]:
    """Force the forked parallel reader on tiny files (and more ranges than this machine's cores);
    "python": the serial reader with the Python twin of pipeline/_native.c's line_digest."""
    with pytest.MonkeyPatch.context() as mp:
        if enabled == "python":
            mp.setattr(receipts, "_line_digest", receipts.py_line_digest)
        elif enabled:
            mp.setattr(receipts, "PARALLEL_MIN_BYTES", 64)
            mp.setattr(receipts.os, "cpu_count", lambda: workers)
        yield


# ---------------------------------------------------------------------------------------------
# chains for the property tests

scalars = st.one_of(
    st.integers(-(2**53), 2**53),
    st.booleans(),
    st.text(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.none(),
)
field_names = st.sampled_from(["endpoint", "status", "latency_ms", "note", "passed", "é", "x y"])
record_fields = st.dictionaries(field_names, scalars, max_size=4)
chain_fields = st.lists(record_fields, min_size=1, max_size=10)


def write_chain(path: Path, fields_list: list[dict[str, Any]]) -> bytes:
    with ReceiptWriter(path, run_id="run-1", phase="test") as writer:
        writer.write("run", tool="pipeline", release={"name": "tai", "sha256": "ab" * 32})
        for number, fields in enumerate(fields_list):
            writer.write("request", stage="load" if number % 2 else None, **fields)
        writer.seal()
    return path.read_bytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chains")


def fresh(scratch: Path) -> Path:
    return scratch / f"{uuid.uuid4().hex}.jsonl"


def judge(
    scratch: Path, data: bytes, parallel: bool | str, workers: int = 4
) -> receipts.Verification:
    path = fresh(scratch)
    path.write_bytes(data)
    with parallel_scan(parallel, workers):
        return receipts.verify(path)


MODES = pytest.mark.parametrize(
    "parallel", [False, True, "python"], ids=["serial", "parallel", "python-digest"]
)


# ---------------------------------------------------------------------------------------------
# writing: round trip and the exact line format


def test_round_trip_records_come_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="run-7", phase="week3") as writer:
        run = writer.write("run", tool="pipeline 0.1", release={"sha256": "cd" * 32})
        smoke = writer.write(
            "receipt", stage="smoke", test="health_check", status=200, latency_ms=8, passed=True
        )
        req = writer.write("request", stage="load", latency_ms=12.5, tags=["a", "b"], error=None)
        seal = writer.seal()
    back = list(receipts.iter_records(path))
    assert back == [run, smoke, req, seal]
    assert [r["seq"] for r in back] == [0, 1, 2, 3]
    assert {r["run_id"] for r in back} == {"run-7"} and {r["phase"] for r in back} == {"week3"}
    assert smoke["stage"] == "smoke" and run["stage"] is None
    result = receipts.verify(path)
    assert result.ok and result.sealed and result.count == 4 and result.head == seal["hash"]
    assert result.run == run
    assert "4 receipts verified, sealed" in result.describe()


def test_timestamps_are_rfc3339_utc_milliseconds_z(tmp_path: Path) -> None:
    with ReceiptWriter(tmp_path / "r.jsonl", run_id="r", phase="p") as writer:
        ts = writer.write("run")["ts"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts), ts


@SETTINGS
@given(
    records=st.lists(
        st.dictionaries(
            st.text(min_size=1, max_size=8).filter(lambda k: k not in COMMON),
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans()),
            max_size=5,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_line_format_is_exactly_the_documented_one(scratch: Path, records: list[dict]) -> None:
    path = fresh(scratch)
    with ReceiptWriter(path, run_id="r-fmt", phase="test") as writer:
        written = [writer.write("request", **fields) for fields in records]
        written.append(writer.seal())
    data = path.read_bytes()
    assert data.endswith(b"\n")
    raw_lines = data.split(b"\n")[:-1]
    assert len(raw_lines) == len(written)
    prev = GENESIS
    for line, record in zip(raw_lines, written, strict=True):
        body, digest = derive(line)
        without_hash = {k: v for k, v in record.items() if k != "hash"}
        assert body == canonical_json(without_hash)
        assert line == body[:-1] + b',"hash":"' + digest.encode() + b'"}'
        assert record["hash"] == digest
        assert record["prev"] == prev
        assert json.loads(line) == record
        prev = digest
    assert receipts.verify(path).ok


def test_genesis_prev_and_seal_count_and_head(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    data = write_chain(path, [{"status": 200}, {"status": 500}])
    records = [json.loads(line) for line in lines_of(data)]
    assert records[0]["prev"] == GENESIS
    for before, after in zip(records, records[1:], strict=False):
        assert after["prev"] == before["hash"]
    seal = records[-1]
    assert seal["kind"] == "seal"
    assert seal["count"] == len(records) == 4  # run, two requests, the seal itself
    assert seal["head"] == records[-2]["hash"]
    assert "hmac" not in seal


def test_seed_smoke_receipt_fields_survive_the_chain(tmp_path: Path) -> None:
    seed = {"test": "health_check", "endpoint": "/health", "status": 200, "latency_ms": 8}
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="week3") as writer:
        record = writer.write("receipt", passed=True, **seed)
        writer.seal()
    (line,) = [json.loads(x) for x in lines_of(path.read_bytes())[:1]]
    assert line == record and {k: line[k] for k in seed} == seed and line["passed"] is True


def test_writer_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"precious\n")
    with pytest.raises(PipelineError, match="already exists"):
        ReceiptWriter(path, run_id="r", phase="p")
    assert path.read_bytes() == b"precious\n"


def test_for_run_default_path_is_under_the_runs_dir(tmp_path: Path) -> None:
    with ReceiptWriter.for_run("week3") as writer:
        writer.write("run")
        writer.seal()
    runs = Path(os.environ["PIPELINE_RUNS_DIR"])
    assert writer.path == runs / writer.run_id / "receipts.jsonl"
    assert "week3" in writer.run_id
    assert receipts.verify(writer.path).ok
    explicit = tmp_path / "elsewhere" / "mine.jsonl"
    with ReceiptWriter.for_run("week3", receipts=explicit) as writer:
        writer.write("run")
    assert explicit.exists()


def test_reserved_fields_and_writes_after_the_seal_are_refused(tmp_path: Path) -> None:
    with ReceiptWriter(tmp_path / "r.jsonl", run_id="r", phase="p") as writer:
        with pytest.raises(ValueError, match="reserved"):
            writer.write("request", seq=5)
        with pytest.raises(ValueError, match="reserved"):
            writer.write("request", hash="sha256:" + "f" * 64)
        writer.write("run")
        writer.seal()
        with pytest.raises(ValueError, match="sealed"):
            writer.write("request")
    assert receipts.verify(tmp_path / "r.jsonl").ok


def test_writer_refuses_nan_and_infinity(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="p") as writer:
        writer.write("run")
        for bad in (
            {"latency_ms": float("nan")},
            {"latency_ms": float("inf")},
            {"nested": {"x": [1.0, float("-inf")]}},
        ):
            with pytest.raises(ValueError, match="NaN"):
                writer.write("request", **bad)
        writer.seal()
    result = receipts.verify(path)
    assert result.ok and result.count == 2  # nothing half-written


def test_every_line_is_flushed_as_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    writer = ReceiptWriter(path, run_id="r", phase="p")
    writer.write("run")
    writer.write("request", status=200)
    # another reader sees both lines while the writer is still open (a crash loses nothing)
    assert len(lines_of(path.read_bytes())) == 2
    result = receipts.verify(path, require_seal=False)
    assert result.ok and not result.sealed and result.count == 2
    unsealed = receipts.verify(path)
    assert not unsealed.ok and unsealed.reason.startswith("unsealed") and unsealed.line == 3
    writer.close()


# ---------------------------------------------------------------------------------------------
# the HMAC seal


def test_hmac_seal_verifies_with_the_key_only(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="p") as writer:
        writer.write("run")
        seal = writer.seal(key=b"k3y")
    expected = hmac.new(b"k3y", seal["head"].encode(), hashlib.sha256).hexdigest()
    assert seal["hmac"] == expected
    assert receipts.verify(path, key=b"k3y").ok
    wrong = receipts.verify(path, key=b"other")
    assert not wrong.ok and wrong.reason.startswith("bad HMAC") and wrong.line == 2
    no_key = receipts.verify(path)
    assert not no_key.ok and no_key.reason.startswith("sealed with an HMAC") and no_key.line == 2


def test_hmac_key_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_RECEIPT_KEY", "from-env")
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="p") as writer:
        writer.write("run")
        seal = writer.seal()
    assert seal["hmac"] == hmac.new(b"from-env", seal["head"].encode(), "sha256").hexdigest()
    assert receipts.verify(path).ok
    monkeypatch.setenv("PIPELINE_RECEIPT_KEY", "rotated")
    assert receipts.verify(path).reason.startswith("bad HMAC")
    monkeypatch.delenv("PIPELINE_RECEIPT_KEY")
    assert receipts.verify(path).reason.startswith("sealed with an HMAC")


def test_a_seal_without_hmac_fails_when_a_key_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    write_chain(path, [{}])
    result = receipts.verify(path, key=b"k3y")
    assert not result.ok and result.reason.startswith("sealed without HMAC") and result.line == 3


def test_a_forged_seal_count_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    hashes = hand_file(path, [{"kind": "run"}, {"kind": "request"}])
    line, _ = chained(hand_record(2, hashes[-1], kind="seal", count=2, head=hashes[-1]))
    path.write_bytes(path.read_bytes() + line)
    result = receipts.verify(path)
    assert not result.ok and result.line == 3 and "seal" in result.reason


def test_a_receipt_appended_after_the_seal_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    data = write_chain(path, [{}])
    seal = json.loads(lines_of(data)[-1])
    line, _ = chained(hand_record(seal["seq"] + 1, seal["hash"]))
    path.write_bytes(data + line)
    for parallel in (False, True):
        with parallel_scan(parallel):
            result = receipts.verify(path)
        assert not result.ok and result.reason.startswith("receipt after the seal")
        assert result.line == 4


# ---------------------------------------------------------------------------------------------
# tampering: properties over random chains, serial and parallel


@MODES
@SETTINGS
@given(fields_list=chain_fields, data=st.data())
def test_any_single_byte_edit_is_caught(scratch, parallel, fields_list, data) -> None:
    original = write_chain(fresh(scratch), fields_list)
    lines = lines_of(original)
    number = data.draw(st.integers(0, len(lines) - 1), label="line")
    start = sum(map(len, lines[:number]))
    offset = start + data.draw(st.integers(0, len(lines[number]) - 2), label="byte")  # not \n
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[offset]), label="new")
    mutated = original[:offset] + bytes([byte]) + original[offset + 1 :]
    result = judge(scratch, mutated, parallel)
    assert not result.ok
    assert result.line == first_diff(original, mutated) == number + 1
    assert result.reason.startswith(
        ("edited", "not JSON", "invalid UTF-8", "not a chained receipt", "not canonical")
    ), result.reason


@MODES
@SETTINGS
@given(fields_list=chain_fields, data=st.data())
def test_any_deleted_line_is_caught(scratch, parallel, fields_list, data) -> None:
    original = write_chain(fresh(scratch), fields_list)
    lines = lines_of(original)
    number = data.draw(st.integers(0, len(lines) - 1), label="line")
    mutated = b"".join(lines[:number] + lines[number + 1 :])
    result = judge(scratch, mutated, parallel)
    assert not result.ok
    assert result.line == first_diff(original, mutated) == number + 1
    if number == len(lines) - 1:
        assert result.reason.startswith("unsealed"), result.reason
    else:
        assert result.reason.startswith("deleted"), result.reason


@MODES
@SETTINGS
@given(fields_list=chain_fields, data=st.data())
def test_any_swap_of_two_lines_is_caught(scratch, parallel, fields_list, data) -> None:
    original = write_chain(fresh(scratch), fields_list)
    lines = lines_of(original)
    i = data.draw(st.integers(0, len(lines) - 2), label="i")
    j = data.draw(st.integers(i + 1, len(lines) - 1), label="j")
    swapped = list(lines)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    mutated = b"".join(swapped)
    result = judge(scratch, mutated, parallel)
    assert not result.ok
    assert result.line == first_diff(original, mutated) == i + 1
    assert result.reason.startswith("reordered"), result.reason


@MODES
@SETTINGS
@given(fields_list=chain_fields, data=st.data())
def test_any_duplicated_line_is_caught(scratch, parallel, fields_list, data) -> None:
    original = write_chain(fresh(scratch), fields_list)
    lines = lines_of(original)
    i = data.draw(st.integers(0, len(lines) - 1), label="copied line")
    at = data.draw(st.integers(0, len(lines)), label="inserted before")
    mutated = b"".join(lines[:at] + [lines[i]] + lines[at:])
    result = judge(scratch, mutated, parallel)
    assert not result.ok
    assert result.line == first_diff(original, mutated)
    assert result.reason.startswith(("duplicated", "reordered", "receipt after the seal")), (
        result.reason
    )


@MODES
@SETTINGS
@given(fields_list=chain_fields, data=st.data())
def test_truncation_at_any_byte_is_caught(scratch, parallel, fields_list, data) -> None:
    original = write_chain(fresh(scratch), fields_list)
    cut = data.draw(st.integers(0, len(original) - 1), label="cut")
    mutated = original[:cut]
    result = judge(scratch, mutated, parallel)
    assert not result.ok
    if cut == 0:
        assert result.reason.startswith("empty") and result.count == 0
        return
    kept = len(lines_of(mutated))
    assert result.line == first_diff(original, mutated)
    if mutated.endswith(b"\n"):
        assert result.reason.startswith("unsealed"), result.reason
        assert result.line == result.count + 1 == kept + 1
    else:
        assert result.reason.startswith("truncated"), result.reason
        assert result.line == kept and result.count == kept - 1


@settings(SETTINGS, max_examples=30)
@given(fields_list=chain_fields)
def test_serial_and_parallel_agree_on_intact_chains(scratch, fields_list) -> None:
    original = write_chain(fresh(scratch), fields_list)
    serial, parallel = judge(scratch, original, False), judge(scratch, original, True)
    assert serial.ok and parallel.ok
    assert (serial.count, serial.head, serial.sealed, serial.run) == (
        parallel.count,
        parallel.head,
        parallel.sealed,
        parallel.run,
    )
    assert serial.count == len(fields_list) + 2


def _mutations(lines: list[bytes]) -> Iterator[tuple[str, bytes]]:
    for n, line in enumerate(lines):
        yield f"edit {n}", b"".join(lines[:n] + [line.replace(b'"seq"', b'"seQ"')] + lines[n + 1 :])
        yield f"delete {n}", b"".join(lines[:n] + lines[n + 1 :])
        yield f"duplicate {n}", b"".join(lines[: n + 1] + [line] + lines[n + 1 :])
        if n + 1 < len(lines):
            swapped = lines[:n] + [lines[n + 1], line] + lines[n + 2 :]
            yield f"swap {n}", b"".join(swapped)
        yield f"cut in {n}", b"".join(lines[:n]) + line[: len(line) // 2]


def test_every_range_boundary_names_the_same_line_as_the_serial_reader(scratch) -> None:
    """With 8 forked ranges over 16 lines nearly every line starts a range; a bad line right
    at a boundary, or right before one, must be named exactly as the serial reader names it."""
    original = write_chain(fresh(scratch), [{"status": n, "note": "x" * n} for n in range(14)])
    lines = lines_of(original)
    assert len(lines) == 16
    seen: list[int] = []
    scan_ranges = receipts._scan_ranges

    def counting(*args: Any) -> list[Any]:
        parts = scan_ranges(*args)
        seen.append(len(parts))
        return parts

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(receipts, "_scan_ranges", counting)
        judge(scratch, original, True, workers=8)
    assert seen == [8], "the parallel reader did not split the file into 8 ranges"
    for label, mutated in _mutations(lines):
        serial = judge(scratch, mutated, False)
        parallel = judge(scratch, mutated, True, workers=8)
        assert not serial.ok and not parallel.ok, label
        expected = first_diff(original, mutated)
        assert serial.line == parallel.line == expected, (label, serial, parallel)
        assert serial.count == parallel.count and serial.head == parallel.head, label
        same = serial.reason.split(":")[0] == parallel.reason.split(":")[0]
        # a duplicate that lands first in a range is seen by seq alone: "reordered or duplicated"
        vague = serial.reason.startswith("duplicated") and parallel.reason.startswith(
            "reordered or duplicated"
        )
        assert same or vague, (label, serial.reason, parallel.reason)


@MODES
def test_a_line_from_another_run_breaks_the_chain(scratch, parallel) -> None:
    a = write_chain(fresh(scratch), [{"status": n} for n in range(6)])
    b = write_chain(fresh(scratch), [{"status": n, "other_run": True} for n in range(6)])
    la, lb = lines_of(a), lines_of(b)  # (same content within one millisecond would be identical)
    mutated = b"".join(la[:4] + [lb[4]] + la[5:])  # same seq, other run's prev
    result = judge(scratch, mutated, parallel)
    assert not result.ok and result.line == 5
    assert result.reason.startswith(("broken chain", "edited")), result.reason


# ---------------------------------------------------------------------------------------------
# bad input files


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"")
    result = receipts.verify(path)
    assert not result.ok and result.reason.startswith("empty") and result.count == 0


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = receipts.verify(tmp_path / "nope.jsonl")
    assert not missing.ok and missing.reason.startswith("no such file")
    directory = receipts.verify(tmp_path)
    assert not directory.ok and "directory" in directory.reason


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_binary_garbage_is_not_json_at_line_1(tmp_path: Path, seed: int) -> None:
    garbage = random.Random(seed).randbytes(4096)
    path = tmp_path / "r.bin"
    path.write_bytes(garbage.replace(b"\n", b"") + b"\n" + garbage)
    result = receipts.verify(path)
    assert not result.ok and result.line == 1
    assert result.reason.startswith(("not JSON", "invalid UTF-8")), result.reason
    with pytest.raises(PipelineError, match="line 1: not JSON"):
        list(receipts.iter_records(path))


def test_the_seed_smoke_receipt_alone_is_not_a_chained_receipt(tmp_path: Path) -> None:
    path = tmp_path / "seed.jsonl"
    path.write_text(
        '{"ts":"2026-01-26T14:28:05.180Z","kind":"receipt","test":"health_check",'
        '"endpoint":"/health","status":200,"latency_ms":8,"passed":true}\n'
    )
    result = receipts.verify(path)
    assert not result.ok and result.line == 1
    assert result.reason.startswith("not a chained receipt")


def test_a_10_mb_line_is_refused_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    hashes = hand_file(path, [{"kind": "run"}])
    big, _ = chained(hand_record(1, hashes[0], blob="x" * (10 << 20)))
    with open(path, "ab") as fh:
        fh.write(big)
    tracemalloc.start()
    try:
        result = receipts.verify(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not result.ok and result.line == 2 and result.reason.startswith("longer than")
    assert peak < 8 << 20, f"verifying a 10 MB line peaked at {peak / 1e6:.1f} MB"


def test_a_huge_single_line_file_on_the_parallel_path_stays_flat(tmp_path: Path) -> None:
    """A file over PARALLEL_MIN_BYTES that is one giant line: splitting it into ranges must
    not read the whole line into memory either."""
    path = tmp_path / "one-line.bin"
    path.write_bytes(b'{"blob":"' + b"z" * (receipts.PARALLEL_MIN_BYTES + (8 << 20)) + b'"}\n')
    tracemalloc.start()
    try:
        result = receipts.verify(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not result.ok and result.line == 1 and result.reason.startswith("longer than")
    assert peak < 8 << 20, (
        f"verifying a {path.stat().st_size >> 20} MiB line peaked at {peak >> 20} MiB"
    )


def test_invalid_utf8_inside_a_json_string(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    hashes = hand_file(path, [{"kind": "run"}])
    body = canonical_json(hand_record(1, hashes[0], note="PLACEHOLDER"))
    line, _ = chained({}, raw=body.replace(b"PLACEHOLDER", b"caf\xe9 \xff"))
    path.write_bytes(path.read_bytes() + line)
    result = receipts.verify(path)
    assert not result.ok and result.line == 2 and result.reason.startswith("invalid UTF-8")


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_hand_made_nan_line_is_not_json(tmp_path: Path, token: bytes) -> None:
    path = tmp_path / "r.jsonl"
    hashes = hand_file(path, [{"kind": "run"}])
    body = canonical_json(hand_record(1, hashes[0], latency_ms=0)).replace(
        b'"latency_ms":0', b'"latency_ms":' + token
    )
    line, _ = chained({}, raw=body)
    path.write_bytes(path.read_bytes() + line)
    result = receipts.verify(path)
    assert not result.ok and result.line == 2 and result.reason.startswith("not JSON")


@pytest.mark.parametrize(
    "rewrite",
    [
        pytest.param(lambda b: b.replace(b'"status":200', b'"status":100,"status":200'), id="dup"),
        pytest.param(lambda b: b.replace(b'"status":200', b'"status": 200'), id="space"),
        pytest.param(lambda b: b.replace(b'"status":200', b'"status":2e2'), id="number"),
    ],
)
def test_a_valid_hash_over_a_non_canonical_body_is_refused(tmp_path: Path, rewrite) -> None:
    path = tmp_path / "r.jsonl"
    hashes = hand_file(path, [{"kind": "run"}])
    body = rewrite(canonical_json(hand_record(1, hashes[0], status=200)))
    line, digest = chained({}, raw=body)
    path.write_bytes(path.read_bytes() + line)
    assert derive(line[:-1])[1] == digest  # the hash really is valid over the raw body
    result = receipts.verify(path)
    assert not result.ok and result.line == 2 and result.reason.startswith("not canonical")


def test_a_last_line_without_newline_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    data = write_chain(path, [{}, {}])
    path.write_bytes(data[:-1])
    result = receipts.verify(path)
    assert not result.ok and result.line == 4 and result.reason.startswith("truncated")
    assert result.count == 3


def test_verifying_a_20_mb_file_keeps_memory_flat(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    note = "y" * 4000
    with ReceiptWriter(path, run_id="r", phase="p") as writer:
        writer.write("run")
        for n in range(5000):
            writer.write("request", status=200, latency_ms=n, note=note)
        writer.seal()
    size = path.stat().st_size
    assert size > 20_000_000
    tracemalloc.start()
    try:
        result = receipts.verify(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.ok and result.count == 5002
    assert peak < size // 8, f"peak {peak / 1e6:.1f} MB while verifying {size / 1e6:.0f} MB"


# ---------------------------------------------------------------------------------------------
# secrets


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="p", secrets=("s3cr3t", "")) as writer:
        writer.write("run", env={"ERLANG_COOKIE": "s3cr3t", "HOME": "/root"})
        writer.write(
            "error",
            message="login failed with cookie s3cr3t (retrying s3cr3t)",
            argv=["erl", "-setcookie", "s3cr3t"],
            nested={"deep": [("x", "pre-s3cr3t-post")]},
            status=401,
        )
        writer.seal()
    data = path.read_bytes()
    assert b"s3cr3t" not in data
    assert data.count(b"[redacted]") == 5
    records = list(receipts.iter_records(path))
    assert records[0]["env"] == {"ERLANG_COOKIE": "[redacted]", "HOME": "/root"}
    assert records[1]["nested"] == {"deep": [["x", "pre-[redacted]-post"]]}
    assert records[1]["status"] == 401
    assert receipts.verify(path).ok


def test_scrub_leaves_other_values_alone() -> None:
    value = {"a": "tok1 and tok2", "b": [1, 2.5, True, None], "c": "clean"}
    assert receipts.scrub(value, ("tok1", "tok2")) == {
        "a": "[redacted] and [redacted]",
        "b": [1, 2.5, True, None],
        "c": "clean",
    }
    assert receipts.scrub(value, ()) is value


# ---------------------------------------------------------------------------------------------
# the ledger, concurrency


def test_ledger_chains_across_calls(tmp_path: Path) -> None:
    first = receipts.append_ledger({"gate": "week3", "passed": True})
    second = receipts.append_ledger({"gate": "week4", "passed": False})
    ledger = Path(os.environ["PIPELINE_RUNS_DIR"]) / "gates.jsonl"
    assert receipts.ledger_path() == ledger
    assert (first["seq"], second["seq"]) == (0, 1)
    assert first["prev"] == GENESIS and second["prev"] == first["hash"]
    result = receipts.verify(ledger, require_seal=False)
    assert result.ok and result.count == 2 and not result.sealed
    assert not receipts.verify(ledger).ok  # never sealed: only valid as an open chain


_APPEND = """
import sys
from pathlib import Path
from pipeline import receipts
for n in range(int(sys.argv[2])):
    receipts.append_ledger({"gate": "week3", "writer": sys.argv[3], "n": n}, Path(sys.argv[1]))
"""


def test_ledger_chains_across_concurrent_processes(tmp_path: Path) -> None:
    ledger = tmp_path / "gates.jsonl"
    receipts.append_ledger({"gate": "first"}, ledger)
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPEND, str(ledger), "25", str(w)], cwd=REPO)
        for w in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    result = receipts.verify(ledger, require_seal=False)
    assert result.ok and result.count == 101, result.describe()
    records = list(receipts.iter_records(ledger))
    assert [r["seq"] for r in records] == list(range(101))
    for w in range(4):
        assert [r["n"] for r in records if r.get("writer") == str(w)] == list(range(25))


def test_concurrent_writes_from_8_threads_stay_one_dense_chain(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    barrier = threading.Barrier(8)
    with ReceiptWriter(path, run_id="r", phase="p") as writer:
        writer.write("run")

        def worker(tid: int) -> None:
            barrier.wait()
            for n in range(500):
                writer.write("request", thread=tid, n=n, latency_ms=n * 0.5)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        writer.seal()
    result = receipts.verify(path)
    assert result.ok and result.count == 4002, result.describe()
    records = list(receipts.iter_records(path))
    assert [r["seq"] for r in records] == list(range(4002))
    for tid in range(8):
        assert [r["n"] for r in records if r.get("thread") == tid] == list(range(500))


def test_iter_records_streams_without_verifying(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    data = write_chain(path, [{"status": 200}])
    path.write_bytes(data.replace(b'"status":200', b'"status":201'))
    assert [r.get("status") for r in receipts.iter_records(path)] == [None, 201, None]
    assert not receipts.verify(path).ok


def test_a_tempfile_in_another_dir_verifies_the_same(tmp_path: Path) -> None:
    """The chain depends on the bytes alone: a copy anywhere verifies with the same head."""
    path = tmp_path / "r.jsonl"
    data = write_chain(path, [{"status": 200}])
    with tempfile.TemporaryDirectory() as other:
        copy = Path(other) / "copy.jsonl"
        copy.write_bytes(data)
        assert receipts.verify(copy).head == receipts.verify(path).head


def test_sealing_while_other_threads_still_write_keeps_the_file_valid(tmp_path: Path) -> None:
    """A monitor thread still sampling when the phase seals: its receipt either lands before
    the seal or is refused; the seal's count and head always match the chain."""
    for attempt in range(20):
        path = tmp_path / f"r{attempt}.jsonl"
        writer = ReceiptWriter(path, run_id="r", phase="p")
        writer.write("run")
        refused = []

        def monitor(writer: ReceiptWriter = writer, refused: list[bool] = refused) -> None:
            while True:
                try:
                    writer.write("metrics", rss_mb=100.0)
                except ValueError:
                    refused.append(True)
                    return

        threads = [threading.Thread(target=monitor) for _ in range(2)]
        for t in threads:
            t.start()
        seal = writer.seal()
        for t in threads:
            t.join()
        writer.close()
        result = receipts.verify(path)
        assert result.ok, result.describe()
        assert result.count == seal["count"] and len(refused) == 2


@pytest.mark.parametrize(
    ("what", "unsealed", "ok"),
    [
        ("ledger", False, True),  # the ledger goes on across runs: never sealed
        ("unsealed-run", False, False),  # named gates.jsonl, still a run: its seal is missing
        ("unsealed-run", True, True),
        ("sealed-run", False, True),
    ],
    ids=["ledger", "run-named-like-the-ledger", "run-unsealed-asked", "sealed-run"],
)
def test_verify_file_knows_a_ledger_by_its_records_not_its_name(
    tmp_path: Path, what: str, unsealed: bool, ok: bool
) -> None:
    path = tmp_path / "gates.jsonl"
    if what == "ledger":
        receipts.append_ledger({"gate": "week3", "passed": True}, path)
        receipts.append_ledger({"gate": "week4", "passed": False}, path)
    else:
        with ReceiptWriter(path, run_id="r", phase="week3") as w:
            w.write("run")
            w.write("request", "load", latency_ms=1.0, passed=True)
            if what == "sealed-run":
                w.seal()
    assert receipts.verify_file(path, unsealed=unsealed).ok is ok
