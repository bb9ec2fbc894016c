"""The reference TAIEA release: examples/taiea compiled with erlc and packed by systools.

`build()` gives a real ERTS-included OTP release tarball, `tai_autonomics-<version>.tar.gz`, in
either layout the pipeline accepts:

- ``rebar3``: ``bin/tai_autonomics``, ``erts-<vsn>/``, ``lib/``, ``releases/<vsn>/`` at the root,
  as ``rebar3 as prod tar`` makes them;
- ``wrapped``: the same under one top folder ``tai_autonomics/`` (what the old run_release.sh
  expected).

Steps, in a temp dir that is always removed: ``erlc`` compiles examples/taiea/src into
``lib/tai_autonomics-<vsn>/ebin``; the ``.app`` is written from the ``.app.src``; one
``erl -noshell -eval`` writes the ``.rel`` (erts, kernel and stdlib versions of the local OTP) and
runs ``systools:make_script`` and ``systools:make_tar`` with ``{erts, code:root_dir()}``; the start
script, ``vm.args`` and ``start_erl.data`` are added; the tarball is written with sorted entries,
fixed owners and times, so one source tree, version and fault always give the same sha256.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError

NAME = "tai_autonomics"
FAULTS = (
    "none",
    "slow",
    "errors",
    "leak",
    "crash",
    "noready",
    "slowstart",
    "delay",
    "prod_errors",
    "prod_slow",
    "prod_delay",
)
LAYOUTS = ("rebar3", "wrapped")
SOURCE_DIR = Path(__file__).resolve().parent.parent / "examples" / "taiea"

_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z: fixed, so that builds are reproducible
_TIMEOUT = 120.0

# Runs in `erl -noshell`: plain arguments are the work dir, the release name and version.
_SYSTOOLS_EVAL = r"""
Main = fun() ->
    [Dir, Name, Vsn] = init:get_plain_arguments(),
    ok = file:set_cwd(Dir),
    AppVsn = fun(A) ->
        case application:load(A) of
            ok -> ok;
            {error, {already_loaded, A}} -> ok
        end,
        {ok, V} = application:get_key(A, vsn),
        V
    end,
    Rel = {release, {Name, Vsn}, {erts, erlang:system_info(version)},
           [{kernel, AppVsn(kernel)}, {stdlib, AppVsn(stdlib)}, {list_to_atom(Name), Vsn}]},
    ok = file:write_file(Name ++ ".rel", io_lib:format("~p.~n", [Rel])),
    Opts = [{path, ["lib/*/ebin"]}, silent],
    Check = fun
        (_, ok) -> ok;
        (_, {ok, _, _}) -> ok;
        (Step, {error, M, E}) -> throw({Step, M:format_error(E)});
        (Step, Other) -> throw({Step, io_lib:format("~p", [Other])})
    end,
    Check(make_script, systools:make_script(Name, Opts)),
    Check(make_tar, systools:make_tar(Name, [{erts, code:root_dir()} | Opts])),
    io:format("erts=~s~n", [erlang:system_info(version)])
end,
try Main() of
    _ -> halt(0)
catch
    throw:{Step, Msg} ->
        io:format(standard_error, "systools ~s failed: ~s~n", [Step, Msg]),
        halt(1);
    Class:Reason:Stack ->
        io:format(standard_error, "~p:~p ~p~n", [Class, Reason, Stack]),
        halt(1)
end.
"""


def build(
    out_dir: Path, version: str = "1.0.0", fault: str = "none", layout: str = "rebar3"
) -> Path:
    """Build the reference release; return ``out_dir/tai_autonomics-<version>.tar.gz``.

    Raises PipelineError (one line) for an unknown fault or layout, a version that cannot be a
    release version, missing ``erl``/``erlc`` (Debian package erlang-base), or a failed build.
    """
    if fault not in FAULTS:
        raise PipelineError(f"unknown fault {fault!r}: expected one of {', '.join(FAULTS)}")
    if layout not in LAYOUTS:
        raise PipelineError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if not _VERSION_RE.match(version):
        raise PipelineError(
            f"bad release version {version!r}: use letters, digits and . + _ - (e.g. 1.0.0)"
        )
    erl, erlc = _tool("erl"), _tool("erlc")
    sources = sorted((SOURCE_DIR / "src").glob("*.erl"))
    if not sources:
        raise PipelineError(f"no Erlang sources under {SOURCE_DIR / 'src'}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{NAME}-{version}.tar.gz"

    with tempfile.TemporaryDirectory(prefix="taiea-build-") as tmp:
        work = Path(tmp)
        ebin = work / "lib" / f"{NAME}-{version}" / "ebin"
        ebin.mkdir(parents=True)
        _run(
            [erlc, "-Wall", "+deterministic", "-I", str(SOURCE_DIR / "src"), "-o", str(ebin)]
            + [str(s) for s in sources],
            "erlc",
        )
        modules = ",".join(s.stem for s in sources)
        app_src = (SOURCE_DIR / "src" / f"{NAME}.app.src").read_text()
        app = app_src.replace("@VSN@", version).replace(
            "{modules, []}", f"{{modules, [{modules}]}}"
        )
        (ebin / f"{NAME}.app").write_text(app)
        sys_config = (SOURCE_DIR / "rel" / "sys.config").read_text().replace("@FAULT@", fault)
        (work / "sys.config").write_text(sys_config)

        out = _run(
            [
                erl,
                "-noshell",
                "-noinput",
                "-eval",
                _SYSTOOLS_EVAL,
                "-extra",
                str(work),
                NAME,
                version,
            ],
            "systools",
        )
        match = re.search(r"^erts=(\S+)$", out, re.MULTILINE)
        if match is None:
            raise PipelineError(f"systools did not report the erts version: {out.strip()[:200]}")
        erts_vsn = match.group(1)

        stage = work / "stage"
        stage.mkdir()
        with tarfile.open(work / f"{NAME}.tar.gz") as systools_tar:
            systools_tar.extractall(stage, filter="data")
        script = (SOURCE_DIR / "rel" / f"{NAME}.sh").read_text()
        script = (
            script.replace("@REL_NAME@", NAME)
            .replace("@REL_VSN@", version)
            .replace("@ERTS_VSN@", erts_vsn)
        )
        (stage / "bin").mkdir(exist_ok=True)
        start = stage / "bin" / NAME
        start.write_text(script)
        start.chmod(0o755)
        release_dir = stage / "releases" / version
        shutil.copyfile(SOURCE_DIR / "rel" / "vm.args", release_dir / "vm.args")
        (stage / "releases" / "start_erl.data").write_text(f"{erts_vsn} {version}\n")

        partial = target.with_name(target.name + ".partial")
        _pack(stage, partial, NAME if layout == "wrapped" else "")
        os.replace(partial, target)
    return target


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PipelineError(
            f"{name} not found on PATH: install the Debian package erlang-base "
            "(apt-get install -y erlang-base)"
        )
    return path


def _run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{what} did not finish within {_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        detail = " | ".join(
            line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()
        )
        raise PipelineError(f"{what} failed (exit {done.returncode}): {detail[:500]}")
    return done.stdout


def _pack(stage: Path, target: Path, top: str) -> None:
    """Write stage's tree as a gzip tarball: sorted entries, owner root, fixed times."""
    paths = sorted(stage.rglob("*"), key=lambda p: p.relative_to(stage).as_posix())
    with (
        open(target, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        if top:
            tar.addfile(_info(tarfile.TarInfo(top), directory=True))
        for path in paths:
            rel = path.relative_to(stage).as_posix()
            info = tar.gettarinfo(str(path), arcname=f"{top}/{rel}" if top else rel)
            info = _info(info, directory=path.is_dir() and not path.is_symlink())
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def _info(info: tarfile.TarInfo, directory: bool) -> tarfile.TarInfo:
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    elif info.isfile():
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = _MTIME
    return info
