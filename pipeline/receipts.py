"""The receipt log: hash-chained JSON lines. Write, read, verify, seal (ARCHITECTURE.md "Receipts").

A line is the canonical record B (keys sorted, compact, UTF-8, no NaN) with its closing `}`
replaced by `,"hash":"sha256:<hex>"}` where hex = sha256(B). So a verifier drops the last 82
bytes of a line, adds `}`, and hashes: no re-serialization is needed to check the chain.

Why ~740 lines: the writer, the reader and the verifier share the line format; the verifier's
parallel scan (with the C fast path) is most of it and is held to the Python twin by the tests.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import hmac
import math
import multiprocessing
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from pipeline.errors import PipelineError

GENESIS = "sha256:" + "0" * 64
HASH_PREFIX = b',"hash":"sha256:'
SUFFIX_LEN = len(HASH_PREFIX) + 64 + 2  # 82: ,"hash":"sha256:<64 hex>"}
MAX_LINE = 1 << 20
KEY_ENV = "PIPELINE_RECEIPT_KEY"
REDACTED = "[redacted]"
_COMMON = ("ts", "kind", "run_id", "seq", "phase", "stage", "prev", "hash")
_READ_CHUNK = 1 << 20
_BLOCK = 256 << 10  # lines are split a block at a time: memory stays flat
PARALLEL_MIN_BYTES = 32 << 20
_TOO_LONG = f"longer than {MAX_LINE} bytes"


def runs_dir() -> Path:
    return Path(os.environ.get("PIPELINE_RUNS_DIR", "runs"))


def new_run_id(phase: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{phase}-{uuid.uuid4().hex[:6]}"


def now_ts() -> str:
    """RFC 3339 UTC with milliseconds and `Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def receipt_key() -> bytes | None:
    value = os.environ.get(KEY_ENV)
    return value.encode() if value else None


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"receipt field {where!r} is {value}: NaN/Infinity are not allowed")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for item in value:
            _check_finite(item, where)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The canonical serialization B: keys sorted, `,` and `:`, no whitespace, UTF-8, no NaN."""
    _check_finite(dict(record), "record")
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def chain_line(body: bytes) -> tuple[bytes, str]:
    """(the line to write, its hash) for a canonical body ending in `}`."""
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + HASH_PREFIX + digest.encode() + b'"}\n', "sha256:" + digest


def scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    """Replace every occurrence of a secret inside string values by [redacted]."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item, secrets) for item in value]
    return value


class ReceiptWriter:
    """Appends hash-chained receipts to one file, one flushed line per record. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        run_id: str,
        phase: str,
        secrets: tuple[str, ...] = (),
        check: Callable[[str, dict[str, Any]], list[str]] | None = None,
        _seq: int = 0,
        _prev: str = GENESIS,
        _fh: BinaryIO | None = None,
    ):
        self.path = path
        self.run_id = run_id
        self.phase = phase
        self.secrets = tuple(s for s in secrets if s)
        self.seq = _seq
        self.head = _prev
        self.check = check  # schema.checker(): what is wrong with a receipt, before it is written
        self.sealed = False
        self._lock = threading.RLock()  # re-entered by seal(): count, head and seal are atomic
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        if _fh is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _fh = open(path, "xb")  # noqa: SIM115 - closed in close()
            except FileExistsError:
                if path.parent.is_dir():
                    raise PipelineError(
                        f"{path}: receipts file already exists; choose another --receipts"
                    ) from None
                raise PipelineError(
                    f"{path}: cannot write receipts here: {path.parent} is not a directory"
                ) from None
            except OSError as exc:
                raise PipelineError(
                    f"{path}: cannot write receipts here: {exc.strerror or exc}"
                ) from None
        self._fh = _fh

    @classmethod
    def for_run(cls, phase: str, receipts: str | Path | None = None, **kw: Any) -> ReceiptWriter:
        run_id = new_run_id(phase)
        path = Path(receipts) if receipts else runs_dir() / run_id / "receipts.jsonl"
        return cls(path, run_id=run_id, phase=phase, **kw)

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(record)` after every record is written (e.g. to echo --json)."""
        self._listeners.append(listener)

    def write(self, kind: str, stage: str | None = None, **fields: Any) -> dict[str, Any]:
        clash = set(fields) & set(_COMMON)
        if clash:
            raise ValueError(f"receipt fields {sorted(clash)} are reserved")
        if self.check is not None and (wrong := self.check(kind, fields)):
            raise ValueError(f"{self.path}: not as pipeline/schema.py declares: {'; '.join(wrong)}")
        with self._lock:
            if self.sealed:
                raise ValueError(f"{self.path}: sealed; no receipt may follow the seal")
            record: dict[str, Any] = {
                "ts": now_ts(),
                "kind": kind,
                "run_id": self.run_id,
                "seq": self.seq,
                "phase": self.phase,
                "stage": stage,
                "prev": self.head,
            }
            record.update(scrub(fields, self.secrets))
            line, digest = chain_line(canonical(record))
            self._fh.write(line)
            self._fh.flush()
            self.seq += 1
            self.head = digest
            record["hash"] = digest
            for listener in self._listeners:  # under the lock: listeners see the file's order
                listener(record)
        return record

    def seal(self, key: bytes | None = None) -> dict[str, Any]:
        key = receipt_key() if key is None else key
        with self._lock:  # no other thread's receipt may land between reading the head and sealing
            count = self.seq + 1
            fields: dict[str, Any] = {"count": count, "head": self.head}
            if key:
                fields["hmac"] = hmac.new(key, self.head.encode(), hashlib.sha256).hexdigest()
            record = self.write("seal", **fields)
            self.sealed = True
        return record

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                os.fsync(self._fh.fileno())
                self._fh.close()

    def __enter__(self) -> ReceiptWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- reading and verification


@dataclass(frozen=True)
class Verification:
    path: Path
    ok: bool
    count: int  # lines read (verified up to the first bad one)
    head: str
    sealed: bool
    line: int | None = None  # 1-based number of the first bad line
    reason: str | None = None
    run: dict[str, Any] | None = None  # the first record, when it is a `run` record

    def describe(self) -> str:
        if self.ok:
            state = "sealed" if self.sealed else "unsealed"
            return f"{self.path}: {self.count} receipts verified, {state}, head {self.head}"
        where = f"line {self.line}: " if self.line else ""
        return f"{self.path}: {where}{self.reason}"


def iter_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Raw lines (with their newline, if any) of path[start:end], streamed in constant memory.
    A line longer than MAX_LINE is yielded as its first MAX_LINE + 1 bytes, and the rest of it
    is skipped, so the caller can refuse it without holding it."""
    with open(path, "rb", buffering=_READ_CHUNK) as fh:
        fh.seek(start)
        pos = start
        readline = fh.readline
        while end is None or pos < end:
            line = readline(MAX_LINE + 1)
            if not line:
                return
            pos += len(line)
            if len(line) > MAX_LINE and not line.endswith(b"\n"):
                while True:  # skip the rest of an oversized line
                    more = readline(_READ_CHUNK)
                    pos += len(more)
                    if not more or more.endswith(b"\n"):
                        break
            yield line


def _line_blocks(
    path: Path, start: int = 0, end: int | None = None
) -> Iterator[tuple[list[bytes], str | None]]:
    """Lines of path[start:end] without their newline, in lists read a block at a time, each
    with None, or with what is wrong with its last line, which then ends the blocks: longer
    than MAX_LINE (cut there, so memory stays flat), or cut short by the end of the range."""
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        left = None if end is None else end - start
        tail = b""
        while left is None or left > 0:
            block = fh.read(_BLOCK if left is None else min(_BLOCK, left))
            if not block:
                break
            if left is not None:
                left -= len(block)
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
            if lines and max(map(len, lines)) >= MAX_LINE:
                at = next(n for n, line in enumerate(lines) if len(line) >= MAX_LINE)
                yield lines[:at] + [lines[at][:MAX_LINE]], _TOO_LONG
                return
            if len(tail) >= MAX_LINE:
                yield lines + [tail[:MAX_LINE]], _TOO_LONG
                return
            if lines:
                yield lines, None
        if tail:
            yield [tail], "truncated: the last line has no newline (a write was cut short)"


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records without verification (for display); raises PipelineError on a line that is not
    a JSON object."""
    for number, line in enumerate(iter_lines(path), 1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise PipelineError(f"{path}: line {number}: not JSON") from None
        if not isinstance(record, dict):
            raise PipelineError(f"{path}: line {number}: not a JSON object (a receipt is one)")
        yield record


def receipts_file(path: str | Path) -> Path:
    """A receipts file the user named (a run's directory stands for its receipts.jsonl), or one
    line saying why it is none (bad input, exit 2)."""
    path = Path(path)
    if path.is_dir():
        if (path / "receipts.jsonl").is_file():
            return path / "receipts.jsonl"
        raise PipelineError(f"{path}: a directory with no receipts.jsonl, not a receipts file")
    if not path.is_file():
        raise PipelineError(f"{path}: no such receipts file")
    return path


def select(path: Path, kind: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of one kind (all without `kind`), at most `limit`; a kind the file does not
    hold is an error naming the kinds it does (a typo shows at once)."""
    path = receipts_file(path)
    chosen: list[dict[str, Any]] = []
    seen: set[str] = set()
    for record in iter_records(path):
        seen.add(str(record.get("kind")))
        if kind is None or record.get("kind") == kind:
            chosen.append(record)
            if limit is not None and len(chosen) >= limit:
                break
    if kind is not None and not chosen:
        raise PipelineError(
            f"{path}: no receipt of kind {kind!r} (kinds in it: {', '.join(sorted(seen)) or 'none'})"
        )
    return chosen


class Collector(Protocol):
    """Consumes verified records; results of collectors fed disjoint parts of a file merge in order.

    `fields`: the top-level fields `feed` reads, or None for whole records. A record fed may
    then hold just those (and `hash`): scalars are copied from the line, no full parse."""

    fields: tuple[str, ...] | None

    def feed(self, record: dict[str, Any]) -> None: ...

    def merge(self, later: Any) -> None: ...


@dataclass
class _Range:
    """What one pass over a byte range of the file found."""

    lines: int = 0
    first_seq: int | None = None
    first_prev: str | None = None
    last_hash: str = GENESIS
    error_line: int | None = None  # 1-based within the range
    error: str | None = None
    seq_found: int | None = None  # for a seq mismatch: the seq on the bad line
    sealed: bool = False
    run: dict[str, Any] | None = None
    collector: Any = None


def py_line_digest(line: bytes) -> str | bool | None:
    """`"sha256:<hex>"` of a line (without newline) whose hash field matches its body; False
    when the hash field does not match (edited); None when there is none. pipeline/_native.c is
    the same function in C, used when it was built."""
    size = len(line)
    if (
        size <= SUFFIX_LEN
        or not line.startswith(HASH_PREFIX, size - SUFFIX_LEN)
        or not line.endswith(b'"}')
    ):
        return None
    hexd = hashlib.sha256(line[:-SUFFIX_LEN] + b"}").hexdigest()
    if not line.startswith(hexd.encode(), size - 66):
        return False
    return "sha256:" + hexd


def _no_link(line: bytes, prev: str, seq: int, fields: tuple[str, ...]) -> dict[str, Any] | None:
    return None  # without the C module every line takes the reference checks


def _orjson_positional() -> tuple[int, int] | None:
    """The decimal exponents of the magnitudes the installed orjson writes positionally (about
    -5..15), or None when its floats do not look as _native.link expects."""
    dumps = orjson.dumps
    samples = [(0.0, b"0.0"), (-0.0, b"-0.0"), (0.5, b"0.5"), (100.0, b"100.0"), (-2.25, b"-2.25")]
    if any(dumps(value) != text for value, text in samples):
        return None

    def positional(exponent: int) -> bool:
        return all(b"e" not in dumps(m * 10.0**exponent) for m in (1.0, 1.5, 9.75))

    small = next(e for e in range(0, -30, -1) if not positional(e - 1))
    large = next(e for e in range(0, 30) if not positional(e + 1))
    return small, large


try:
    from pipeline import _native
except ImportError:  # not built (no compiler or OpenSSL headers): the same in Python
    _line_digest: Callable[[bytes], str | bool | None] = py_line_digest
    _link: Callable[[bytes, str, int, tuple[str, ...]], dict[str, Any] | None] = _no_link
else:
    _line_digest = _native.line_digest
    _positional = _orjson_positional()
    if _positional is None:
        _link = _no_link
    else:
        _native.configure(*_positional)
        _link = _native.link


def _json_reason(exc: orjson.JSONDecodeError) -> str:
    return "invalid UTF-8" if "utf-8" in str(exc).lower() else "not JSON"


def _unchained_reason(line: bytes, digest: bool | None) -> str:
    """Why a line's hash field did not check out: it is no JSON, or has no hash, or was edited."""
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return _json_reason(exc)
    if digest is None:
        return "not a chained receipt: no trailing hash field"
    return "edited: content does not match its hash"


def _scan_range(
    path: Path, start: int, end: int | None, collector: Collector | None, key: bytes | None
) -> _Range:
    out = _Range(collector=collector)
    feed = collector.feed if collector is not None else None
    wanted = collector.fields if collector is not None else ()
    fields = wanted or ()
    whole = wanted is None  # the collector reads whole records: parse every line
    link, line_digest = _link, _line_digest
    loads = orjson.loads
    dumps = orjson.dumps
    head: str | None = None
    seq = -1
    last_hash = "\n"  # no prev is this: the range's first line takes the reference checks
    number = 0  # the line being judged; every line before it checked out

    def bad(reason: str) -> _Range:
        out.error_line, out.error = number, reason
        out.lines = number - 1
        if out.lines:
            out.last_hash = last_hash
        return out

    blocks = _line_blocks(path, start, end)
    for lines, problem in blocks:
        if problem:
            lines.pop()
        first = number
        for line in lines:
            number += 1
            record = link(line, last_hash, seq + 1, fields)  # surely good (no seal), or None
            if record is not None:
                digest = record["hash"]
                if whole:
                    record = loads(line)
                seq += 1
            else:  # the reference checks, which say what is wrong
                checked = line_digest(line)
                if not isinstance(checked, str):
                    return bad(_unchained_reason(line, checked))
                digest = checked
                try:
                    record = loads(line)
                except orjson.JSONDecodeError as exc:
                    return bad(_json_reason(exc))
                if type(record) is not dict:
                    return bad("not a JSON object")
                if dumps(record) != line:
                    return bad("not canonical JSON (duplicate keys, whitespace or number format)")
                found = record.get("seq")
                if head is None:
                    if type(found) is not int:
                        return bad("no seq field")
                    out.first_seq, out.first_prev = found, record.get("prev")
                    if start == 0 and record.get("kind") == "run":
                        out.run = record
                    head = ""
                elif found != seq + 1:
                    if digest == last_hash:
                        return bad(f"duplicated: same as line {number - 1}")
                    out.seq_found = found if type(found) is int else None
                    return bad("seq")
                elif record.get("prev") != last_hash:
                    return bad("broken chain: prev is not the hash of the line before")
                seq = found
                if record.get("kind") == "seal":
                    reason = _seal_problem(record, key)
                    if reason:
                        return bad(reason)
                    last_hash = digest
                    out.sealed = True
                    break
            if feed is not None:
                feed(record)
            last_hash = digest
        if out.sealed:
            if number - first < len(lines) or problem or next(blocks, None):
                number += 1
                return bad("receipt after the seal (appended to a finished run)")
            break
        if problem:
            number += 1
            return bad(problem)
    out.lines = number
    if number:
        out.last_hash = last_hash
    return out


def _seq_reason(path: Path, line_no: int, expected: int, found: int | None) -> str:
    """Tell deleted from reordered: does the missing seq turn up later in the file?"""
    if found is None:
        return "no seq field"
    if found < expected:
        return f"reordered or duplicated: seq {found} where {expected} was expected"
    needle = f'"seq":{expected},'.encode()
    for number, line in enumerate(iter_lines(path), 1):
        if number > line_no and needle in line:
            return f"reordered: seq {expected} expected here, found at line {number}"
    missing = f"{expected}" if found == expected + 1 else f"{expected}..{found - 1}"
    return f"deleted: seq {missing} missing before this line"


def _split(path: Path, parts: int) -> list[tuple[int, int | None]]:
    """Byte ranges that start at line starts."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as fh:
        for k in range(1, parts):
            fh.seek(max(cuts[-1], size * k // parts))
            while True:  # to the next line start, in bounded reads (a line may be huge)
                skipped = fh.readline(_READ_CHUNK)
                if not skipped or skipped.endswith(b"\n"):
                    break
            if fh.tell() >= size:
                break
            cuts.append(fh.tell())
    return [(a, b) for a, b in zip(cuts, cuts[1:] + [None], strict=True)]


def _scan_ranges(
    path: Path, collector_factory: Callable[[], Collector] | None, key: bytes | None
) -> list[_Range]:
    """Scan in parallel on every core for big files (fork: the collector factory is inherited)."""
    size = path.stat().st_size
    workers = min(os.cpu_count() or 1, 8) if size >= PARALLEL_MIN_BYTES else 1
    ranges = _split(path, workers)
    make = collector_factory or (lambda: None)  # type: ignore[return-value]
    if len(ranges) == 1:
        return [_scan_range(path, 0, None, make(), key)]
    ctx = multiprocessing.get_context("fork")
    children = []
    for start, end in ranges[1:]:
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(sender, path, start, end, make, key), daemon=True)
        proc.start()
        sender.close()
        children.append((proc, receiver))
    results = [_scan_range(path, ranges[0][0], ranges[0][1], make(), key)]
    for proc, receiver in children:
        part = receiver.recv()
        proc.join()
        if isinstance(part, BaseException):
            raise part
        results.append(part)
    return results


def _child(sender: Any, path: Path, start: int, end: int | None, make: Any, key: Any) -> None:
    gc.disable()
    try:
        sender.send(_scan_range(path, start, end, make(), key))
    except BaseException as exc:  # the parent re-raises it: a bug, not a bad file
        sender.send(RuntimeError(f"receipt scan worker failed: {exc!r}"))
    finally:
        sender.close()


def scan(
    path: str | Path,
    collector_factory: Callable[[], Collector] | None = None,
    *,
    key: bytes | None = None,
    require_seal: bool = True,
) -> tuple[Verification, Collector | None]:
    """Verify the chain of `path` (in parallel for big files), feeding each verified record
    except the seal to a collector. Names the first bad line and why; never raises for a bad
    file. Returns the verification and the merged collector (None when none was asked for)."""
    path = Path(path)
    key = receipt_key() if key is None else key
    try:
        if not path.exists():
            return Verification(path, False, 0, GENESIS, False, None, "no such file"), None
        if path.is_dir():
            return Verification(path, False, 0, GENESIS, False, None, "is a directory"), None
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            parts = _scan_ranges(path, collector_factory, key)
        finally:
            if was_enabled:
                gc.enable()
    except PermissionError:
        return Verification(path, False, 0, GENESIS, False, None, "permission denied"), None
    head, count, sealed = GENESIS, 0, False
    run = parts[0].run
    merged: Collector | None = None
    for part in parts:
        if part.lines or part.error:
            if sealed:
                reason = "receipt after the seal (appended to a finished run)"
                return Verification(path, False, count, head, True, count + 1, reason, run), None
            first_bad = part.error_line == 1
            if not first_bad and part.first_seq != count:
                reason = _seq_reason(path, count + 1, count, part.first_seq)
                return Verification(path, False, count, head, False, count + 1, reason, run), None
            if not first_bad and part.first_prev != head:
                reason = "broken chain: prev is not the hash of the line before"
                return Verification(path, False, count, head, False, count + 1, reason, run), None
        if part.error is not None:
            line_no = count + (part.error_line or 1)
            reason = part.error
            if reason == "seq":
                reason = _seq_reason(path, line_no, count + part.lines, part.seq_found)
            verdict = Verification(
                path,
                False,
                count + part.lines,
                part.last_hash if part.lines else head,
                False,
                line_no,
                reason,
                run,
            )
            return verdict, None
        count += part.lines
        if part.lines:
            head = part.last_hash
        sealed = sealed or part.sealed
        if part.collector is not None:
            if merged is None:
                merged = part.collector
            else:
                merged.merge(part.collector)
    if count == 0:
        return Verification(path, False, 0, head, False, None, "empty: no receipts"), None
    if require_seal and not sealed:
        reason = (
            "unsealed: an unfinished run, or one that was killed "
            "(`invoke runs.recover` closes it, failing)"
        )
        return Verification(path, False, count, head, False, count + 1, reason, run), None
    return Verification(path, True, count, head, sealed, None, None, run), merged


def _seal_problem(record: dict[str, Any], key: bytes | None) -> str | None:
    if record.get("count") != record.get("seq", -2) + 1 or record.get("head") != record.get("prev"):
        return "seal does not match the chain (count or head differ)"
    mac = record.get("hmac")
    if mac is None:
        return f"sealed without HMAC but {KEY_ENV} is set" if key else None
    if not key:
        return f"sealed with an HMAC; set {KEY_ENV} to verify it"
    expected = hmac.new(key, str(record["head"]).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(str(mac), expected):
        return "bad HMAC: the seal was not made with this key"
    return None


def verify(
    path: str | Path, *, key: bytes | None = None, require_seal: bool = True
) -> Verification:
    return scan(path, None, key=key, require_seal=require_seal)[0]


# ---------------------------------------------------------------- the ledger of verdicts


def ledger_path() -> Path:
    return runs_dir() / "gates.jsonl"


def verify_file(path: Path, *, unsealed: bool = False) -> Verification:
    """receipts.verify: a run's file must end with its seal unless `unsealed`; a ledger — its
    records are verdicts of phase `ledger`, and it goes on across runs — never has one. What a
    file is comes from its first record, not its name."""
    return verify(path, require_seal=not (unsealed or _is_ledger(path)))


def _is_ledger(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            first = orjson.loads(fh.readline())
    except (OSError, orjson.JSONDecodeError):
        return False  # verify() says what is wrong with it
    return isinstance(first, dict) and (first.get("phase"), first.get("kind")) == ("ledger", "gate")


def _last_line(fh: BinaryIO) -> bytes:
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    block = b""
    pos = end
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        fh.seek(pos)
        block = fh.read(step) + block
        stripped = block.rstrip(b"\n")
        cut = stripped.rfind(b"\n")
        if cut >= 0:
            return stripped[cut + 1 :]
    return block.rstrip(b"\n")


def append_ledger(fields: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Append one verdict to runs/gates.jsonl, continuing its chain under an exclusive lock."""
    path = path or ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            last = _last_line(fh)
            seq, prev = 0, GENESIS
            if last:
                try:
                    tail = orjson.loads(last)
                    seq, prev = int(tail["seq"]) + 1, str(tail["hash"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise PipelineError(f"{path}: last line is not a ledger receipt") from None
            fh.seek(0, os.SEEK_END)
            writer = ReceiptWriter(
                path, run_id="ledger", phase="ledger", _seq=seq, _prev=prev, _fh=fh
            )
            return writer.write("gate", **fields)
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def host_identity() -> dict[str, str]:
    return {"host": socket.gethostname()}
