"""Gate verdicts as signed attestations on the release's image, and their enforcement.

- dsse.py       DSSE envelopes, Ed25519 signatures, key ids
- keys.py       key pairs (attest.keygen) and where the private key comes from
- statement.py  the in-toto Statement v1 of a gate verdict (predicate https://taiea.dev/gate/v1)
- store.py      envelopes as OCI 1.1 referrers of the image (referrers API, else the tag scheme)
- policy.py     a Binary Authorization policy file and its decision about one digest (pure)
- ops.py        what the tasks and phases do: create, list, verify, admission
"""
