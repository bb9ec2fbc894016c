"""pipeline.release: layout detection, inspect, and the refusals of the safe extraction."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fixtures_tarballs import FIXED_MTIME, Entry, FakeTarball, otp_entries, write_tarball

from pipeline import release
from pipeline.errors import PipelineError

NAME, VSN, ERTS = "tai_autonomics", "1.0.0", "13.1.5"


# ---------------------------------------------------------------------------------------------
# helpers


def snapshot(root: Path) -> dict[str, tuple[str, int, int, bytes | str]]:
    """Everything under root (without following symlinks): kind, mode, size and content."""
    out: dict[str, tuple[str, int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", st.st_mode, 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, 0, b"")
            else:
                out[rel] = ("file", st.st_mode, st.st_size, p.read_bytes())
    return out


@dataclass
class Work:
    root: Path  # tmp_path: everything the test may touch
    sentinel: Path  # a directory beside dest that hostile members aim at
    dest: Path

    def tree(self) -> dict[str, tuple[str, int, int, bytes | str]]:
        return snapshot(self.root)


@pytest.fixture
def work(tmp_path: Path) -> Work:
    sentinel = tmp_path / "work" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "keep.txt").write_text("keep\n")
    return Work(root=tmp_path, sentinel=sentinel, dest=tmp_path / "work" / "dest")


def gnu_tar_listing(tarball: Path) -> list[tuple[str, int, str]]:
    """(type char, size, name) of each member, as GNU tar lists them (independent of tarfile)."""
    tar = shutil.which("tar")
    assert tar, "GNU tar is needed to check the archive independently"
    out = subprocess.run(
        [tar, "-tvf", str(tarball)], check=True, capture_output=True, text=True
    ).stdout
    rows = []
    for line in out.splitlines():
        perms, _owner, size, _date, _time, name = line.split(maxsplit=5)
        rows.append((perms[0], int(size), name.split(" -> ")[0]))
    return rows


def sha256sum(path: Path) -> str:
    tool = shutil.which("sha256sum")
    assert tool, "coreutils sha256sum is needed to check the hash independently"
    out = subprocess.run([tool, str(path)], check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def assert_one_line_naming(exc: PipelineError, *fragments: str) -> None:
    msg = str(exc)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


# ---------------------------------------------------------------------------------------------
# both layouts, checked against GNU tar and sha256sum


@pytest.mark.parametrize("compress", [True, False], ids=["tar.gz", "plain-tar"])
@pytest.mark.parametrize("layout", ["rebar3", "wrapped"])
def test_inspect_detects_layout(fake_otp_tarball: FakeTarball, layout: str, compress: bool) -> None:
    tarball = fake_otp_tarball(layout, compress=compress)
    listing = gnu_tar_listing(tarball)
    regular = [(size, name) for kind, size, name in listing if kind == "-"]

    info = release.inspect(tarball)

    assert info.name == NAME
    assert info.version == VSN
    assert info.erts_version == ERTS
    assert info.layout == layout
    assert info.prefix == ("" if layout == "rebar3" else f"{NAME}/")
    assert info.file_count == len(regular) == 13
    assert info.uncompressed_bytes == sum(size for size, _ in regular)
    assert info.size_bytes == tarball.stat().st_size
    assert info.sha256 == sha256sum(tarball)
    assert info.path == tarball
    receipt = info.as_receipt()
    assert json.loads(json.dumps(receipt)) == receipt
    assert receipt["path"] == str(tarball)
    assert receipt["sha256"] == info.sha256 and receipt["layout"] == layout


@pytest.mark.parametrize("layout", ["rebar3", "wrapped"])
def test_extract_both_layouts(fake_otp_tarball: FakeTarball, work: Work, layout: str) -> None:
    tarball = fake_otp_tarball(layout)
    rel = release.extract(tarball, work.dest)

    assert rel.info == release.inspect(tarball)
    expected_root = work.dest if layout == "rebar3" else work.dest / NAME
    assert rel.root == expected_root
    assert rel.start_script == expected_root / "bin" / NAME
    assert rel.start_script.read_bytes().startswith(b"#!/bin/sh")
    # the tree on disk is the tree in the archive, byte for byte
    for e in otp_entries():
        on_disk = expected_root / e.name
        if e.kind == "file":
            assert on_disk.read_bytes() == e.data, e.name
        else:
            assert on_disk.is_dir(), e.name
    # nothing but dest appeared in its parent (no temp dir left)
    assert sorted(os.listdir(work.dest.parent)) == ["dest", "sentinel"]
    assert sorted(os.listdir(work.sentinel)) == ["keep.txt"]


def test_extract_keeps_exec_bits_and_mtime(fake_otp_tarball: FakeTarball, work: Work) -> None:
    shared = Entry("lib/group_writable.sh", data=b"#!/bin/sh\n", mode=0o777)
    rel = release.extract(fake_otp_tarball(extra_members=[shared]), work.dest)
    assert (rel.root / shared.name).stat().st_mode & 0o777 == 0o755  # g+w, o+w stripped
    script = rel.start_script.stat()
    assert script.st_mode & stat.S_IXUSR, oct(script.st_mode)
    assert os.access(rel.start_script, os.X_OK)
    beam = (rel.root / f"erts-{ERTS}" / "bin" / "beam.smp").stat()
    assert beam.st_mode & 0o777 == 0o755
    config = (rel.root / "releases" / VSN / "sys.config").stat()
    assert config.st_mode & 0o777 == 0o644, oct(config.st_mode)
    assert script.st_mtime == FIXED_MTIME
    assert config.st_mtime == FIXED_MTIME
    # the start script really runs
    out = subprocess.run(
        [str(rel.start_script), "foreground"], check=True, capture_output=True, text=True
    )
    assert out.stdout == f"{NAME} foreground\n"


def gnu_tar_release(tmp_path: Path, layout: str) -> Path:
    """A release tree on disk packed by GNU tar (names like ./bin/x, directory entries)."""
    tree = tmp_path / "tree" / NAME
    for e in otp_entries(with_dirs=False):
        p = tree / e.name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(e.data)
        p.chmod(e.mode if e.mode is not None else 0o644)
    out = tmp_path / "tarballs" / f"gnu-{layout}.tar.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    tar = shutil.which("tar")
    assert tar
    if layout == "rebar3":
        cmd = [tar, "-czf", str(out), "-C", str(tree), "."]
    else:
        cmd = [tar, "-czf", str(out), "-C", str(tree.parent), NAME]
    subprocess.run(cmd, check=True)
    shutil.rmtree(tmp_path / "tree")
    return out


@pytest.mark.parametrize("layout", ["rebar3", "wrapped"])
def test_gnu_tar_made_tarballs(tmp_path: Path, work: Work, layout: str) -> None:
    tarball = gnu_tar_release(tmp_path, layout)
    info = release.inspect(tarball)
    assert (info.name, info.version, info.erts_version, info.layout) == (NAME, VSN, ERTS, layout)
    assert info.file_count == sum(1 for k, _, _ in gnu_tar_listing(tarball) if k == "-")
    rel = release.extract(tarball, work.dest)
    assert os.access(rel.start_script, os.X_OK)
    assert (rel.root / "releases" / "start_erl.data").read_text() == f"{ERTS} {VSN}\n"


def test_inspect_writes_nothing(fake_otp_tarball: FakeTarball, work: Work) -> None:
    tarball = fake_otp_tarball("wrapped")
    before = work.tree()
    release.inspect(tarball)
    assert work.tree() == before


# ---------------------------------------------------------------------------------------------
# version, erts and name selection


def _rel_files(name: str, vsn: str, *, boot: bool = True, rel: bool = True) -> list[Entry]:
    out = []
    if boot:
        out.append(Entry(f"releases/{vsn}/start.boot", data=b"boot"))
    if rel:
        out.append(Entry(f"releases/{vsn}/{name}.rel", data=b"rel"))
    return out


@dataclass
class Pick:
    id: str
    extra: list[Entry]
    version: str = VSN
    erts: str = ERTS
    name: str = NAME
    start_erl: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)


PICKS = [
    Pick(
        "start_erl.data-picks-older-release",
        _rel_files(NAME, "1.10.0"),
        start_erl=True,
    ),
    Pick(
        "highest-version-numeric",
        _rel_files(NAME, "1.10.0") + _rel_files(NAME, "1.9.0"),
        version="1.10.0",
        start_erl=False,
    ),
    Pick(
        "version-dir-with-only-rel",
        _rel_files(NAME, "2.0.0", boot=False),
        version="2.0.0",
        start_erl=False,
    ),
    Pick(
        "dir-without-boot-or-rel-ignored",
        [Entry("releases/9.9.9/sys.config", data=b"[].")],
        start_erl=False,
    ),
    Pick(
        "second-erts-highest",
        [Entry("erts-13.1.10/bin/erlexec", data=b"x")],
        erts="13.1.10",
        start_erl=False,
    ),
    Pick("second-erts-start_erl-wins", [Entry("erts-13.1.10/bin/erlexec", data=b"x")]),
    Pick(
        "helpers-ignored",
        [
            Entry("bin/nodetool", data=b"x", mode=0o755),
            Entry("bin/install_upgrade.escript", data=b"x", mode=0o755),
            Entry(f"bin/{NAME}.cmd", data=b"x"),
            Entry(f"bin/{NAME}.ps1", data=b"x"),
            Entry("bin/no_dot_erlang.boot", data=b"x"),
        ],
    ),
    Pick("rel-file-decides-among-scripts", [Entry("bin/helper_tool", data=b"x", mode=0o755)]),
]


@pytest.mark.parametrize("pick", PICKS, ids=[p.id for p in PICKS])
@pytest.mark.parametrize("layout", ["rebar3", "wrapped"])
def test_selection(fake_otp_tarball: FakeTarball, pick: Pick, layout: str) -> None:
    prefix = "" if layout == "rebar3" else f"{NAME}/"
    extra = [Entry(prefix + e.name, e.kind, e.data, e.mode, e.linkname) for e in pick.extra]
    info = release.inspect(fake_otp_tarball(layout, extra_members=extra, start_erl=pick.start_erl))
    assert (info.name, info.version, info.erts_version) == (pick.name, pick.version, pick.erts)


def test_name_from_bin_without_rel(fake_otp_tarball: FakeTarball) -> None:
    """No <name>.rel anywhere: the single non-helper entry of bin/ (besides <name>-<vsn>)."""
    tarball = fake_otp_tarball(
        omit=[f"releases/{VSN}/{NAME}.rel"],
        extra_members=[Entry("bin/nodetool", data=b"x", mode=0o755)],
    )
    assert release.inspect(tarball).name == NAME


def test_other_release_name(fake_otp_tarball: FakeTarball, work: Work) -> None:
    tarball = fake_otp_tarball("wrapped", name="other_app", version="0.3.1-rc.2", erts="14.2.5")
    rel = release.extract(tarball, work.dest)
    assert (rel.info.name, rel.info.version, rel.info.erts_version) == (
        "other_app",
        "0.3.1-rc.2",
        "14.2.5",
    )
    assert rel.info.prefix == "other_app/"
    assert rel.start_script == work.dest / "other_app" / "bin" / "other_app"


# ---------------------------------------------------------------------------------------------
# refusals of hostile members: an error naming the member, nothing written anywhere


@dataclass
class Hostile:
    id: str
    members: Callable[[Path], list[Entry]]  # sentinel dir -> extra members
    member: str | Callable[[Path], str]  # the member the error must name
    reason: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    escapes_naively: bool = False  # a plain extractall(filter="fully_trusted") writes outside
    in_release: bool = False  # member names are relative to the release root (prefix them)

    def entries(self, sentinel: Path, layout: str) -> list[Entry]:
        prefix = f"{NAME}/" if self.in_release and layout == "wrapped" else ""
        return [
            Entry(prefix + e.name, e.kind, e.data, e.mode, e.linkname)
            for e in self.members(sentinel)
        ]


HOSTILE = [
    Hostile(
        "absolute-path",
        lambda s: [Entry(f"{s}/pwned", data=b"pwned")],
        lambda s: f"{s}/pwned",
        "absolute path",
        escapes_naively=True,
    ),
    Hostile(
        "dotdot-escape",
        lambda s: [Entry("../sentinel/pwned", data=b"pwned")],
        "../sentinel/pwned",
        "'..'",
        escapes_naively=True,
    ),
    Hostile(
        "dotdot-inside-path",
        lambda s: [Entry("lib/../../sentinel/pwned", data=b"pwned")],
        "lib/../../sentinel/pwned",
        "'..'",
        escapes_naively=True,
    ),
    Hostile(
        "symlink-absolute-target",
        lambda s: [
            Entry("lib/evil", "symlink", linkname=str(s)),
            Entry("lib/evil/pwned", data=b"pwned"),
        ],
        "lib/evil",
        "resolves outside the destination",
        escapes_naively=True,
    ),
    Hostile(
        "symlink-dotdot-target",
        lambda s: [
            Entry("lib/evil", "symlink", linkname="../../sentinel"),
            Entry("lib/evil/pwned", data=b"pwned"),
        ],
        "lib/evil",
        "resolves outside the destination",
        escapes_naively=True,
    ),
    Hostile(
        "symlink-chain",  # each link looks inside on its own; together they climb out
        lambda s: [
            Entry("lib/up", "symlink", linkname=".."),
            Entry("escape", "symlink", linkname="lib/up/.."),
            Entry("escape/sentinel/pwned", data=b"pwned"),
        ],
        "escape",
        "resolves outside the destination",
        escapes_naively=True,
    ),
    Hostile(
        "symlink-multi-hop",
        lambda s: [
            Entry("a", "symlink", linkname="b"),
            Entry("b", "symlink", linkname="c"),
            Entry("c", "symlink", linkname="../sentinel"),
        ],
        "'a'",
        "resolves outside the destination",
    ),
    Hostile(
        "symlink-loop",
        lambda s: [Entry("a", "symlink", linkname="b"), Entry("b", "symlink", linkname="a")],
        "'a'",
        "symlink loop",
    ),
    Hostile(
        "write-through-inside-symlink",
        lambda s: [
            Entry("lib/alias", "symlink", linkname="."),
            Entry("lib/alias/x", data=b"x"),
        ],
        "lib/alias/x",
        "goes through symlink",
    ),
    Hostile(
        "hardlink-absolute",
        lambda s: [Entry("lib/h", "hardlink", linkname=f"{s}/keep.txt")],
        "lib/h",
        "hard link to absolute path",
    ),
    Hostile(
        "hardlink-dotdot",
        lambda s: [Entry("lib/h", "hardlink", linkname="../sentinel/keep.txt")],
        "lib/h",
        "outside the archive",
    ),
    Hostile(
        "hardlink-non-member",
        lambda s: [Entry("lib/h", "hardlink", linkname="lib/not-there")],
        "lib/h",
        "not an earlier regular file",
    ),
    Hostile(
        "hardlink-to-directory",
        lambda s: [Entry("lib/h", "hardlink", linkname="lib")],
        "lib/h",
        "not an earlier regular file",
    ),
    Hostile("char-device", lambda s: [Entry("lib/null", "chardev")], "lib/null", "device file"),
    Hostile("block-device", lambda s: [Entry("lib/sda", "blockdev")], "lib/sda", "device file"),
    Hostile("fifo", lambda s: [Entry("lib/pipe", "fifo")], "lib/pipe", "FIFO"),
    Hostile(
        "setuid",
        lambda s: [Entry("bin/su", data=b"x", mode=0o4755)],
        "bin/su",
        "setuid",
    ),
    Hostile(
        "setgid",
        lambda s: [Entry("bin/sg", data=b"x", mode=0o2755)],
        "bin/sg",
        "setgid",
    ),
    Hostile(
        "duplicate-member",
        lambda s: [Entry(f"releases/{VSN}/sys.config", data=b"evil")],
        f"releases/{VSN}/sys.config",
        "duplicate member",
        in_release=True,
    ),
    Hostile(
        "file-then-dir-under-it",
        lambda s: [Entry("lib/plain", data=b"x"), Entry("lib/plain/inner", data=b"x")],
        "lib/plain/inner",
        "not a directory",
    ),
    Hostile(
        "too-many-files",
        lambda s: [],
        "lib/kernel-8.5.3",  # the sixth member, in both layouts
        "more than 5 entries",
        kwargs={"max_files": 5},
    ),
    Hostile(
        "too-many-bytes",
        lambda s: [Entry("lib/big.bin", data=b"\0" * 2048)],
        "lib/big.bin",
        "more than 3000 bytes uncompressed",
        kwargs={"max_bytes": 3000},
    ),
]


def _member(h: Hostile, sentinel: Path) -> str:
    return h.member(sentinel) if callable(h.member) else h.member


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.id for h in HOSTILE])
@pytest.mark.parametrize("layout", ["rebar3", "wrapped"])
def test_extract_refuses(
    fake_otp_tarball: FakeTarball, work: Work, hostile: Hostile, layout: str
) -> None:
    tarball = fake_otp_tarball(layout, extra_members=hostile.entries(work.sentinel, layout))
    before = work.tree()

    with pytest.raises(PipelineError) as caught:
        release.extract(tarball, work.dest, **hostile.kwargs)

    assert_one_line_naming(
        caught.value, str(tarball), _member(hostile, work.sentinel), hostile.reason
    )
    assert work.tree() == before  # nothing written anywhere: no dest, no temp dir, sentinel intact
    assert not os.path.lexists(work.dest)


@pytest.mark.parametrize(
    "hostile", [h for h in HOSTILE if not h.kwargs], ids=[h.id for h in HOSTILE if not h.kwargs]
)
def test_inspect_refuses_too(fake_otp_tarball: FakeTarball, work: Work, hostile: Hostile) -> None:
    tarball = fake_otp_tarball(extra_members=hostile.members(work.sentinel))
    with pytest.raises(PipelineError) as caught:
        release.inspect(tarball)
    assert_one_line_naming(
        caught.value, str(tarball), _member(hostile, work.sentinel), hostile.reason
    )


@pytest.mark.parametrize(
    "hostile",
    [h for h in HOSTILE if h.escapes_naively],
    ids=[h.id for h in HOSTILE if h.escapes_naively],
)
def test_hostile_tarballs_really_escape_a_naive_extraction(
    fake_otp_tarball: FakeTarball, work: Work, hostile: Hostile
) -> None:
    """The refusal tests above are meaningful: without the checks, these write into sentinel/."""
    tarball = fake_otp_tarball(extra_members=hostile.members(work.sentinel))
    naive = work.root / "work" / "naive"
    with tarfile.open(tarball) as tar:
        tar.extractall(naive, filter="fully_trusted")
    assert (work.sentinel / "pwned").exists()


@pytest.mark.parametrize(
    "hostile",
    [h for h in HOSTILE if h.escapes_naively],
    ids=[h.id for h in HOSTILE if h.escapes_naively],
)
def test_data_filter_is_a_second_line_of_defence(
    fake_otp_tarball: FakeTarball, work: Work, hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the member checks switched off, extraction still refuses and leaves nothing."""
    monkeypatch.setattr(release, "_check_members", lambda tarball, members: None)
    tarball = fake_otp_tarball(extra_members=hostile.members(work.sentinel))
    before = work.tree()
    with pytest.raises(PipelineError) as caught:
        release.extract(tarball, work.dest)
    assert_one_line_naming(caught.value, str(tarball), _member(hostile, work.sentinel))
    assert work.tree() == before


# ---------------------------------------------------------------------------------------------
# files that are not release tarballs


def _write(data: bytes) -> Callable[[Path, FakeTarball], Path]:
    def make(dir: Path, fake: FakeTarball) -> Path:
        p = dir / "input.tar.gz"
        p.write_bytes(data)
        return p

    return make


def _truncated(keep: Callable[[int], int]) -> Callable[[Path, FakeTarball], Path]:
    def make(dir: Path, fake: FakeTarball) -> Path:
        data = fake(payload_files=4, payload_size=4096).read_bytes()
        p = dir / "truncated.tar.gz"
        p.write_bytes(data[: keep(len(data))])
        return p

    return make


def _fake(**kwargs: Any) -> Callable[[Path, FakeTarball], Path]:
    return lambda dir, fake: fake(**kwargs)


def _directory(dir: Path, fake: FakeTarball) -> Path:
    p = dir / "adir.tar.gz"
    p.mkdir()
    return p


def _plain_tar_of_text(dir: Path, fake: FakeTarball) -> Path:
    return write_tarball(dir / "notes.tar.gz", [Entry("README", data=b"hello\n")])


BAD_INPUTS: list[tuple[str, Callable[[Path, FakeTarball], Path], str]] = [
    ("missing-file", lambda dir, fake: dir / "nope.tar.gz", "no such file"),
    ("a-directory", _directory, "is a directory"),
    ("empty-file", _write(b""), "empty file"),
    ("not-a-tarball", _write(b"just some text, not an archive\n" * 40), "not a valid tar"),
    ("gzip-of-non-tar", _write(gzip.compress(b"hello world\n" * 100)), "not a valid gzip"),
    ("truncated-gzip-half", _truncated(lambda n: n // 2), "truncated"),
    ("truncated-gzip-trailer", _truncated(lambda n: n - 4), "truncated"),
    ("truncated-gzip-trailer-after-padding", lambda dir, fake: _padded_truncated(dir), "truncated"),
    ("corrupt-gzip-crc", lambda dir, fake: _corrupt_crc(dir, fake), "CRC"),
    ("zeros-bomb-after-the-end", lambda dir, fake: _zeros_after_end(dir), "after the end"),
    ("tar-without-release", _plain_tar_of_text, "not an OTP release"),
    ("missing-bin", _fake(omit=["bin"]), "no bin/ directory"),
    ("missing-erts", _fake(omit=["erts-"]), "no erts-* directory"),
    ("missing-releases", _fake(omit=["releases"]), "no releases/ directory"),
    (
        "missing-erts-wrapped",
        _fake(layout="wrapped", omit=["erts-"]),
        f"no erts-* directory under {NAME}/",
    ),
    (
        "missing-bin-and-erts",
        _fake(omit=["bin", "erts-"]),
        "no bin/ directory, no erts-* directory",
    ),
    (
        "release-dir-without-boot-or-rel",
        _fake(omit=[f"releases/{VSN}/start.boot", f"releases/{VSN}/{NAME}.rel"]),
        "no releases/<vsn>/ directory with start.boot or <name>.rel",
    ),
    (
        "start_erl-names-missing-release",
        _fake(
            extra_members=[Entry("releases/start_erl.data", data=b"13.1.5 9.9.9\n")],
            start_erl=False,
        ),
        "names release 9.9.9",
    ),
    (
        "ambiguous-bin",
        _fake(
            omit=[f"releases/{VSN}/{NAME}.rel"],
            extra_members=[Entry("bin/other_tool", data=b"x", mode=0o755)],
        ),
        "cannot tell the release name",
    ),
    (
        "start-script-is-symlink",
        _fake(
            omit=[f"bin/{NAME}", f"releases/{VSN}/{NAME}.rel"],
            extra_members=[Entry(f"bin/{NAME}", "symlink", linkname=f"{NAME}-{VSN}")],
        ),
        "not a regular file",
    ),
    (
        "two-top-folders",
        _fake(extra_members=[Entry("extra/x", data=b"x")], layout="wrapped"),
        "no bin/ directory",
    ),
]


def _padded_truncated(dir: Path) -> Path:
    """A valid release tar followed by 3 MiB of zero blocks, gzipped, its trailer cut off."""
    plain = write_tarball(dir / "plain.tar", otp_entries(), compress=False)
    data = gzip.compress(plain.read_bytes() + b"\0" * (3 << 20), mtime=0)
    plain.unlink()
    p = dir / "padded.tar.gz"
    p.write_bytes(data[:-4])
    return p


def _zeros_after_end(dir: Path) -> Path:
    """A valid release tar followed by 65 MiB of zeros (~64 KiB once gzipped)."""
    plain = write_tarball(dir / "plain.tar", otp_entries(), compress=False)
    data = gzip.compress(plain.read_bytes() + bytes(65 << 20), compresslevel=1, mtime=0)
    plain.unlink()
    p = dir / "bomb.tar.gz"
    p.write_bytes(data)
    return p


def _corrupt_crc(dir: Path, fake: FakeTarball) -> Path:
    data = bytearray(fake().read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    p = dir / "badcrc.tar.gz"
    p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("make,reason", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("op", ["inspect", "extract"])
def test_bad_inputs(
    fake_otp_tarball: FakeTarball,
    work: Work,
    make: Callable[[Path, FakeTarball], Path],
    reason: str,
    op: str,
) -> None:
    inputs = work.root / "inputs"
    inputs.mkdir()
    tarball = make(inputs, fake_otp_tarball)
    before = work.tree()
    with pytest.raises(PipelineError) as caught:
        if op == "inspect":
            release.inspect(tarball)
        else:
            release.extract(tarball, work.dest)
    assert_one_line_naming(caught.value, str(tarball), reason)
    assert work.tree() == before
    assert not os.path.lexists(work.dest)


# ---------------------------------------------------------------------------------------------
# the destination, interruption, and a tarball that changes under us


def test_dest_may_be_an_empty_dir(fake_otp_tarball: FakeTarball, work: Work) -> None:
    work.dest.mkdir()
    rel = release.extract(fake_otp_tarball(), work.dest)
    assert rel.start_script.is_file()
    assert sorted(os.listdir(work.dest.parent)) == ["dest", "sentinel"]


@pytest.mark.parametrize("kind", ["non-empty-dir", "file", "symlink"])
def test_dest_must_be_absent_or_empty(fake_otp_tarball: FakeTarball, work: Work, kind: str) -> None:
    if kind == "non-empty-dir":
        work.dest.mkdir()
        (work.dest / "old.txt").write_text("old")
    elif kind == "file":
        work.dest.write_text("a file")
    else:
        work.dest.symlink_to(work.sentinel)
    tarball = fake_otp_tarball()
    before = work.tree()
    with pytest.raises(PipelineError) as caught:
        release.extract(tarball, work.dest)
    assert_one_line_naming(caught.value, str(work.dest))
    assert work.tree() == before


def test_missing_parents_are_created(fake_otp_tarball: FakeTarball, work: Work) -> None:
    dest = work.root / "work" / "a" / "b" / "dest"
    rel = release.extract(fake_otp_tarball(), dest)
    assert rel.start_script.is_file()
    assert os.listdir(dest.parent) == ["dest"]


def test_refusal_creates_no_parents(fake_otp_tarball: FakeTarball, work: Work) -> None:
    tarball = fake_otp_tarball(extra_members=[Entry("lib/pipe", "fifo")])
    before = work.tree()
    with pytest.raises(PipelineError):
        release.extract(tarball, work.root / "work" / "a" / "b" / "dest")
    assert work.tree() == before


@pytest.mark.parametrize("nested", [False, True], ids=["parent-exists", "parents-created"])
def test_interrupted_extraction_leaves_nothing(
    fake_otp_tarball: FakeTarball, work: Work, monkeypatch: pytest.MonkeyPatch, nested: bool
) -> None:
    tarball = fake_otp_tarball(payload_files=10, payload_size=1000)
    dest = work.root / "work" / "a" / "b" / "dest" if nested else work.dest
    before = work.tree()
    written: list[str] = []
    real_makefile = tarfile.TarFile.makefile

    def makefile(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        if len(written) == 5:
            raise KeyboardInterrupt
        real_makefile(self, tarinfo, targetpath)
        written.append(targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", makefile)
    with pytest.raises(KeyboardInterrupt):
        release.extract(tarball, dest)
    assert len(written) == 5  # files were really written before the interruption
    assert all(str(work.root / "work") in p for p in written)
    assert work.tree() == before


@pytest.mark.parametrize("change", ["extra-member", "same-headers-other-bytes"])
def test_tarball_changed_between_passes(
    fake_otp_tarball: FakeTarball, work: Work, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    tarball = fake_otp_tarball()
    if change == "extra-member":
        swapped = fake_otp_tarball(extra_members=[Entry("lib/extra.txt", data=b"x")])
    else:  # same sizes and headers: only the whole-file hash can tell
        entries = [
            Entry(e.name, e.kind, b"[]!\n", e.mode) if e.name.endswith("sys.config") else e
            for e in otp_entries()
        ]
        swapped = write_tarball(work.root / "tarballs" / "swapped.tar.gz", entries)
    real_check = release._check_members

    def check_then_swap(path: Path, members: Any) -> None:
        real_check(path, members)
        shutil.copyfile(swapped, tarball)

    written: list[str] = []
    real_makefile = tarfile.TarFile.makefile

    def makefile(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        written.append(tarinfo.name)
        real_makefile(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", makefile)
    monkeypatch.setattr(release, "_check_members", check_then_swap)
    before = {k: v for k, v in work.tree().items() if not k.startswith("tarballs")}
    with pytest.raises(PipelineError) as caught:
        release.extract(tarball, work.dest)
    assert_one_line_naming(caught.value, str(tarball), "changed while it was being extracted")
    assert "lib/extra.txt" not in written  # a member that was never validated is never written
    assert written  # (the check above is not vacuous)
    assert {k: v for k, v in work.tree().items() if not k.startswith("tarballs")} == before


# ---------------------------------------------------------------------------------------------
# sha256_file and speed


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (5 << 20) // 2])
def test_sha256_file(tmp_path: Path, size: int) -> None:
    p = tmp_path / "blob"
    p.write_bytes(os.urandom(size))
    assert release.sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest() == sha256sum(p)


def test_inspect_and_extract_are_fast(fake_otp_tarball: FakeTarball, work: Work) -> None:
    """~9 MB, ~270 files: inspect + extract well under a second."""
    tarball = fake_otp_tarball(payload_files=257, payload_size=36_000)
    assert 8_500_000 < tarball.stat().st_size < 10_000_000
    t0 = time.perf_counter()
    info = release.inspect(tarball)
    t1 = time.perf_counter()
    rel = release.extract(tarball, work.dest)
    t2 = time.perf_counter()
    assert info.file_count == 270 == rel.info.file_count
    print(f"inspect {t1 - t0:.3f}s, extract {t2 - t1:.3f}s for {tarball.stat().st_size} bytes")
    assert t2 - t0 < 1.0, f"inspect {t1 - t0:.3f}s + extract {t2 - t1:.3f}s"


# ---------------------------------------------------------------------------------------------
# the real reference release (pipeline.reference builds it with erlc + systools)


def _tree_facts(root: Path) -> dict[str, tuple[str, bool, str]]:
    """Relative path -> (kind, owner-executable, sha256 of content or link target)."""
    facts: dict[str, tuple[str, bool, str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            facts[rel] = ("link", False, os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            facts[rel] = ("dir", False, "")
        else:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            facts[rel] = ("file", bool(st.st_mode & stat.S_IXUSR), digest)
    return facts


@pytest.mark.parametrize("layout", ["rebar3", "wrapped"])
def test_real_reference_release(tmp_path: Path, work: Work, layout: str) -> None:
    from conftest import require_tool

    from pipeline import reference

    erl = require_tool("erl", "erlang-base")
    erts = subprocess.run(
        [erl, "-noshell", "-eval", 'io:format("~s", [erlang:system_info(version)]), halt().'],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tarball = reference.build(tmp_path / "built", version="1.2.3", layout=layout)
    listing = gnu_tar_listing(tarball)

    t0 = time.perf_counter()
    info = release.inspect(tarball)
    t1 = time.perf_counter()
    rel = release.extract(tarball, work.dest)
    t2 = time.perf_counter()
    print(
        f"{layout}: {info.size_bytes} bytes, {info.file_count} files: "
        f"inspect {t1 - t0:.3f}s, extract {t2 - t1:.3f}s"
    )

    assert (info.name, info.version, info.erts_version) == (NAME, "1.2.3", erts)
    assert info.layout == layout
    assert info.file_count == sum(1 for kind, _, _ in listing if kind == "-")
    assert info.uncompressed_bytes == sum(size for kind, size, _ in listing if kind == "-")
    assert info.sha256 == sha256sum(tarball)
    assert rel.info == info
    assert os.access(rel.start_script, os.X_OK)
    assert os.access(rel.root / f"erts-{erts}" / "bin" / "beam.smp", os.X_OK)
    assert (rel.root / "releases" / "1.2.3" / "start.boot").is_file()

    # the same tree GNU tar extracts: paths, kinds, contents and exec bits
    tar = shutil.which("tar")
    assert tar
    by_gnu = tmp_path / "by-gnu-tar"
    by_gnu.mkdir()
    subprocess.run([tar, "-xzf", str(tarball), "-C", str(by_gnu)], check=True)
    assert _tree_facts(work.dest) == _tree_facts(by_gnu)
    assert sorted(os.listdir(work.dest.parent)) == ["dest", "sentinel"]
