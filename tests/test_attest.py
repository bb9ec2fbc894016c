"""Signed gate attestations: DSSE envelopes checked by a third party's verifier
(securesystemslib), the policy file in Binary Authorization's shape, and the admission decision
as a table of attacks (pure: envelopes made here, no registry). The registry and the emulator
enforcing it are in test_attest_enforced.py."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline.attest import dsse, keys, policy
from pipeline.attest.statement import PREDICATE_TYPE, STATEMENT_TYPE
from pipeline.errors import PipelineError

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
IMAGE = "127.0.0.1:5000/taiea/tai_autonomics"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def statement(gate: str, verdict: str = "PASS", digest: str = DIGEST, **predicate) -> bytes:
    body = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": IMAGE, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "gate": gate,
            "verdict": verdict,
            "passed": verdict == "PASS",
            "receipts": {"run_id": f"run-{gate}", "head": "sha256:" + "0" * 64, "count": 9},
            "issuedAt": "2026-12-01T12:00:00.000Z",
            **predicate,
        },
    }
    return json.dumps(body).encode()


def policy_doc(public_pem: str, mode: str = policy.ENFORCED, **ours) -> dict:
    return {
        "globalPolicyEvaluationMode": "ENABLE",
        "admissionWhitelistPatterns": [{"namePattern": "gcr.io/google_containers/*"}],
        "defaultAdmissionRule": {
            "evaluationMode": "REQUIRE_ATTESTATION",
            "enforcementMode": mode,
            "requireAttestationsBy": ["projects/taiea/attestors/release-gates"],
        },
        "attestors": [
            {
                "name": "projects/taiea/attestors/release-gates",
                "userOwnedGrafeasNote": {
                    "noteReference": "projects/taiea/notes/release-gates",
                    "publicKeys": [{"pkixPublicKey": {"publicKeyPem": public_pem}}],
                },
            }
        ],
        **({"taiea": ours} if ours else {}),
    }


@pytest.fixture(scope="module")
def trusted() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def the_policy(trusted) -> policy.Policy:
    return policy.parse(policy_doc(keys.public_pem(trusted.public_key())), "policy.yaml")


def tampered(envelope: bytes) -> bytes:
    """The predicate's verdict changed after signing (FAIL → PASS), signature kept."""
    doc = json.loads(envelope)
    body = json.loads(base64.b64decode(doc["payload"]))
    body["predicate"]["verdict"], body["predicate"]["passed"] = "PASS", True
    doc["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(doc).encode()


# -------------------------------------------------------------------------- DSSE


def test_our_envelope_verifies_with_a_third_party_dsse_verifier(trusted):
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    envelope = dsse.sign(statement("week3"), trusted)
    theirs = Envelope.from_dict(json.loads(envelope))
    key = SSlibKey.from_crypto(trusted.public_key(), keyid=dsse.key_id(trusted.public_key()))
    accepted = theirs.verify([key], 1)
    assert list(accepted) == [dsse.key_id(trusted.public_key())]
    assert json.loads(theirs.pae()[theirs.pae().index(b"{") :])["predicate"]["gate"] == "week3"
    # and theirs rejects what ours rejects: the payload changed after signing
    from securesystemslib.exceptions import VerificationError

    broken = Envelope.from_dict(json.loads(tampered(dsse.sign(statement("w", "FAIL"), trusted))))
    with pytest.raises(VerificationError):
        broken.verify([key], 1)


def test_an_envelope_signed_by_the_third_party_verifies_with_ours(trusted):
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    signer = CryptoSigner(trusted)
    theirs = Envelope(statement("week4"), dsse.PAYLOAD_TYPE, {})
    theirs.sign(signer)
    opened = dsse.open_envelope(
        json.dumps(theirs.to_dict()).encode(), {signer.public_key.keyid: trusted.public_key()}
    )
    assert opened.verified_by == (signer.public_key.keyid,)


@pytest.mark.parametrize(
    "data",
    [b"not json", b"{}", b'{"payload": "%%%", "payloadType": "x", "signatures": []}', b"[1]"],
    ids=["not-json", "empty", "bad-base64", "a-list"],
)
def test_a_non_envelope_is_refused_in_one_line(data):
    with pytest.raises(PipelineError, match="not a DSSE envelope"):
        dsse.open_envelope(data, {})


# -------------------------------------------------------------------------- keys


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    made = keys.keygen(tmp_path / "k")
    assert made.private.stat().st_mode & 0o777 == 0o600
    private = keys.load_private(made.private)
    assert dsse.key_id(private.public_key()) == made.keyid
    public = keys.load_public(made.public.read_text(), "attest.pub")
    assert dsse.key_id(public) == made.keyid
    with pytest.raises(PipelineError, match="never overwritten"):
        keys.keygen(tmp_path / "k")


def test_no_key_configured_names_both_places(monkeypatch):
    monkeypatch.delenv(keys.KEY_ENV, raising=False)
    from pipeline import config

    with pytest.raises(PipelineError, match="PIPELINE_ATTEST_KEY or \\[attest\\] key"):
        keys.private_key_path(config.load_env("local"))


# -------------------------------------------------------------------------- the policy file


def test_a_policy_file_in_binary_authorizations_own_shape_is_read(tmp_path, trusted):
    import yaml

    path = tmp_path / "policy.yaml"
    path.write_text(
        yaml.safe_dump(policy_doc(keys.public_pem(trusted.public_key()), maxAgeDays=30))
    )
    read = policy.load(path)
    assert read.evaluation_mode == "REQUIRE_ATTESTATION"
    assert read.enforcement_mode == policy.ENFORCED
    assert read.exempt == ("gcr.io/google_containers/*",)
    assert [a.name for a in read.required] == ["projects/taiea/attestors/release-gates"]
    assert read.gates == ("week3", "week4") and read.max_age == timedelta(days=30)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d["defaultAdmissionRule"].update(evaluationMode="SOMETIMES"), "SOMETIMES"),
        (lambda d: d.update(unknownField=1), "unknownField"),
        (lambda d: d["defaultAdmissionRule"].pop("enforcementMode"), "enforcementMode must be"),
        (lambda d: d.pop("attestors"), "which `attestors` does not describe"),
        (
            lambda d: d["attestors"][0]["userOwnedGrafeasNote"]["publicKeys"][0][
                "pkixPublicKey"
            ].update(publicKeyPem="nope"),
            "attestors[0].publicKeys[0]: not a PEM public key",
        ),
        (
            lambda d: d["attestors"][0]["userOwnedGrafeasNote"]["publicKeys"][0].update(
                id="sha256:" + "1" * 64
            ),
            "is not this key's id",
        ),
        (lambda d: d.update(taiea={"maxAgeDays": -1}), "maxAgeDays must be a positive"),
    ],
    ids=[
        "bad-mode",
        "unknown-field",
        "no-enforcement",
        "undescribed-attestor",
        "bad-pem",
        "wrong-key-id",
        "bad-max-age",
    ],  # fmt: skip
)
def test_a_bad_policy_file_is_one_line_naming_the_file(tmp_path, trusted, change, says):
    doc = policy_doc(keys.public_pem(trusted.public_key()))
    change(doc)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PipelineError) as raised:
        policy.load(path)
    assert str(path) in str(raised.value) and says in str(raised.value)
    assert "\n" not in str(raised.value)


# -------------------------------------------------------------------------- the decision


def envelopes_for(case: str, trusted: Ed25519PrivateKey) -> list[bytes]:
    stranger = Ed25519PrivateKey.generate()
    good = [dsse.sign(statement("week3"), trusted), dsse.sign(statement("week4"), trusted)]
    return {
        "both-gates": good,
        "none": [],
        "only-week3": good[:1],
        "other-digest": [dsse.sign(statement("week3", digest=OTHER), trusted), good[1]],
        "unknown-key": [dsse.sign(statement("week3"), stranger), good[1]],
        "fail-verdict": [dsse.sign(statement("week3", "FAIL"), trusted), good[1]],
        "tampered": [tampered(dsse.sign(statement("week3", "FAIL"), trusted)), good[1]],
        "expired": [
            dsse.sign(statement("week3", issuedAt="2026-01-01T00:00:00.000Z"), trusted),
            good[1],
        ],
        "other-predicate": [
            dsse.sign(statement("week3").replace(PREDICATE_TYPE.encode(), b"https://x/y"), trusted),
            good[1],
        ],
    }[case]


CASES = [
    ("both-gates", True, None),
    (
        "none",
        False,
        "no valid attestation by projects/taiea/attestors/release-gates for gate week3",
    ),
    ("only-week3", False, "for gate week4"),
    ("other-digest", False, f"an attestation for another digest ({OTHER})"),
    ("unknown-key", False, "signed by unknown key sha256:"),
    ("fail-verdict", False, "gate week3: verdict FAIL (not PASS)"),
    ("tampered", False, "bad signature"),
    ("expired", False, "expired: issued 2026-01-01T00:00:00.000Z, the policy allows 30 days"),
    ("other-predicate", False, "not a gate verdict"),
]


@pytest.mark.parametrize(("case", "admitted", "says"), CASES, ids=[c[0] for c in CASES])
def test_the_policy_admits_only_a_digest_every_required_gate_attested(
    trusted, case, admitted, says
):
    the_policy = policy.parse(
        policy_doc(keys.public_pem(trusted.public_key()), maxAgeDays=30), "policy.yaml"
    )
    decision = policy.evaluate(the_policy, IMAGE, DIGEST, envelopes_for(case, trusted), NOW)
    assert decision.admitted is admitted, decision.missing
    if says is None:
        assert decision.missing == [] and {a["gate"] for a in decision.accepted} == {
            "week3",
            "week4",
        }
    else:
        assert says in decision.message, decision.message
        assert decision.message.startswith(
            f"Image '{IMAGE}@{DIGEST}' denied by Binary Authorization"
        )


def test_dry_run_admits_and_says_what_it_would_deny(trusted):
    doc = policy_doc(keys.public_pem(trusted.public_key()), mode=policy.DRY_RUN)
    decision = policy.evaluate(policy.parse(doc, "p"), IMAGE, DIGEST, [], NOW)
    assert decision.admitted and not decision.enforced
    assert decision.message.startswith("dry run:") and "would be denied" in decision.message


def test_an_exempt_name_pattern_and_the_evaluation_modes(trusted):
    doc = policy_doc(keys.public_pem(trusted.public_key()))
    doc["admissionWhitelistPatterns"].append({"namePattern": "127.0.0.1:5000/taiea/*"})
    assert policy.evaluate(policy.parse(doc, "p"), IMAGE, DIGEST, [], NOW).admitted
    doc["admissionWhitelistPatterns"].pop()
    doc["defaultAdmissionRule"]["evaluationMode"] = "ALWAYS_DENY"
    denied = policy.evaluate(policy.parse(doc, "p"), IMAGE, DIGEST, [], NOW)
    assert not denied.admitted and "ALWAYS_DENY" in denied.message


def test_the_signing_key_is_the_flag_then_the_variable_then_the_env_file(tmp_path, monkeypatch):
    from pipeline import config

    env_file = tmp_path / "envs" / "signing.toml"
    env_file.parent.mkdir()
    env_file.write_text('extends = "local"\n[attest]\nkey = "keys/attest.key"\n')
    env = config.load_env(env_file)
    monkeypatch.delenv(keys.KEY_ENV, raising=False)
    assert keys.configured(env)
    assert keys.private_key_path(env) == tmp_path / "envs" / "keys" / "attest.key"  # its file's
    monkeypatch.setenv(keys.KEY_ENV, "/from/the/variable.key")
    assert keys.private_key_path(env) == Path("/from/the/variable.key")
    assert keys.private_key_path(env, "/from/the/flag.key") == Path("/from/the/flag.key")
