"""Bench: building and pushing the release's OCI image, and its size — against skopeo, in one run.

    .venv/bin/python bench/bench_image.py [--rounds 3]

The reference release's tarball, one local registry (Debian's docker-registry on 127.0.0.1).
Each round, into a fresh registry (skopeo remembers blobs it pushed and would mount them from
another repository of the same registry instead of sending them):

- build: the image from the extracted release (`pipeline.image.build`: closure, two layers,
  config, layout), then our push (`pipeline.image.registry`) of that layout;
- anchor: `skopeo copy oci:LAYOUT:TAG docker://REGISTRY/REPO:TAG` of the same layout into the
  same registry (skopeo: the containers project's copier; a push only, no build).

Printed per round and as medians: build s, our push s, skopeo copy s, and the ratios
push / skopeo and (build + push) / skopeo; then the image's size against the tarball's. Bar:
the image is at most 1.5× the tarball's compressed size (exit 1 otherwise).
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

from pipeline import reference, release  # noqa: E402
from pipeline.image import build, oci, registry, server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        print("skopeo not found: apt-get install -y skopeo")
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-image-"))
    running = None
    try:
        tarball = reference.build(work / "build")
        tarball_bytes = tarball.stat().st_size
        rows = []
        size = 0
        for n in range(args.rounds):
            if running is not None:
                running.stop()
            running = server.start(work / f"registry-{n}", 0)
            extracted = release.extract(tarball, work / f"release-{n}")
            began = time.perf_counter()
            built = build.build(
                build.Recipe(extracted, {"TAIEA_ENV": "prod"}), work / f"layout-{n}", tag="1.0.0"
            )
            build_s = time.perf_counter() - began
            size = built.size
            ours = oci.Reference.parse(f"{running.address}/bench/ours-{n}:1.0.0")
            began = time.perf_counter()
            registry.Registry(ours.registry, None).push(
                oci.Layout.open(built.layout), "1.0.0", ours
            )
            push_s = time.perf_counter() - began
            began = time.perf_counter()
            subprocess.run(
                [
                    skopeo,
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    f"oci:{built.layout}:1.0.0",
                    f"docker://{running.address}/bench/skopeo-{n}:1.0.0",
                ],
                check=True,
                timeout=300,
            )
            skopeo_s = time.perf_counter() - began
            rows.append((build_s, push_s, skopeo_s))
            print(
                f"round {n + 1}: build {build_s:.3f} s, push {push_s:.3f} s, skopeo copy "
                f"{skopeo_s:.3f} s → push/skopeo {push_s / skopeo_s:.2f}×, "
                f"(build+push)/skopeo {(build_s + push_s) / skopeo_s:.2f}×"
            )
        build_s, push_s, skopeo_s = (statistics.median(col) for col in zip(*rows, strict=True))
        print(
            f"median: build {build_s:.3f} s, push {push_s:.3f} s, skopeo copy {skopeo_s:.3f} s "
            f"(anchor) → push/skopeo {push_s / skopeo_s:.2f}×, "
            f"(build+push)/skopeo {(build_s + push_s) / skopeo_s:.2f}×"
        )
        ratio = size / tarball_bytes
        print(
            f"image {size / 2**20:.2f} MiB vs tarball {tarball_bytes / 2**20:.2f} MiB: "
            f"{ratio:.2f}× (bar ≤ 1.5×)"
        )
        return 0 if ratio <= 1.5 else 1
    finally:
        if running is not None:
            running.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
