"""pipeline/_native.c against its Python twins: the same answers on every input.

`make` installs a C compiler and OpenSSL's headers, so the module is built wherever the suite
runs; without it receipts.py and gates.py fall back to the twins (also checked here).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import gates, receipts, stats

SETTINGS = settings(max_examples=300, deadline=None)


def native():
    if importlib.util.find_spec("pipeline._native") is None:
        pytest.fail(
            "pipeline._native is not built: it needs gcc and libssl-dev "
            "(`make setup` installs them, then reinstalls the package)"
        )
    from pipeline import _native

    return _native


def chained_line(record: dict) -> bytes:
    """A line as ARCHITECTURE.md defines it, made with hashlib + json (no pipeline code)."""
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"sha256:' + digest.encode() + b'"}'


def test_the_module_is_built_and_used() -> None:
    module = native()
    assert receipts._line_digest is module.line_digest
    assert gates._select is module.select


records = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.one_of(st.integers(), st.text(max_size=200), st.floats(allow_nan=False), st.none()),
    max_size=12,
)


@SETTINGS
@given(record=records, data=st.data())
def test_line_digest_agrees_with_its_twin(record: dict, data: st.DataObject) -> None:
    line = chained_line(record)
    expected = "sha256:" + hashlib.sha256(line[:-82] + b"}").hexdigest()
    assert native().line_digest(line) == receipts.py_line_digest(line) == expected
    at = data.draw(st.integers(0, len(line) - 1), label="byte")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != line[at]), label="new")
    edited = line[:at] + bytes([byte]) + line[at + 1 :]
    found = native().line_digest(edited)
    assert found == receipts.py_line_digest(edited)
    assert found is None or found is False  # an edit anywhere is never a valid line


@pytest.mark.parametrize(
    "line",
    [b"", b"{}", b'"}', b"x" * 81, b"x" * 82, b"x" * 83, b'{"a":1,"hash":"sha256:' + b"0" * 64],
    ids=["empty", "braces", "quote-brace", "81", "82", "83", "no-closing"],
)
def test_line_digest_on_short_and_odd_lines(line: bytes) -> None:
    assert native().line_digest(line) is None
    assert receipts.py_line_digest(line) is None


def test_line_digest_hashes_a_body_over_its_stack_buffer() -> None:
    line = chained_line({"note": "y" * 200_000})  # longer than the 64 KiB copy: hashed in parts
    assert native().line_digest(line) == receipts.py_line_digest(line)
    assert native().line_digest(line[:-3] + b'0"}') is False


def test_line_digest_refuses_what_is_not_bytes() -> None:
    with pytest.raises(TypeError):
        native().line_digest("text")  # type: ignore[arg-type]


@SETTINGS
@given(
    samples=st.lists(
        st.one_of(st.floats(-1e9, 1e9, allow_nan=False), st.sampled_from([0.0, 1.0, -0.0])),
        min_size=1,
        max_size=300,
    ),
    data=st.data(),
)
def test_select_finds_what_sorting_finds(samples: list[float], data: st.DataObject) -> None:
    ordered = sorted(samples)
    rank = data.draw(st.integers(0, len(samples) - 1), label="rank")
    copy = array("d", samples)
    assert native().select(copy, rank) == ordered[rank]
    assert sorted(copy) == ordered  # reordered in place, nothing lost


@pytest.mark.parametrize("rank", [-1, 3])
def test_select_refuses_a_rank_out_of_range(rank: int) -> None:
    with pytest.raises(ValueError, match="0 <= k < len"):
        native().select(array("d", [1.0, 2.0, 3.0]), rank)


@pytest.mark.parametrize("built", [True, False], ids=["native", "python-twin"])
def test_percentiles_over_a_million_samples_match_sorting(monkeypatch, built: bool) -> None:
    if not built:
        monkeypatch.setattr(gates, "_select", None)
    rng = random.Random(7)
    samples = array("d", (rng.lognormvariate(3, 1) for _ in range(1_000_000)))
    before = array("d", samples)
    ordered = sorted(samples)
    ranked = gates.Ranked(samples)
    for pct in (0, 50, 95, 99, 99.9, 100):
        assert stats.percentile(ranked, pct) == stats.percentile(ordered, pct)
    assert samples == before  # ranks come from a private copy: the samples keep their order
    with pytest.raises(IndexError):
        ranked[len(samples)]


# ---------------------------------------------------------------------------------------------
# link: the fast path accepts only what the reference checks accept


GENESIS = "sha256:" + "0" * 64


def chain_body(body: bytes) -> bytes:
    """The chained line of a body B written verbatim (canonical or not): B's hash appended."""
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"sha256:' + digest.encode() + b'"}'


def reference_accepts(line: bytes, prev: str, seq: int) -> bool:
    """What receipts._scan_range's reference checks decide about a line after `prev`, `seq`."""
    import orjson

    if not isinstance(receipts.py_line_digest(line), str):
        return False
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return (
        type(record) is dict
        and orjson.dumps(record) == line
        and record.get("seq") == seq
        and type(record.get("seq")) is int
        and record.get("prev") == prev
    )


ascii_text = st.text(  # what needs no escape: the writer's usual strings
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=40
)
typical_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**18) + 1, 10**18 - 1),
        st.floats(1e-4, 1e9).map(lambda x: round(x, 3)),
        ascii_text,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(ascii_text, inner, max_size=4)
    ),
    max_leaves=12,
)
typical_records = st.dictionaries(
    st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=10).filter(
        lambda k: k not in ("seq", "prev", "hash")
    ),
    typical_values,
    max_size=15,
)


@SETTINGS
@given(fields=typical_records, seq=st.integers(0, 10**12))
def test_link_takes_the_fast_path_for_what_the_writer_writes(fields: dict, seq: int) -> None:
    import orjson

    record = {**fields, "seq": seq, "prev": GENESIS, "kind": "request"}
    line = chain_body(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
    expected = "sha256:" + hashlib.sha256(line[:-82] + b"}").hexdigest()
    scalars = tuple(k for k, v in record.items() if not isinstance(v, dict | list))
    found = receipts._link(line, GENESIS, seq, scalars)
    assert found == {"hash": expected, **{k: record[k] for k in scalars}}
    assert all(type(found[k]) is type(orjson.loads(line)[k]) for k in scalars)
    assert receipts._link(line, GENESIS, seq + 1, ()) is None  # another seq: not this line
    assert receipts._link(line, "sha256:" + "1" * 64, seq, ()) is None  # another prev
    nested = [k for k, v in record.items() if isinstance(v, dict | list)]
    if nested:  # an object or array is not copied: the caller parses the line
        assert receipts._link(line, GENESIS, seq, (nested[0],)) is None


def number_spellings(x: float) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [repr(x), f"{x:.1f}", f"{x:.3f}", f"{x:.6f}", f"{x:.17g}", f"{x:e}", f"{x:E}", f"{x}0"]
    )


token = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).flatmap(number_spellings),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["-0", "0", "-0.0", "0.0", "1.0", "1.50", "01", "1e5", "1E+05", "0.00001"]),
    st.sampled_from(["0.000001", "1000000000000000.0", "10000000000000000.0", "true", "null"]),
    st.sampled_from(["0.0000099", "0.000010", "999999999999999.9", "0.1234567890123456", "0.00"]),
    st.sampled_from(['"\x7f"', '"\\u007f"', '"a/b"', '"\\/"', "[]", "{}", '{"b":1,"a":2}']),
    st.text(max_size=6).map(lambda t: json.dumps(t, ensure_ascii=False)),
    st.text(max_size=6).map(json.dumps),
)
key = st.sampled_from(['"a"', '"b"', '"seq"', '"prev"', '"hash"', '"z"', '"a "', '"\\u0061"'])


@settings(max_examples=1500, deadline=None)
@given(
    pairs=st.lists(st.tuples(key, token), max_size=5),
    seq=st.integers(0, 3),
    spacing=st.sampled_from(["", " "]),
    order=st.booleans(),
)
def test_link_never_accepts_what_the_reference_refuses(
    pairs: list, seq: int, spacing: str, order: bool
) -> None:
    """Hand-spelled bodies (any number format, escapes, spaces, duplicate or unsorted keys,
    with a valid hash over them): the fast path may be unsure, never wrong."""
    fields = [*pairs, ('"seq"', str(seq)), ('"prev"', json.dumps(GENESIS))]
    if order:
        fields.sort()
    body = ("{" + ",".join(f"{k}:{spacing}{v}" for k, v in fields) + "}").encode()
    line = chain_body(body)
    import orjson

    names = tuple({k.strip('"') for k, _ in pairs if k.isascii()} | {"seq", "prev"})
    found = native().link(line, GENESIS, seq, names)
    if found is not None:
        assert reference_accepts(line, GENESIS, seq), line
        parsed = orjson.loads(line)
        assert found == {k: parsed[k] for k in (*names, "hash") if k in parsed}


def test_link_is_sure_of_load_receipts(tmp_path) -> None:
    """A week-3 run's request receipts take the fast path (all but the first line and the seal)."""
    from pipeline.receipts import ReceiptWriter

    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="week3") as writer:
        writer.write("run", tool="t", release={"name": "tai", "sha256": "ab" * 32})
        for n in range(50):
            writer.write(
                "request",
                "load",
                endpoint="/health",
                method="GET",
                status=200,
                latency_ms=round(1.5 + n / 7, 3),
                scheduled_s=n / 10,
                sent_s=round(n / 10 + 0.000125, 6),
                passed=True,
                error=None,
            )
        writer.seal()
    lines = path.read_bytes().splitlines()
    prev = "sha256:" + hashlib.sha256(lines[0][:-82] + b"}").hexdigest()
    for seq, line in enumerate(lines[1:-1], 1):
        found = receipts._link(line, prev, seq, ("kind", "latency_ms", "passed"))
        assert found is not None, line
        assert found == {
            "kind": "request",
            "latency_ms": round(1.5 + (seq - 1) / 7, 3),
            "passed": True,
            "hash": found["hash"],
        }
        prev = found["hash"]
    assert receipts._link(lines[-1], prev, len(lines) - 1, ()) is None  # the seal: judged in full


def test_orjson_positional_range_is_what_orjson_writes() -> None:
    import orjson

    small, large = receipts._orjson_positional()  # type: ignore[misc]
    for exponent in range(small, large + 1):
        assert b"e" not in orjson.dumps(1.5 * 10.0**exponent)
    assert b"e" in orjson.dumps(1.5 * 10.0 ** (small - 1))
    assert b"e" in orjson.dumps(1.5 * 10.0 ** (large + 1))


def test_everything_works_without_the_module(tmp_path) -> None:
    """An install without a compiler: pipeline._native fails to import, the twins take over."""
    import subprocess
    import sys

    from pipeline.receipts import ReceiptWriter

    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="week3") as writer:
        writer.write("run")
        writer.write("startup", "start", seconds=0.5)
        for n in range(200):
            writer.write("request", "load", latency_ms=n + 0.5, passed=True)
        writer.seal()
    script = f"""
import sys
sys.modules["pipeline._native"] = None  # as if it was never built
from pipeline import gates, receipts
assert receipts._line_digest is receipts.py_line_digest and gates._select is None
spec = gates.parse_gate("g", {{"http.latency_ms": ["p(95) < 191", "p(95) > 189"]}}, "inline")
verdict = gates.check({str(path)!r}, spec)
print(verdict.passed, [r.measured for r in verdict.results])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "True", done.stdout
