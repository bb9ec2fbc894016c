"""Bench: attesting a gate verdict on an image and verifying it against a policy — against
sha256sum and openssl, in one run.

    .venv/bin/python bench/bench_attest.py [--rounds 5]

One real week 3 run of the reference release (its receipts), its image pushed to a local
registry (Debian's docker-registry on 127.0.0.1), a fresh Ed25519 key and an enforcing policy.
Each round:
- attest: `attest.ops.create` — judge the gate from the receipts, the in-toto statement, the
  DSSE signature — timed without registry I/O (`Created.seconds`);
- verify: `attest.ops.verify` — read the policy (its Binary Authorization types included) and
  decide over the image's envelopes — timed without registry I/O (`Checked.seconds`);
- anchors: `sha256sum` of the receipts file (the least a judge must do: read it) plus
  `openssl pkeyutl -sign -rawin` with an Ed25519 key over the statement (the signature alone).

Printed: medians, the ratio attest / (sha256sum + openssl), and the bars: attest and verify
each under 200 ms (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import config, reference, release  # noqa: E402
from pipeline.attest import keys, ops  # noqa: E402
from pipeline.image import build, oci, registry, server  # noqa: E402

BAR_S = 0.200


def timed(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from pipeline.phases.week3 import run_week3

    work = Path(tempfile.mkdtemp(prefix="bench-attest-"))
    running = server.start(work / "registry", 0)
    try:
        tarball = reference.build(work / "build")
        local = config.load_env("local")
        week3 = run_week3(tarball, local, duration=5, receipts=work / "week3.jsonl")
        assert week3.verdict.passed, week3.verdict.summary()
        image = f"{running.address}/taiea/tai_autonomics:1.0.0"
        ref = oci.Reference.parse(image)
        built = build.build(
            build.Recipe(release.extract(tarball, work / "rel")), work / "layout", tag="1.0.0"
        )
        registry.Registry(ref.registry, None).push(oci.Layout.open(built.layout), "1.0.0", ref)
        key = keys.keygen(work / "key")
        policy_path = work / "policy.json"
        policy_path.write_text(
            '{"defaultAdmissionRule": {"evaluationMode": "REQUIRE_ATTESTATION", '
            '"enforcementMode": "ENFORCED_BLOCK_AND_AUDIT_LOG", "requireAttestationsBy": '
            '["projects/p/attestors/a"]}, "attestors": [{"name": "projects/p/attestors/a", '
            '"userOwnedGrafeasNote": {"publicKeys": [{"pkixPublicKey": {"publicKeyPem": '
            + __import__("json").dumps(key.public.read_text())
            + '}}]}}], "taiea": {"requiredGates": ["week3"]}}'
        )
        statement = work / "statement.json"
        statement.write_bytes(b"x" * 4096)
        lines = sum(1 for _ in open(week3.receipts, "rb"))
        print(f"receipts: {week3.receipts.stat().st_size / 1024:.0f} KiB, {lines} lines")
        rows = []
        for _ in range(args.rounds):
            made = ops.create(gate="week3", receipts_path=week3.receipts, image=image,
                              spec=local.gate_spec("week3"), env_name="local",
                              key_path=key.private)  # fmt: skip
            checked = ops.verify(image, policy_path)
            assert checked.passed, checked.decision.missing
            anchor = timed(["sha256sum", str(week3.receipts)]) + timed(
                [
                    "openssl",
                    "pkeyutl",
                    "-sign",
                    "-inkey",
                    str(key.private),
                    "-rawin",
                    "-in",
                    str(statement),
                ]  # fmt: skip
            )
            rows.append((made.seconds, checked.seconds, anchor))
            print(f"attest {made.seconds * 1000:7.1f} ms   verify {checked.seconds * 1000:7.1f} ms"
                  f"   anchor sha256sum+openssl {anchor * 1000:6.1f} ms")  # fmt: skip
        attest = statistics.median(r[0] for r in rows)
        verify = statistics.median(r[1] for r in rows)
        anchor = statistics.median(r[2] for r in rows)
        print(f"median: attest {attest * 1000:.1f} ms, verify {verify * 1000:.1f} ms, "
              f"anchor {anchor * 1000:.1f} ms; attest / anchor = {attest / anchor:.2f}×")  # fmt: skip
        ok = attest < BAR_S and verify < BAR_S
        print(f"bar: each under {BAR_S * 1000:.0f} ms: {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        running.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
