"""A Binary Authorization policy, and the decision it makes about one image digest.

The file is Binary Authorization's own policy (`gcloud container binauthz policy export`, YAML or
JSON: `globalPolicyEvaluationMode`, `admissionWhitelistPatterns`, `defaultAdmissionRule` with
`evaluationMode`, `enforcementMode`, `requireAttestationsBy`), parsed with the official
`google.cloud.binaryauthorization_v1.Policy` type, plus two keys of ours beside it:
- `attestors`: the Attestor resources the policy names (`gcloud … attestors describe`), each
  with its public keys (`userOwnedGrafeasNote.publicKeys[].pkixPublicKey.publicKeyPem`), parsed
  with `binaryauthorization_v1.Attestor`. A key's `id` may be given; it must then equal the key's
  id as computed (`sha256:<hex of the raw key>`, dsse.key_id).
- `taiea`: `requiredGates` (default week3, week4) and `maxAgeDays` (default: no limit).

Google's PkixPublicKey has no Ed25519 algorithm (RSA, ECDSA, ML-DSA only), so our attestors
leave `signatureAlgorithm` unset and the PEM's key type decides; enforcement by Google itself
would need an ECDSA key, which this project does not make (README).

The decision (`evaluate`) is pure: for every required attestor and every required gate there
must be one envelope that (1) a key of that attestor signed, (2) carries an in-toto statement
of predicate type https://taiea.dev/gate/v1 (3) whose subject is this digest, (4) whose gate is
that gate and verdict PASS, (5) issued no longer ago than maxAgeDays. A missing one is named,
with the most telling reason an envelope gave for not counting.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pipeline.attest import dsse, keys
from pipeline.attest.statement import PREDICATE_TYPE, issued_at, subject_digests
from pipeline.errors import PipelineError

DEFAULT_GATES = ("week3", "week4")
ENFORCED = "ENFORCED_BLOCK_AND_AUDIT_LOG"
DRY_RUN = "DRYRUN_AUDIT_LOG_ONLY"


@dataclass(frozen=True)
class Attestor:
    name: str
    keys: dict[str, Ed25519PublicKey]


@dataclass(frozen=True)
class Policy:
    source: str
    evaluation_mode: str  # ALWAYS_ALLOW | ALWAYS_DENY | REQUIRE_ATTESTATION
    enforcement_mode: str  # ENFORCED_BLOCK_AND_AUDIT_LOG | DRYRUN_AUDIT_LOG_ONLY
    exempt: tuple[str, ...]  # admissionWhitelistPatterns' namePatterns
    required: tuple[Attestor, ...]
    gates: tuple[str, ...] = DEFAULT_GATES
    max_age: timedelta | None = None

    @property
    def key_ids(self) -> dict[str, str]:
        """Every trusted key id → its attestor's name."""
        return {kid: a.name for a in self.required for kid in a.keys}


@dataclass
class Decision:
    image: str
    digest: str
    admitted: bool
    enforced: bool
    missing: list[str] = field(default_factory=list)  # why it is (or, dry run, would be) denied
    accepted: list[dict[str, Any]] = field(default_factory=list)  # the attestations that count

    @property
    def message(self) -> str:
        """Cloud Run's wording for a denial."""
        why = "; ".join(self.missing)
        if self.admitted and self.missing:
            return f"dry run: image {self.image}@{self.digest} would be denied by Binary Authorization policy: {why}"
        return f"Image '{self.image}@{self.digest}' denied by Binary Authorization policy: {why}"


def load(path: Path) -> Policy:
    """Read and check a policy file; one line naming the file and the bad part on error."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read the policy: {exc.strerror}") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else _yaml(text)
    except ValueError as exc:
        raise PipelineError(f"{path}: not a policy file: {exc}") from None
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: not a policy file (no mapping at the top)")
    return parse(doc, str(path))


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def parse(doc: dict[str, Any], source: str) -> Policy:
    from google.cloud import binaryauthorization_v1 as binauthz

    doc = dict(doc)
    attestor_docs = doc.pop("attestors", []) or []
    ours = doc.pop("taiea", {}) or {}
    try:
        policy = binauthz.Policy.from_json(json.dumps(doc))
    except Exception as exc:  # json_format.ParseError names the field
        raise PipelineError(f"{source}: {_first_line(exc)}") from None
    rule = policy.default_admission_rule
    evaluation = binauthz.AdmissionRule.EvaluationMode(rule.evaluation_mode).name
    enforcement = binauthz.AdmissionRule.EnforcementMode(rule.enforcement_mode).name
    if evaluation == "EVALUATION_MODE_UNSPECIFIED":
        raise PipelineError(f"{source}: defaultAdmissionRule.evaluationMode is required")
    if enforcement not in (ENFORCED, DRY_RUN):
        raise PipelineError(
            f"{source}: defaultAdmissionRule.enforcementMode must be {ENFORCED} or {DRY_RUN}"
        )
    known = {}
    for n, raw in enumerate(attestor_docs):
        where = f"{source}: attestors[{n}]"
        try:
            attestor = binauthz.Attestor.from_json(json.dumps(raw))
        except Exception as exc:
            raise PipelineError(f"{where}: {_first_line(exc)}") from None
        found = {}
        for k, key in enumerate(attestor.user_owned_grafeas_note.public_keys):
            pem = key.pkix_public_key.public_key_pem
            public = keys.load_public(pem, f"{where}.publicKeys[{k}]")
            kid = dsse.key_id(public)
            if key.id and key.id != kid:
                raise PipelineError(
                    f"{where}.publicKeys[{k}]: id {key.id} is not this key's id ({kid})"
                )
            found[kid] = public
        if not found:
            raise PipelineError(f"{where}: {attestor.name or 'an attestor'} has no public key")
        known[attestor.name] = Attestor(attestor.name, found)
    required = []
    for name in rule.require_attestations_by:
        if name not in known:
            raise PipelineError(
                f"{source}: requireAttestationsBy names {name}, which `attestors` does not describe"
            )
        required.append(known[name])
    if evaluation == "REQUIRE_ATTESTATION" and not required:
        raise PipelineError(f"{source}: REQUIRE_ATTESTATION with no requireAttestationsBy")
    gates = tuple(ours.get("requiredGates") or DEFAULT_GATES)
    age = ours.get("maxAgeDays")
    if age is not None and (not isinstance(age, int | float) or age <= 0):
        raise PipelineError(f"{source}: taiea.maxAgeDays must be a positive number")
    return Policy(
        source=source,
        evaluation_mode=evaluation,
        enforcement_mode=enforcement,
        exempt=tuple(p.name_pattern for p in policy.admission_whitelist_patterns),
        required=tuple(required),
        gates=tuple(str(g) for g in gates),
        max_age=timedelta(days=age) if age is not None else None,
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def evaluate(
    policy: Policy,
    image: str,
    digest: str,
    envelopes: list[bytes],
    now: datetime | None = None,
) -> Decision:
    """Admit or deny the image `image` (its name, without tag or digest) at `digest`."""
    enforced = policy.enforcement_mode == ENFORCED
    decision = Decision(image, digest, admitted=True, enforced=enforced)
    if any(fnmatch.fnmatchcase(image, pattern) for pattern in policy.exempt):
        return decision
    if policy.evaluation_mode == "ALWAYS_ALLOW":
        return decision
    if policy.evaluation_mode == "ALWAYS_DENY":
        decision.missing.append("the policy denies every image (ALWAYS_DENY)")
    else:
        now = now or datetime.now(UTC)
        trusted = {kid: pub for a in policy.required for kid, pub in a.keys.items()}
        judged = [_judge(data, trusted, digest, policy, now) for data in envelopes]
        for attestor in policy.required:
            for gate in policy.gates:
                good = [j for j in judged if j.counts(attestor, gate)]
                if good:
                    decision.accepted.append(good[0].facts)
                    continue
                near = [j.why_not(attestor, gate) for j in judged]
                reasons = [r for r in near if r]
                detail = f" ({'; '.join(dict.fromkeys(reasons))})" if reasons else ""
                decision.missing.append(
                    f"no valid attestation by {attestor.name} for gate {gate}{detail}"
                )
    decision.admitted = not decision.missing or not enforced
    return decision


@dataclass
class _Judged:
    """One envelope as the policy sees it."""

    signed_by: tuple[str, ...] = ()
    stated_keys: tuple[str, ...] = ()
    gate: str | None = None
    problem: str | None = None  # why it counts for nothing, whatever the attestor and gate
    facts: dict[str, Any] = field(default_factory=dict)

    def counts(self, attestor: Attestor, gate: str) -> bool:
        return (
            self.problem is None
            and self.gate == gate
            and bool(set(self.signed_by) & set(attestor.keys))
        )

    def why_not(self, attestor: Attestor, gate: str) -> str | None:
        if self.gate is not None and self.gate != gate:
            return None  # about another gate: not a near miss
        if self.problem:
            return self.problem
        if not set(self.signed_by) & set(attestor.keys):
            return (
                f"signed by {', '.join(self.stated_keys) or 'no key'}, not a key of {attestor.name}"
            )
        return None


def _judge(
    data: bytes, trusted: dict[str, Ed25519PublicKey], digest: str, policy: Policy, now: datetime
) -> _Judged:
    try:
        opened = dsse.open_envelope(data, trusted)
    except PipelineError as exc:
        return _Judged(problem=str(exc))
    out = _Judged(signed_by=opened.verified_by, stated_keys=opened.keyids)
    if not opened.verified_by:
        unknown = [k for k in opened.keyids if k not in trusted]
        out.problem = (
            f"signed by unknown key {', '.join(unknown)}"
            if unknown and len(unknown) == len(opened.keyids)
            else "bad signature"
        )
    try:
        statement = dsse.statement_of(opened)
    except PipelineError as exc:
        out.problem = out.problem or str(exc)
        return out
    predicate = statement.get("predicate") if isinstance(statement.get("predicate"), dict) else {}
    assert isinstance(predicate, dict)
    out.gate = str(predicate.get("gate")) if predicate.get("gate") is not None else None
    subjects = subject_digests(statement)
    when = issued_at(predicate)
    out.facts = {
        "gate": out.gate,
        "verdict": predicate.get("verdict"),
        "keyid": (opened.verified_by or opened.keyids or ("",))[0],
        "run_id": (predicate.get("receipts") or {}).get("run_id"),
        "issued_at": predicate.get("issuedAt"),
    }
    if out.problem:
        return out
    if statement.get("predicateType") != PREDICATE_TYPE:
        out.problem = f"predicate type {statement.get('predicateType')!r}, not a gate verdict"
    elif digest not in subjects:
        out.problem = f"an attestation for another digest ({', '.join(subjects) or 'none'})"
    elif predicate.get("verdict") != "PASS" or predicate.get("passed") is not True:
        out.problem = f"gate {out.gate}: verdict {predicate.get('verdict')} (not PASS)"
    elif when is None:
        out.problem = "no issuedAt"
    elif policy.max_age is not None and now - when > policy.max_age:
        days = policy.max_age.total_seconds() / 86400
        out.problem = (
            f"expired: issued {predicate.get('issuedAt')}, the policy allows {days:g} days"
        )
    return out
