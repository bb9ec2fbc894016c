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

from pipeline import gates, receipts

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
        assert gates.percentile(ranked, pct) == gates.percentile(ordered, pct)
    assert samples == before  # ranks come from a private copy: the samples keep their order
    with pytest.raises(IndexError):
        ranked[len(samples)]
