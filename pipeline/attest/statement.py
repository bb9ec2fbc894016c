"""The gate attestation: an in-toto Statement v1 about one image digest, whose predicate is a
gate's verdict as judged from a receipts file.

Predicate type `https://taiea.dev/gate/v1` (this project's; the URI names a format, nothing is
served there). Predicate fields:
- `gate`, `verdict` ("PASS"/"FAIL"), `passed`;
- `results`: every expression as judged (metric, expression, measured, samples, passed, reason);
- `thresholds`: the env's table for that gate, as written ({metric: [expression, …]});
- `receipts`: the file's `run_id`, sealed `head` hash and line `count` (re-check: the same file
  must verify to the same head, and judge to the same verdict);
- `release`: name, version, tarball sha256 (from the run record); `env`;
- `tool`: name and version; `issuedAt` (RFC 3339 UTC).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.gates import GateSpec, Verdict

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://taiea.dev/gate/v1"


def gate_statement(
    *,
    image_name: str,
    digest: str,
    spec: GateSpec,
    verdict: Verdict,
    run: dict[str, Any],
    env_name: str,
    issued_at: datetime | None = None,
) -> bytes:
    """The statement's JSON bytes (canonical: sorted keys, no spaces)."""
    verification = verdict.verification
    if verification is None or not verification.ok or not verification.sealed:
        raise PipelineError("only a sealed, verified receipts file can be attested")
    release = run.get("release") or {}
    when = (issued_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": image_name, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "gate": verdict.gate,
            "verdict": "PASS" if verdict.passed else "FAIL",
            "passed": verdict.passed,
            "reason": verdict.reason,
            "results": [r.as_dict() for r in verdict.results],
            "thresholds": {key.source: [t.source for t in ts] for key, ts in spec.rules},
            "receipts": {
                "run_id": run.get("run_id"),
                "head": verification.head,
                "count": verification.count,
            },
            "release": {k: release.get(k) for k in ("name", "version", "sha256")},
            "env": env_name,
            "tool": {"name": "taiea-pipeline", "version": __version__},
            "issuedAt": when,
        },
    }
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def subject_digests(statement: dict[str, Any]) -> list[str]:
    out = []
    for subject in statement.get("subject") or []:
        if isinstance(subject, dict) and isinstance(subject.get("digest"), dict):
            hexdigest = subject["digest"].get("sha256")
            if isinstance(hexdigest, str):
                out.append(f"sha256:{hexdigest}")
    return out


def issued_at(predicate: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(predicate.get("issuedAt")).replace("Z", "+00:00"))
    except ValueError:
        return None
