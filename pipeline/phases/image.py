"""`image.build`: the release tarball becomes an OCI image, proven to run as Cloud Run would run
it, then pushed.

Stages: validate, extract (as every phase), image (two reproducible layers and the config, in
an image layout beside the receipts: `runs/<run-id>/image/`), unpack (the image's root
filesystem), start (under gVisor with that root and nothing of the host mounted, PORT set),
smoke (the five tests over its port), stop, push (only when everything before passed and a
reference is given). Judged by `[gates.image]`: an image that does not start is not pushed,
and the release's output is in the `error` receipt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import release as releases
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.image import build, elf, layers, oci, registry
from pipeline.phases.base import PhaseResult, PhaseRun, StageFailed, View
from pipeline.phases.frame import run_phase_frame
from pipeline.phases.live import LiveRelease
from pipeline.phases.stages import run_smoke_stage
from pipeline.runtime.base import ImageRoot, LaunchSpec


def recipe_for(env: Env, release: releases.Release, info: releases.ReleaseInfo) -> build.Recipe:
    """What the env puts in an image: TAIEA_ENV, the runtime user, PORT's default."""
    return build.Recipe(
        release,
        env={"TAIEA_ENV": env.start.taiea_env},
        port=env.image.port,
        uid=env.image.uid,
        source=info.path.name,
    )


def image_root(layout: oci.Layout, tag: str, rootfs: Path) -> ImageRoot:
    """How the image at `tag` in `layout` starts, once unpacked into `rootfs`."""
    _, manifest = layout.manifest(tag)
    facts = oci.start_facts(layout.read_json(manifest["config"]["digest"]))
    return ImageRoot(
        rootfs, tuple(facts["argv"]), facts["env"], facts["uid"], facts["gid"], facts["cwd"]
    )


class ImageRuntime:
    """gVisor, starting the unpacked image instead of the extracted release: its own root, its
    entrypoint, its user and environment (HTTP_HOST kept on loopback, PORT the run's)."""

    name = "gvisor"

    def __init__(self, gvisor: Any):
        self.gvisor = gvisor
        self.image: ImageRoot | None = None

    def start(self, spec: LaunchSpec) -> Any:
        assert self.image is not None, "unpack the image before starting it"
        return self.gvisor.start(replace(spec, image=self.image, env={"HTTP_HOST": spec.host}))


class ImagePlay:
    on_interrupt = "the image's sandbox was stopped; nothing was pushed"

    def __init__(
        self,
        run: PhaseRun,
        live: LiveRelease,
        info: releases.ReleaseInfo,
        runtime: ImageRuntime,
        ref: oci.Reference | None,
        edit_closure: Callable[[elf.Closure], elf.Closure] | None,
        host: build.Host,
    ):
        self.run, self.live, self.info, self.runtime = run, live, info, runtime
        self.host = host
        self.ref = ref
        self.edit_closure = edit_closure
        self.layout_dir = run.path.parent / "image"
        self.tag = ref.tag if ref and ref.tag else info.version

    def stages(self) -> None:
        live, run = self.live, self.run
        live.validate(self.info)
        built = self.assemble() if live.extract(self.info) else None
        if built is not None and self.unpack() and live.start():
            assert live.instance is not None
            run_smoke_stage(run, live.instance.url)
        else:
            run.skip("smoke", "the image did not start")
        live.stop()
        if self.ref is None:
            return
        if run.failed_stages or built is None:
            run.skip("push", "the image did not pass: nothing pushed")
            return
        self.push(built)

    def assemble(self) -> build.Built | None:
        assert self.live.release is not None
        built = None
        with self.run.stage("image") as stage:
            began = time.monotonic()
            release = self.live.release
            host = self.host
            left_out = build.never_run(release)
            closure = elf.closure(release.root, host.root, frozenset(left_out))
            if self.edit_closure is not None:
                closure = self.edit_closure(closure)
            recipe = recipe_for(self.run.env, release, self.info)
            built = build.build(recipe, self.layout_dir, tag=self.tag, host=host, closure=closure)
            config = built.config["config"]
            self.run.write(
                "image",
                "image",
                digest=built.digest,
                layout=str(built.layout),
                layers=[
                    {"digest": layer.digest, "size": layer.size, "diff_id": layer.diff_id}
                    for layer in built.layers
                ],
                size_bytes=built.size,
                tarball_bytes=self.info.size_bytes,
                closure=list(built.closure),
                left_out=left_out,
                entrypoint=config["Entrypoint"],
                user=config["User"],
                annotations=built.manifest["annotations"],
                seconds=round(time.monotonic() - began, 4),
            )
            self.run.facts.update(image_digest=built.digest, image_layout=str(built.layout))
            ratio = built.size / max(1, self.info.size_bytes)
            stage.note = (
                f"{built.digest[:19]}…, {built.size / 2**20:.1f} MiB ({ratio:.2f}× the tarball)"
            )
        return built

    def unpack(self) -> bool:
        with self.run.stage("unpack") as stage:
            layout = oci.Layout.open(self.layout_dir)
            _, manifest = layout.manifest(self.tag)
            rootfs = self.live.workdir / "rootfs"
            layers.unpack([layout.blob(d["digest"]) for d in manifest["layers"]], rootfs)
            self.runtime.image = image_root(layout, self.tag, rootfs)
            stage.note = f"{len(manifest['layers'])} layers into its own root filesystem"
        return self.runtime.image is not None

    def push(self, built: build.Built) -> None:
        assert self.ref is not None
        ref = self.ref
        with self.run.stage("push") as stage:
            began = time.monotonic()
            client = registry.Registry(ref.registry, registry.credentials_for(ref.registry))
            try:
                report = client.push(oci.Layout.open(built.layout), self.tag, ref)
            except registry.RegistryError as exc:
                raise StageFailed(f"push to {ref} failed: {exc}") from None
            self.run.write(
                "push",
                "push",
                ref=str(ref),
                digest=report.digest,
                uploaded=len(report.uploaded),
                skipped=len(report.skipped),
                bytes_sent=report.bytes_sent,
                seconds=round(time.monotonic() - began, 4),
            )
            self.run.facts["image_ref"] = report.reference
            stage.note = (
                f"{report.reference} ({len(report.uploaded)} blobs sent, "
                f"{len(report.skipped)} already there)"
            )

    def cleanup(self) -> None:
        self.live.cleanup()


def run_image_build(
    tarball: str | Path,
    env: Env,
    *,
    tag: str | None = None,
    receipts: str | Path | None = None,
    view: View | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    edit_closure: Callable[[elf.Closure], elf.Closure] | None = None,
) -> PhaseResult:
    """Build, prove and (with a reference) push the image of `tarball`. Bad input (not a
    release, a bad reference, no runsc or busybox) is a PipelineError before any receipt."""
    from pipeline.runtime.gvisor import GvisorRuntime, check_host

    tarball = Path(tarball)
    info = releases.inspect(tarball)
    ref = oci.image_ref(tag or env.image.ref, info.name, info.version)
    host = build.Host.find()
    runsc = check_host(env.sandbox.runsc, str(env.path))
    runtime = ImageRuntime(GvisorRuntime(env.sandbox, runsc))
    return run_phase_frame(
        "image",
        tarball,
        env,
        env.gate_spec("image"),
        lambda run, live: ImagePlay(run, live, info, runtime, ref, edit_closure, host),
        info=info,
        runtime=runtime,
        port=0,
        receipts=receipts,
        view=view,
        on_record=on_record,
        begin={"target": str(ref) if ref else ""},
    )


def ship(
    image: str, tarball: Path, info: releases.ReleaseInfo, env: Env, note: Callable[[str], None]
) -> tuple[str, dict[str, Any]]:
    """The registry image week 5 deploys, by digest: the one `image` names when its annotations
    name this very tarball (built earlier by image.build, which proved it under gVisor), else
    this tarball's image built now and pushed under that name; week 5's tagged no-traffic
    revision and its smoke tests are then its proof, on the platform itself. A tag holding
    another release's image is refused: tags are not overwritten under a running rollout."""
    ref = oci.Reference.parse(image)
    client = registry.Registry(ref.registry, registry.credentials_for(ref.registry))
    try:
        digest, manifest, _, _ = client.resolve(ref)
    except registry.RegistryError as exc:
        if not str(exc).startswith("Image '"):
            raise
        digest, manifest = _build_and_push(tarball, info, env, ref, client, note), None
        built = True
    else:
        built = False
    notes = (manifest or {}).get("annotations") or {}
    if manifest is not None and notes.get(build.RELEASE_SHA256) != info.sha256:
        held = notes.get(build.RELEASE_SHA256) or "no TAIEA release annotation"
        raise PipelineError(
            f"image {ref} holds another release (tarball sha256 {held}), not {info.path.name} "
            f"(sha256 {info.sha256}): push this release under its own tag "
            "(invoke image.build --tag …) and name it in [cloudrun] image"
        )
    if not built:
        note(f"image {ref} holds this release: deploying {ref.pinned(digest)}")
    return ref.pinned(digest), {"ref": str(ref), "digest": digest, "built": built}


def _build_and_push(
    tarball: Path,
    info: releases.ReleaseInfo,
    env: Env,
    ref: oci.Reference,
    client: registry.Registry,
    note: Callable[[str], None],
) -> str:
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="taiea-image-"))
    try:
        extracted = releases.extract(
            tarball,
            work / "release",
            max_files=env.release.max_files,
            max_bytes=env.release.max_bytes,
        )
        recipe = recipe_for(env, extracted, info)
        tag = ref.tag or info.version
        built = build.build(recipe, work / "layout", tag=tag)
        report = client.push(oci.Layout.open(built.layout), tag, ref)
        note(f"built and pushed {report.reference} ({report.bytes_sent / 2**20:.1f} MiB sent)")
        return built.digest
    finally:
        shutil.rmtree(work, ignore_errors=True)
