"""The shared-library closure of a release's ELF files, read from their headers (pyelftools).

Every ELF file in the release names its loader (`PT_INTERP`) and the libraries it needs
(`DT_NEEDED`, searched in its `DT_RUNPATH`/`DT_RPATH` with `$ORIGIN`, then in the system's
library directories for its machine). Each library found on the host is read in turn, until
nothing new is needed. Nothing from the release is ever run to find this out (`ldd` would run
the loader on it), so an untrusted tarball cannot act at build time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError

# The multiarch triplet of each machine, as Debian names its library directories.
TRIPLETS = {"EM_X86_64": "x86_64-linux-gnu", "EM_AARCH64": "aarch64-linux-gnu"}
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class ElfFile:
    path: Path
    machine: str  # "EM_X86_64"
    interpreter: str | None  # "/lib64/ld-linux-x86-64.so.2" for a dynamic executable
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


@dataclass
class Closure:
    """What the release needs from the host: its loader(s) and libraries, each by the path it
    takes in the image (`/lib/x86_64-linux-gnu/libc.so.6`) and the host file holding it."""

    files: dict[str, Path] = field(default_factory=dict)  # image path → host file
    needed_by: dict[str, str] = field(default_factory=dict)  # image path → who needs it first
    machine: str | None = None

    def without(self, name: str) -> Closure:
        """The same closure less the library named `name` (its file name): what a test of a
        broken image starts from."""
        kept = {p: f for p, f in self.files.items() if Path(p).name != name}
        if len(kept) == len(self.files):
            raise PipelineError(f"{name} is not in the closure ({', '.join(self.names())})")
        return Closure(kept, {p: self.needed_by[p] for p in kept}, self.machine)

    def names(self) -> list[str]:
        return sorted(Path(p).name for p in self.files)


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: Path) -> ElfFile:
    """The loader, needed libraries and run path an ELF file declares."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            interpreter = None
            for segment in elf.iter_segments():
                if segment["p_type"] == "PT_INTERP":
                    interpreter = segment.get_interp_name()  # type: ignore[attr-defined]
            needed: list[str] = []
            runpath: list[str] = []
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    for tag in section.iter_tags():
                        if tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)  # type: ignore[attr-defined]
                        elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                            value = tag.runpath if tag.entry.d_tag == "DT_RUNPATH" else tag.rpath  # type: ignore[attr-defined]
                            runpath.extend(p for p in value.split(":") if p)
            return ElfFile(path, elf["e_machine"], interpreter, tuple(needed), tuple(runpath))
    except (ELFError, OSError, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable ELF file: {exc}") from None


def system_dirs(machine: str) -> tuple[str, ...]:
    triplet = TRIPLETS.get(machine)
    multiarch = (f"/lib/{triplet}", f"/usr/lib/{triplet}") if triplet else ()
    return (*multiarch, "/lib64", "/usr/lib64", "/lib", "/usr/lib")


def closure(
    root: Path, host_root: Path = Path("/"), leave_out: frozenset[str] = frozenset()
) -> Closure:
    """The loader and libraries the ELF files under `root` need from the host (`host_root`),
    except those of the files named in `leave_out` (paths relative to `root`, never run).
    A library found nowhere is an error naming it and the file that needs it."""
    found = Closure()
    queue: list[tuple[ElfFile, Path | None]] = []  # (elf, where it lives in the image)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.relative_to(root).as_posix() in leave_out:
            continue
        if is_elf(path):
            queue.append((read_elf(path), None))
    seen_libs: set[str] = set()
    while queue:
        elf, in_image = queue.pop(0)
        found.machine = found.machine or elf.machine
        who = str(in_image) if in_image else _shown(elf.path, root, host_root)
        if elf.interpreter and elf.interpreter not in found.files:
            found.files[elf.interpreter] = _host_file(host_root, elf.interpreter, who)
            found.needed_by[elf.interpreter] = who
        for name in elf.needed:
            if name in seen_libs or _in_release(name, elf, root):
                continue
            seen_libs.add(name)
            image_path = _search(name, elf, host_root)
            if image_path is None:
                dirs = ", ".join(system_dirs(elf.machine))
                raise PipelineError(f"{who} needs {name}, found nowhere on this host ({dirs})")
            host = _host_file(host_root, image_path, who)
            found.files[image_path] = host
            found.needed_by[image_path] = who
            queue.append((read_elf(host), Path(image_path)))
    return found


def _shown(path: Path, root: Path, host_root: Path) -> str:
    for base in (root, host_root):
        if path.is_relative_to(base):
            return "/" + str(path.relative_to(base))
    return str(path)


def _in_release(name: str, elf: ElfFile, root: Path) -> bool:
    """Found through the file's $ORIGIN run path inside the release itself."""
    if not elf.path.is_relative_to(root):
        return False
    for entry in elf.runpath:
        if "$ORIGIN" in entry or "${ORIGIN}" in entry:
            where = entry.replace("${ORIGIN}", "$ORIGIN").replace("$ORIGIN", str(elf.path.parent))
            if (Path(where) / name).is_file():
                return True
    return False


def _search(name: str, elf: ElfFile, host_root: Path) -> str | None:
    if "/" in name:
        return name if (host_root / name.lstrip("/")).exists() else None
    dirs = [d for d in elf.runpath if "$ORIGIN" not in d and "${ORIGIN}" not in d]
    for directory in (*dirs, *system_dirs(elf.machine)):
        if (host_root / directory.lstrip("/") / name).exists():
            return f"{directory.rstrip('/')}/{name}"
    return None


def _host_file(host_root: Path, image_path: str, who: str) -> Path:
    """The real file behind `image_path` on the host (symlinks followed)."""
    path = (host_root / image_path.lstrip("/")).resolve()
    if not path.is_file():
        raise PipelineError(f"{who} needs {image_path}, which is not a file on this host")
    return path
