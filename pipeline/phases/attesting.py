"""Weeks 3 and 4 attest a passing verdict on the release's image by themselves, when the env
says where that image is (`[image] ref`, as image.build pushes it) and a signing key is set
(PIPELINE_ATTEST_KEY or `[attest] key`). A missing image or a refusal is a note, not a failure:
the gate passed; `invoke attest.create` can attest it later from the same receipts."""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline import release as releases
from pipeline.attest import keys
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.image.oci import image_ref
from pipeline.phases.base import PhaseResult, View


def attest_passed(
    result: PhaseResult, env: Env, info: releases.ReleaseInfo, view: View | None
) -> dict[str, Any] | None:
    if not result.verdict.passed:
        return None
    if not keys.configured(env):
        return None
    note = view.note if view is not None else (lambda _: None)
    ref = image_ref(env.image.ref, info.name, info.version)
    if ref is None:
        note("a signing key is set but [image] ref names no image: nothing attested")
        return None
    from pipeline.attest import ops

    try:
        done = ops.create(
            gate=result.verdict.gate,
            receipts_path=result.receipts,
            image=str(ref),
            spec=env.gate_spec(env.phase(result.phase).gate or result.phase),
            env_name=env.name,
            key_path=keys.private_key_path(env),
        )
    except PipelineError as exc:
        note(f"not attested: {exc}")
        return {"error": str(exc)}
    note(f"attested {done.gate} PASS on {done.image} (key {done.keyid[:19]}…)")
    return dataclasses.asdict(done)
