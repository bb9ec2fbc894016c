"""`invoke attest.*`: gate verdicts as signed in-toto attestations stored next to the image, and
their check against a Binary Authorization policy."""

from invoke import Collection, task

from pipeline.tasks._cli import exit_codes, human_console, positional, required


@task(help={"out": "directory for attest.key (private, 0600) and attest.pub; never overwritten"})
def keygen(c, out=None):
    """Make an Ed25519 signing key pair; prints its key id (put attest.pub in the policy)."""
    with exit_codes():
        out = required("--out", out, "attest.keygen")
        from pathlib import Path

        from pipeline.attest import keys

        made = keys.keygen(Path(out))
        print(f"private key {made.private} (keep it secret: PIPELINE_ATTEST_KEY or [attest] key)")
        print(f"public key  {made.public}")
        print(f"key id      {made.keyid}")


@task(
    help={
        "gate": "the gate to attest: week2..week5 (or gate1..gate4)",
        "receipts": "the run's receipts.jsonl (sealed): the verdict is judged from it, now",
        "image": "REGISTRY/REPO:TAG or @DIGEST of the release's image (the digest is attested)",
        "env": "env name or path: its [gates.*] thresholds and [attest] key; default local",
        "key": "the Ed25519 private key file (default PIPELINE_ATTEST_KEY or [attest] key)",
        "json": "print one JSON object for scripts",
    },
    aliases=("sign",),
    positional=[],
)
def create(c, gate, receipts, image, env="local", key=None, json=False):
    """Judge a gate from its receipts, sign the verdict (DSSE, in-toto) and store it next to the
    image as an OCI referrer; exit 99 when the verdict attested is FAIL."""
    with exit_codes():
        gate = required("--gate", gate, "attest.create")
        receipts = required("--receipts", receipts, "attest.create")
        image = required("--image", image, "attest.create")
        from pipeline import config
        from pipeline import receipts as receipt_log
        from pipeline.attest import keys, ops
        from pipeline.errors import GateFailed

        environment = config.load_env(env)
        key_path = keys.private_key_path(environment, key)
        done = ops.create(
            gate=gate,
            receipts_path=receipt_log.receipts_file(receipts),
            image=image,
            spec=environment.gate_spec(gate),
            env_name=environment.name,
            key_path=key_path,
        )
        if json:
            import dataclasses

            import orjson

            print(orjson.dumps(dataclasses.asdict(done)).decode())
        else:
            verdict = "PASS" if done.passed else "FAIL"
            print(f"attested {done.gate} {verdict} on {done.image}")
            print(f"signed by {done.keyid}; stored as {done.artifact}")
        if not done.passed:
            raise GateFailed(f"{done.gate}: the attested verdict is FAIL")


@task(
    help={"image": "REGISTRY/REPO:TAG or @DIGEST", "json": "print one JSON object for scripts"},
    aliases=("ls",),
)
def list_(c, image, json=False):
    """The attestations stored next to an image: gate, verdict, signer key id, run, when."""
    with exit_codes():
        image = positional(image, "attest.list")
        from pipeline import views
        from pipeline.attest import ops

        digest, rows = ops.listing(image)
        if json:
            import orjson

            print(orjson.dumps({"image": image, "digest": digest, "attestations": rows}).decode())
            return
        views.render_attestations(human_console(False), image, digest, rows)


@task(
    help={
        "image": "REGISTRY/REPO:TAG or @DIGEST",
        "policy": "a Binary Authorization policy file (YAML or JSON) with its attestors' keys",
        "receipts": "a run's receipts.jsonl to re-judge against its attestation (repeatable)",
        "env": "env name or path whose [gates.*] re-judge the receipts; default local",
        "json": "print one JSON object for scripts",
    },
    aliases=("check",),
    iterable=["receipts"],
)
def verify(c, image, policy=None, receipts=None, env="local", json=False):
    """Would the policy admit this image? Exit 0 admitted, 99 denied (dry run: admitted, the
    would-be denial printed), 2 bad input."""
    with exit_codes():
        image = positional(image, "attest.verify")
        policy = required("--policy", policy, "attest.verify")
        from pathlib import Path

        from pipeline import config, views
        from pipeline import receipts as receipt_log
        from pipeline.attest import ops
        from pipeline.errors import GateFailed

        files = [receipt_log.receipts_file(r) for r in receipts or []]
        specs = {}
        if files:
            environment = config.load_env(env)
            specs = {g: environment.gate_spec(g) for g in environment.gates}
        checked = ops.verify(image, Path(policy), receipts_files=files, specs=specs)
        if json:
            import orjson

            d = checked.decision
            print(orjson.dumps({
                "image": d.image, "digest": d.digest, "admitted": d.admitted, "enforced": d.enforced,
                "missing": d.missing, "accepted": d.accepted, "rejudged": checked.rejudged,
            }).decode())  # fmt: skip
        else:
            views.render_admission(human_console(False), checked)
        if not checked.passed and (checked.decision.enforced or checked.rejudged):
            raise GateFailed(
                checked.decision.message if checked.decision.missing else checked.rejudged[0]
            )


ns = Collection("attest")
ns.add_task(keygen)
ns.add_task(create)
ns.add_task(list_, name="list")
ns.add_task(verify)
