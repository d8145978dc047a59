"""Issue 22 by hand: every hostile input of the issue through the real command line (or the
Python API) in a fresh temporary folder, one child process per case.

For each case it records the exit status, the last line of stderr (the message), whether a
traceback appeared, the child's peak RSS (``os.wait4``: that process and the children it
waited for, so a bomb's peak is its own) and the files the case left behind, each checked:
temporary, partial and lock names are flagged, and so is any file that does not open as
what its name says (HDF5 groups with consistent datasets, PNG, JSON, ONNX, safetensors) or
any new output of a case that is meant to fail. Writes ``report.md`` and ``results.json``.

    OMP_NUM_THREADS=1 python benchmarks/hostile_input.py --out benchmarks/results/hostile

Expected for a refusal: exit status 2, one line ``keypointlab: error: ...`` naming the
input and the limit, no traceback, peak RSS under 2 GB, nothing left behind. A few cases
are meant to succeed (a folder with a bomb in it is extracted without it; a non-UTF-8 file
name is exported under an escaped group name); the table says which.

``ship`` can only write into the package's ``keypointlab/weights``: through the command
line only the refusals that fail before writing are run (with a missing ``--eval-data``
as a second guard), and the folder's checksum is compared before and after. The failed
evaluation with ``--force`` runs through the API into a temporary copy of a shipped model.
Shipped-name cases (truncated / wrong-architecture ``.safetensors``) run the CLI's
``main()`` in a child process whose ``keypointlab.models.loading.WEIGHTS_DIR`` points at a
temporary copy; nothing in the package is touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_WEIGHTS = ROOT / "keypointlab" / "weights"
CONFIG = ROOT / "keypointlab" / "configs" / "kp2d.yaml"
PEAK_LIMIT_MB = 2048
TINY = [  # a tiny kp2d for the train cases (as tests/test_hostile_config.py)
    "model.keypoint_net.channels=[8, 8, 16, 16]",
    "model.keypoint_net.descriptor_dim=16",
    "model.io_width=16",
    "loss.io_top_k=20",
    "data.size=[64, 80]",
    "data.workers=0",
    "train.batch_size=2",
    "eval.data=none",
]
LEFTOVER_SUFFIXES = (".tmp", ".partial", ".lock")


# ------------------------------------------------------------------------------ crafting


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, bit_depth: int = 8) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def real_bomb(path: Path, side: int = 30000) -> Path:
    """A valid 1-bit grey PNG of side x side black pixels (about 110 KB)."""
    row = b"\x00" * (1 + side // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(_png(side, side, idat, bit_depth=1))
    return path


def forged_png(path: Path, side: int = 60000) -> Path:
    """A few hundred bytes whose header claims side x side pixels."""
    path.write_bytes(_png(side, side, zlib.compress(b"\x00" * 1000)))
    return path


def photo(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    import skimage.data

    img = cv2.resize(skimage.data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)
    if seed:
        rng = np.random.default_rng(seed)
        img = np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255)
    return img.astype(np.uint8)


def write_png(path: Path | bytes, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    if isinstance(path, bytes):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(buf.tobytes())
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.tobytes())


def sequence(folder: Path, n: int = 3, bomb: Path | None = None) -> Path:
    """An HPatches-style sequence: 1.png and warped 2..n.png with H_1_k (the last one
    replaced by ``bomb`` if given)."""
    ref = photo()
    write_png(folder / "1.png", ref)
    for k in range(2, n + 1):
        H = np.array([[1.0, 0.01 * k, 2.0 * k], [-0.01 * k, 1.0, k], [0.0, 0.0, 1.0]])
        write_png(folder / f"{k}.png", cv2.warpPerspective(ref, H, (320, 240)))
        np.savetxt(folder / f"H_1_{k}", H)
    if bomb is not None:
        shutil.copy(bomb, folder / f"{n}.png")
    return folder


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    items = [f"&l0 [{', '.join(['lol'] * width)}]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "train:\n  init_prefixes: [" + ", ".join(items) + "]\n"


def sha_tree(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ running


@dataclass
class Result:
    case: str
    issue: str
    command: str
    expected: str
    exit: int | None = None
    message: str = ""
    error_lines: int = 0
    traceback: bool = False
    peak_mb: float = 0.0
    seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.pop("KEYPOINTLAB_MAX_PIXELS", None)
    env["PYTHONWARNINGS"] = "ignore"
    return env


TIME = Path("/usr/bin/time")


def spawn(argv: list, cwd: Path, log: Path, measure: bool = True) -> subprocess.Popen:
    """Start ``argv``; with ``measure`` under ``/usr/bin/time`` (if present), whose report
    of the command's peak RSS is its own: ``wait4`` on a child forked from this process
    would also count this process's memory at the fork."""
    out = open(f"{log}.out", "wb")
    err = open(f"{log}.err", "wb")
    peak = Path(f"{log}.peak")
    peak.unlink(missing_ok=True)
    if measure and TIME.exists():
        argv = [str(TIME), "-f", "%M", "-o", str(peak), *argv]
    proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, env=child_env())
    proc.peak_file = peak  # type: ignore[attr-defined]
    return proc


def reap(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, float]:
    """Exit status and peak RSS (MB) of ``proc``: from ``/usr/bin/time``, else ``wait4``
    (an upper bound, see :func:`spawn`)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = getattr(proc, "peak_file", None)
    if peak is not None and peak.is_file():
        lines = [s for s in peak.read_text().split() if s.isdigit()]
        if lines:
            return proc.returncode, int(lines[-1]) / 1024.0
    return proc.returncode, usage.ru_maxrss / 1024.0


PYTHON = sys.executable
CLI = [PYTHON, "-m", "keypointlab.cli"]

API_WRAPPER = """
import sys, traceback
import keypointlab as kl
try:
{body}
except (kl.KeypointLabError, KeyError, FileNotFoundError) as exc:  # the documented types
    print(f"{{type(exc).__name__}}: {{exc}}", file=sys.stderr)
    sys.exit(2)
"""

WEIGHTS_WRAPPER = """
import sys
from pathlib import Path
import keypointlab.models.loading as loading
loading.WEIGHTS_DIR = Path(sys.argv[1])
from keypointlab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def api(body: str) -> list[str]:
    return [PYTHON, "-c", API_WRAPPER.format(body=textwrap.indent(textwrap.dedent(body), "    "))]


def show(argv: list) -> str:
    parts = []
    for a in argv:
        a = os.fsdecode(a) if isinstance(a, bytes) else str(a)
        if a.startswith(PYTHON):
            a = "python"
        if "\n" in a:
            a = "<api code, see results.json>"
        parts.append(a if a and " " not in a and "[" not in a else repr(a))
    text = " ".join(parts)
    return text.replace("python -m keypointlab.cli", "keypointlab")


def file_problem(p: Path) -> str | None:
    """Why ``p`` is not the whole file its name promises (None: it is)."""
    name = p.name
    try:
        if name.endswith(".h5"):
            import h5py

            with h5py.File(p, "r") as h5:
                groups = []
                h5.visititems(
                    lambda k, v: (
                        groups.append(k) if hasattr(v, "keys") and "keypoints" in v else None
                    )
                )
                for g in groups:
                    n = h5[g]["keypoints"].shape[0]
                    for d in ("scores", "descriptors"):
                        if d in h5[g] and h5[g][d].shape[0] != n:
                            return f"group {g}: {d} has {h5[g][d].shape[0]} rows for {n} keypoints"
            return None
        if name.endswith(".png"):
            return (
                None if cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None else "does not decode"
            )
        if name.endswith(".json"):
            json.loads(p.read_text())
            return None
        if name.endswith(".onnx"):
            import onnx

            onnx.checker.check_model(onnx.load(str(p)))
            return None
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(p), "np") as f:
                list(f.keys())
            return None
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    return None


def snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            rel = str(p.relative_to(folder))
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Runner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.results: list[Result] = []

    def case(
        self,
        name: str,
        issue: str,
        argv: list,
        expected: int = 2,
        needles: tuple[str, ...] = (),
        allowed: tuple[str, ...] = (),
        check: Callable[[Result, Path], None] | None = None,
        cwd: Path | None = None,
        proc: subprocess.Popen | None = None,
    ) -> Result:
        """Run ``argv`` (one child, alone) and judge it; ``allowed`` are new files a
        failing case may leave (e.g. a ``.partial`` kept for ``--resume``)."""
        work = cwd or self.root
        before = snapshot(work)
        log = self.root / "_logs" / "".join(c if c.isalnum() else "_" for c in name)
        log.parent.mkdir(exist_ok=True)
        r = Result(name, issue, show(argv), _expectation(expected, needles))
        t0 = time.monotonic()
        proc = proc or spawn(argv, work, log)
        r.exit, r.peak_mb = reap(proc)
        r.seconds = time.monotonic() - t0
        err = Path(f"{log}.err").read_text(errors="replace")
        lines = [s for s in err.splitlines() if s.strip() and not s.startswith(("WARNING", "INFO"))]
        r.message = lines[-1].strip() if lines else ""
        r.traceback = "Traceback (most recent call last)" in err
        r.error_lines = sum(1 for s in lines if "error" in s.lower()[:40])
        if r.exit == 0:  # a success: its summary line (what was written, what skipped)
            out = [s.strip() for s in Path(f"{log}.out").read_text(errors="replace").splitlines()]
            pick = [s for s in out if "skipped" in s or "exceeds" in s or "written" in s]
            r.message = "stdout: " + (pick or [s for s in out if s] or [""])[-1]
        after = snapshot(work)
        new = sorted(k for k in after if k not in before or after[k] != before[k])
        gone = sorted(k for k in before if k not in after)
        for rel in new:
            p = work / rel
            tag = rel + ("" if rel not in before else " (changed)")
            if p.name.endswith(LEFTOVER_SUFFIXES) or ".tmp" in p.name:
                if not any(p.match(a) for a in allowed):
                    r.leftovers.append(f"{tag}: temporary/partial/lock")
                    continue
                r.notes.append(f"kept on purpose: {rel}")
                continue
            why = file_problem(p)
            if why:
                r.leftovers.append(f"{tag}: NOT WHOLE ({why})")
            elif expected != 0 and not any(p.match(a) for a in allowed):
                r.leftovers.append(f"{tag}: output of a failed run")
        r.leftovers += [f"{g}: deleted" for g in gone if not any(Path(g).match(a) for a in allowed)]
        r.leftovers = [x for x in r.leftovers if not x.startswith("_logs/")]
        # judge
        if r.exit != expected:
            r.problems.append(f"exit {r.exit}, expected {expected}")
        if r.traceback:
            r.problems.append("traceback")
        if r.peak_mb >= PEAK_LIMIT_MB:
            r.problems.append(f"peak {r.peak_mb:.0f} MB")
        if r.leftovers:
            r.problems.append("leftovers")
        if expected == 2:
            if r.error_lines != 1:
                r.problems.append(f"{r.error_lines} error lines")
            for n in needles:
                if n not in r.message:
                    r.problems.append(f"message lacks {n!r}")
        if check is not None:
            try:
                check(r, work)
            except AssertionError as exc:
                r.problems.append(f"check: {exc}")
        self.results.append(r)
        print(f"[{'ok' if r.ok else 'FAIL'}] {name}: exit {r.exit}, {r.peak_mb:.0f} MB, "
              f"{r.seconds:.1f} s: {r.message[:150]}" + (f" -- {r.problems}" if r.problems else ""),
              flush=True)  # fmt: skip
        return r


def _expectation(expected: int, needles: tuple[str, ...]) -> str:
    if expected == 0:
        return "exit 0"
    return "exit 2" + (f", names {', '.join(repr(n) for n in needles)}" if needles else "")


def setup(code: str, cwd: Path) -> None:
    """Run preparation code (not measured) in a child; fail loudly if it fails."""
    subprocess.run([PYTHON, "-c", textwrap.dedent(code)], cwd=cwd, check=True, env=child_env())


def stdout_of(root: Path, name: str) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in name)
    return (root / "_logs" / f"{slug}.out").read_text(errors="replace")


# ------------------------------------------------------------------------------ the cases


def run_all(root: Path) -> list[Result]:
    R = Runner(root)
    inp = root / "inputs"
    bombs = inp / "bombs"
    bombs.mkdir(parents=True)
    real, forged = real_bomb(bombs / "real.png"), forged_png(bombs / "forged.png")
    a, b = inp / "a.png", inp / "b.png"
    write_png(a, photo(seed=0))
    write_png(
        b, cv2.warpAffine(photo(seed=1), np.float32([[1, 0.02, 3], [-0.02, 1, 2]]), (320, 240))
    )
    imgs = inp / "images"
    write_png(imgs / "a.png", photo(seed=0))
    write_png(imgs / "sub" / "b.png", photo(seed=2))
    data = inp / "data"
    sequence(data / "v_ok")
    many = inp / "many"
    for i in range(150):
        write_png(many / f"{i:03d}.png", photo(seed=i + 3))
    print(
        f"inputs: real bomb {real.stat().st_size:,} B, forged {forged.stat().st_size:,} B",
        flush=True,
    )

    def w(name: str) -> Path:  # a fresh work folder per case
        p = root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    # ---- memory and time
    d = w("bomb_match")
    R.case("real 30000x30000 PNG: match", "memory", [*CLI, "match", real, a, "--out", d / "m.png"],
           needles=(str(real), "30000x30000", "40,000,000"), cwd=d)  # fmt: skip
    d = w("forged_match")
    R.case("header claims 60000x60000: match", "memory",
           [*CLI, "match", forged, a, "--out", d / "m.png"],
           needles=(str(forged), "60000x60000", "40,000,000"), cwd=d)  # fmt: skip
    for cmd in ("extract", "extract --resume"):
        d = w("bomb_folder" + ("_resume" if "resume" in cmd else ""))
        folder = d / "images"
        write_png(folder / "a.png", photo(seed=0))
        write_png(folder / "sub" / "b.png", photo(seed=2))
        shutil.copy(real, folder / "real.png")
        shutil.copy(forged, folder / "forged.png")

        def skipped(r: Result, work: Path, name=cmd) -> None:
            out = stdout_of(root, r.case)
            assert "2 images written" in out and "2 skipped" in out, out[-300:]
            import h5py

            with h5py.File(work / "f.h5") as h5:
                got = sorted(k for k in h5 if k != "sub") + [f"sub/{k}" for k in h5.get("sub", {})]
            assert got == ["a.png", "sub/b.png"], got

        R.case(f"bombs in a folder: {cmd}", "memory",
               [*CLI, *cmd.split(), folder, "--out", d / "f.h5", "--quiet", "--features", "sift"],
               expected=0, check=skipped, cwd=d)  # fmt: skip
    d = w("bomb_evaluate")
    sequence(d / "data" / "v_bomb", bomb=real)
    R.case("real bomb inside an evaluated sequence", "memory",
           [*CLI, "evaluate", "--features", "sift", "--data", d / "data", "--size", "240x320",
            "--out", d / "report", "--quiet"], expected=0,
           check=lambda r, _: (_ for _ in ()).throw(AssertionError("bomb pair not reported"))
           if "exceeds the limit" not in stdout_of(root, r.case) else None, cwd=d)  # fmt: skip
    for value in ("100", "inf"):
        d = w(f"scales_{value}")
        R.case(f"--scales {value}", "memory",
               [*CLI, "extract", imgs, "--out", d / "f.h5", "--features", "kp2d_fast",
                "--scales", value], needles=("--scales", value, "0.125 to 4"), cwd=d)  # fmt: skip
    d = w("rotations")
    R.case("--rotations 100000", "time",
           [*CLI, "match", a, b, "--features", "kp2d_fast", "--rotations", "100000",
            "--out", d / "m.png"], needles=("--rotations", "100000", "36"), cwd=d)  # fmt: skip
    d = w("alias_bomb")
    (d / "bomb.yaml").write_text("base: " + str(CONFIG) + "\n" + billion_laughs())
    R.case("YAML billion laughs in train.init_prefixes", "memory",
           [*CLI, "train", d / "bomb.yaml", f"train.out={d / 'run'}", "--quiet"],
           needles=("bomb.yaml", "limit"), cwd=d)  # fmt: skip

    # ---- silently wrong or lost output
    d = w("concurrent")
    first = spawn([*CLI, "extract", many, "--out", d / "f.h5", "--features", "sift", "--quiet"],
                  d, root / "_logs" / "concurrent_first", measure=False)  # fmt: skip
    lock = d / ".f.h5.lock"
    t0 = time.monotonic()
    while not lock.exists() and time.monotonic() - t0 < 60 and first.poll() is None:
        time.sleep(0.05)

    def first_is_whole(r: Result, work: Path) -> None:
        code, peak = reap(first)
        r.notes.append(f"first run: exit {code}, peak {peak:.0f} MB (wait4, an upper bound)")
        assert code == 0, f"first run exit {code}"
        import h5py

        from keypointlab.features.h5 import read_record

        with h5py.File(work / "f.h5") as h5:
            assert len(h5) == 150, len(h5)
            assert all(h5[k]["descriptors"].shape[1] == 128 for k in h5)
            assert read_record(h5)["extractor"]["name"] == "sift"
        left = [p.name for p in work.iterdir() if p.name.endswith(LEFTOVER_SUFFIXES)]
        assert not left, left

    R.case("two extract runs on one --out (second: orb)", "output",
           [*CLI, "extract", many, "--out", d / "f.h5", "--features", "orb", "--quiet"],
           needles=(str(d / "f.h5"), "pid", str(first.pid)), allowed=("*.partial", "*.lock"),
           check=first_is_whole, cwd=d)  # fmt: skip

    d = w("resume_other")
    victim = spawn([*CLI, "extract", many, "--out", d / "f.h5", "--features", "sift", "--quiet"],
                   d, root / "_logs" / "resume_victim", measure=False)  # fmt: skip
    partial = d / "f.h5.partial"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60 and victim.poll() is None:
        if partial.exists() and partial.stat().st_size > 200_000:
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    reap(victim)
    resume = [*CLI, "extract", many, "--out", d / "f.h5", "--resume", "--quiet"]
    R.case("kill -9, then extract --resume --features orb", "output",
           [*resume, "--features", "orb"], needles=("f.h5.partial", "sift", "orb"),
           allowed=("*.partial", "*.lock"), cwd=d)  # fmt: skip

    def identical(r: Result, work: Path) -> None:
        ref = w("resume_ref")
        subprocess.run([*CLI, "extract", many, "--out", ref / "f.h5", "--features", "sift",
                        "--quiet"], check=True, env=child_env(), capture_output=True)  # fmt: skip
        import h5py

        with h5py.File(work / "f.h5") as x, h5py.File(ref / "f.h5") as y:
            assert sorted(x) == sorted(y) and len(x) == 150
            for k in x:
                for ds in x[k]:
                    assert np.array_equal(x[k][ds][()], y[k][ds][()]), (k, ds)
        left = [p.name for p in work.iterdir() if p.name.endswith(LEFTOVER_SUFFIXES)]
        assert not left, f"left after the resumed run: {left}"
        r.notes.append("resumed file is bit-identical (datasets) to a fresh run")
        shutil.rmtree(ref)

    R.case("... then extract --resume --features sift", "output",
           [*resume, "--features", "sift"],
           expected=0, allowed=("*.partial",), check=identical, cwd=d)  # fmt: skip

    # ship: the package's weights folder, refusals only (a missing --eval-data as second guard)
    before = sha_tree(PACKAGE_WEIGHTS)

    def weights_unchanged(r: Result, _: Path) -> None:
        assert sha_tree(PACKAGE_WEIGHTS) == before, "keypointlab/weights changed"
        assert not (ROOT / "keypointlab" / "x.json").exists()
        assert not list((ROOT / "keypointlab").glob("x.*"))
        r.notes.append("sha256 of keypointlab/weights unchanged")

    d = w("ship")
    R.case("ship over a shipped model without --force", "ship",
           [*CLI, "ship", "kp2d", "--name", "kp2d", "--eval-data", d / "missing"],
           needles=("kp2d", "--force"), check=weights_unchanged, cwd=d)  # fmt: skip
    R.case("ship --name ../x", "ship",
           [*CLI, "ship", "kp2d", "--name", "../x", "--eval-data", d / "missing"],
           needles=("../x",), check=weights_unchanged, cwd=d)  # fmt: skip
    d = w("ship_api")
    tw = d / "weights"
    tw.mkdir()
    for ext in ("json", "md", "safetensors"):
        shutil.copy(PACKAGE_WEIGHTS / f"kp2d_fast.{ext}", tw / f"kp2d_fast.{ext}")
    (d / "empty_eval").mkdir()
    tbefore = sha_tree(tw)

    def temp_unchanged(r: Result, _: Path) -> None:
        assert sha_tree(tw) == tbefore, "the temporary weights folder changed"

    R.case("ship --force with a failing evaluation (API, temp weights)", "ship",
           api(f"""
               from keypointlab.training.ship import ship_model
               ship_model("kp2d_fast", "kp2d_fast", "{d / 'empty_eval'}", out_dir="{tw}",
                          force=True)
               """),
           check=temp_unchanged, cwd=d)  # fmt: skip

    d = w("out_is_input")
    src = d / "images"
    shutil.copytree(imgs, src)
    R.case("extract --out naming an input image", "output",
           [*CLI, "extract", src, "--out", src / "a.png", "--features", "sift"],
           needles=(str(src / "a.png"), "input"), cwd=d)  # fmt: skip

    d = w("float255")
    R.case("float64 0..255 image through the API", "output",
           api(f"""
               import cv2, numpy as np
               img = cv2.imread("{a}")[:, :, ::-1].astype(np.float64)
               kl.load_extractor("sift").extract(img)
               """), needles=("above 1", "255"), cwd=d)  # fmt: skip
    R.case("NaN descriptors through kl.match", "output",
           api("""
               import numpy as np
               rng = np.random.default_rng(0)
               f0 = kl.Features(rng.random((5, 2)), rng.random(5), rng.random((5, 8)), (10, 10))
               f1 = kl.Features(rng.random((6, 2)), rng.random(6), rng.random((6, 8)), (10, 10))
               f1.descriptors[2, 3] = np.nan
               kl.match(f0, f1)
               """), needles=("descriptors", "non-finite"), cwd=d)  # fmt: skip
    d = w("topk")
    R.case("evaluate --top-k -5", "output",
           [*CLI, "evaluate", "--features", "sift", "--data", data, "--top-k", "-5",
            "--out", d / "r"], needles=("--top-k", "-5", "at least 1"), cwd=d)  # fmt: skip
    R.case("extract --max-keypoints -1", "output",
           [*CLI, "extract", imgs, "--out", d / "f.h5", "--max-keypoints", "-1"],
           needles=("--max-keypoints", "-1"), cwd=d)  # fmt: skip
    R.case("load_extractor('kp2d_fast', max_keypoints=-3)", "output",
           api("kl.load_extractor('kp2d_fast', max_keypoints=-3)"),
           needles=("max_keypoints -3", "at least 1"), cwd=d)  # fmt: skip

    d = w("resume_refused")
    run = d / "run"
    run.mkdir()
    (run / "ckpt_00000000.pt").write_bytes(b"not a checkpoint")
    setup(f"""
        import torch
        torch.save({{"something": "else"}}, "{run / 'ckpt_00000001.pt'}")
        """, d)  # fmt: skip
    (run / "ckpt_00000002.pt").write_bytes((run / "ckpt_00000001.pt").read_bytes()[:100])
    R.case("train --resume, every checkpoint refused", "output",
           [*CLI, "train", CONFIG, *TINY, f"train.out={run}", "--resume", "--quiet"],
           needles=("none of its 3 checkpoints",), cwd=d)  # fmt: skip

    # ---- tracebacks
    d = w("features_files")
    setup(f"""
        import h5py, numpy as np
        def group(h5, key, dim=8, kp=None, desc=None):
            g = h5.create_group(key)
            xy = np.array([[5, 6], [20, 30], [40, 50]], np.float32)
            g["keypoints"] = kp if kp is not None else xy
            g["scores"] = np.ones(3, np.float32)
            g["descriptors"] = desc if desc is not None else np.ones((3, dim), np.float32)
            g["image_size"] = np.array([240, 320])
        with h5py.File("{d / 'mixed.h5'}", "w") as h5:
            group(h5, "v_ok/1.png", 128); group(h5, "v_ok/2.png", 64); group(h5, "v_ok/3.png", 128)
        with h5py.File("{d / 'strings.h5'}", "w") as h5:
            s = np.array([["a", "b"]] * 3, dtype=object).astype(h5py.string_dtype())
            group(h5, "v_ok/1.png", kp=s); group(h5, "v_ok/2.png"); group(h5, "v_ok/3.png")
        """, d)  # fmt: skip
    R.case("features file: descriptor sizes differ", "traceback",
           [*CLI, "evaluate", "--features-file", d / "mixed.h5", "--data", data,
            "--size", "original", "--out", d / "r1", "--quiet"],
           needles=("mixed.h5", "v_ok/2.png", "64", "128"), cwd=d)  # fmt: skip
    R.case("features file: string keypoints", "traceback",
           [*CLI, "evaluate", "--features-file", d / "strings.h5", "--data", data,
            "--size", "original", "--out", d / "r2", "--quiet"],
           needles=("could be evaluated",),
           check=lambda r, _: None if "string values" in stdout_of(root, r.case)
           else (_ for _ in ()).throw(AssertionError("string keypoints not reported")),
           cwd=d)  # fmt: skip

    d = w("safetensors")
    tw = d / "weights"
    tw.mkdir()
    for ext in ("json", "safetensors"):
        shutil.copy(PACKAGE_WEIGHTS / f"kp2d_fast.{ext}", tw / f"kp2d_fast.{ext}")
    st = tw / "kp2d_fast.safetensors"
    st.write_bytes(st.read_bytes()[:5000])
    R.case("truncated kp2d_fast.safetensors (temp WEIGHTS_DIR)", "traceback",
           [PYTHON, "-c", WEIGHTS_WRAPPER, tw, "match", a, b, "--features", "kp2d_fast",
            "--out", d / "m.png"], needles=(str(st), "truncated"), cwd=d)  # fmt: skip
    shutil.copy(PACKAGE_WEIGHTS / "superpoint.safetensors", st)
    R.case("superpoint weights as kp2d_fast.safetensors", "traceback",
           [PYTHON, "-c", WEIGHTS_WRAPPER, tw, "match", a, b, "--features", "kp2d_fast",
            "--out", d / "m.png"], needles=(str(st), "do not fit"), cwd=d)  # fmt: skip

    d = w("resume_size")
    setup(f"""
        from keypointlab.training.trainer import Trainer, load_config
        t = Trainer(load_config("{CONFIG}", {TINY!r} + ["train.out={d / 'run'}"]), progress=False)
        t.save()
        """, d)  # fmt: skip
    bigger = [x for x in TINY if "channels" not in x] + [
        "model.keypoint_net.channels=[8, 8, 16, 32]"
    ]
    R.case("train --resume on a run of another model size", "traceback",
           [*CLI, "train", CONFIG, *bigger, f"train.out={d / 'run'}", "--resume", "--quiet"],
           needles=("does not fit the configured model", "channels"), cwd=d)  # fmt: skip

    d = w("ckpt_config")
    setup(f"""
        import torch
        from keypointlab.io.checkpoint import save_checkpoint
        save_checkpoint({{"method": "kp2d", "model": {{"w": torch.ones(2)}}, "step": 1,
                          "config": "not a mapping"}}, "{d / 'run'}", 1)
        """, d)  # fmt: skip
    ck = d / "run" / "ckpt_00000001.pt"
    R.case("checkpoint whose config is not a mapping", "traceback",
           [*CLI, "match", a, b, "--features", ck, "--out", d / "m.png"],
           needles=(str(ck), "config"), cwd=d)  # fmt: skip

    d = w("base_loop")
    (d / "a.yaml").write_text("base: b.yaml\n")
    (d / "b.yaml").write_text("base: a.yaml\n")
    R.case("config whose base: chain loops", "traceback",
           [*CLI, "train", d / "a.yaml", f"train.out={d / 'run'}"], needles=("a.yaml", "base"),
           cwd=d)  # fmt: skip
    d = w("override_yaml")
    R.case("YAML error in a key=value override", "traceback",
           [*CLI, "train", CONFIG, "train.lr=[1,", f"train.out={d / 'run'}"],
           needles=("train.lr=[1,",), cwd=d)  # fmt: skip
    d = w("device")
    for dev in ("cuda", "bogus"):
        R.case(f"--device {dev}", "traceback",
               [*CLI, "match", a, b, "--features", "kp2d_fast", "--device", dev,
                "--out", d / "m.png"], needles=("--device", dev), cwd=d)  # fmt: skip
    R.case("load_extractor(None)", "traceback", api("kl.load_extractor(None)"),
           needles=("InputTypeError", "None"), cwd=d)  # fmt: skip

    # ---- leftovers
    d = w("out_dirs")
    (d / "outdir").mkdir()
    R.case("match --out DIR", "leftovers",
           [*CLI, "match", a, b, "--out", d / "outdir"], needles=(str(d / "outdir"), "folder"),
           cwd=d)  # fmt: skip
    R.case("export-onnx --out DIR", "leftovers",
           [*CLI, "export-onnx", "kp2d_fast", "--out", d / "outdir"],
           needles=(str(d / "outdir"), "folder"), cwd=d)  # fmt: skip
    d = w("non_utf8")
    raw = os.fsencode(d / "images") + b"/caf\xe9.png"
    write_png(raw, photo(seed=0))

    def exported(r: Result, work: Path) -> None:
        import h5py

        with h5py.File(work / "hloc" / "features.h5") as h5:
            assert set(h5) == {"caf%E9.png", "b.png"}, set(h5)
            assert len(h5["caf%E9.png/keypoints"]) > 0
        with h5py.File(work / "hloc" / "matches.h5") as h5:
            assert "caf%E9.png" in h5, set(h5)

    R.case("match --export with a non-UTF-8 image name", "leftovers",
           [*CLI, "match", raw, b, "--out", d / "m.png", "--export", d / "hloc"], expected=0,
           check=exported, cwd=d)  # fmt: skip
    d = w("before_work")
    (d / "outdir").mkdir()
    (d / "report.txt").write_text("an existing file\n")

    def quick(r: Result, _: Path) -> None:
        assert r.seconds < 30, f"took {r.seconds:.1f} s: the work ran first?"
        r.notes.append(f"refused after {r.seconds:.1f} s")

    R.case("extract --out DIR (before the work)", "leftovers",
           [*CLI, "extract", many, "--out", d / "outdir", "--features", "sift", "--quiet"],
           needles=(str(d / "outdir"), "folder"), check=quick, cwd=d)  # fmt: skip
    R.case("evaluate --out FILE (before the work)", "leftovers",
           [*CLI, "evaluate", "--features", "sift", "--data", data, "--out", d / "report.txt",
            "--quiet"], needles=(str(d / "report.txt"),), check=quick, cwd=d)  # fmt: skip
    return R.results


# ------------------------------------------------------------------------------ report


def write_report(
    results: list[Result], out: Path, command: str, seconds: float, root: Path
) -> None:
    """``report.md`` (the temporary folder shown as ``$TMP``) and ``results.json``."""
    out.mkdir(parents=True, exist_ok=True)

    repo = str(Path(__file__).resolve().parents[1])

    def _scrub(text: str) -> str:  # no paths of the machine that ran it
        return text.replace(str(root), "$TMP").replace(repo, ".")

    def _cell(text: str) -> str:
        return _scrub(text).replace("|", "\\|").replace("\n", " ")

    ok = sum(r.ok for r in results)
    rows = [
        "| # | case | expected | exit | message (last stderr line) | traceback | peak MB | "
        "leftovers | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        rows.append(
            f"| {i} | {_cell(r.case)} | {_cell(r.expected)} | {r.exit} | "
            f"{_cell(r.message[:300]) or '(none)'} | {'yes' if r.traceback else 'no'} | "
            f"{r.peak_mb:.0f} | {_cell('; '.join(r.leftovers)) or 'none'} | "
            f"{'ok' if r.ok else 'FAIL: ' + _cell('; '.join(r.problems))} |"
        )
    notes = [f"- {r.case}: {'; '.join(r.notes)}" for r in results if r.notes]
    text = [
        "# Hostile input (issue 22), by hand",
        "",
        f"`{command}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s, "
        f"python {sys.version.split()[0]}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}).",
        "",
        f"{ok} of {len(results)} cases as expected. Each case is one child process in a fresh "
        "temporary folder; peak MB is that child's maximum RSS (`/usr/bin/time -f %M`); "
        "leftovers are the files a case added or changed, flagged when temporary/partial/lock, "
        "not whole (does not open as its type), or written by a run that failed. Commands "
        "are in `results.json`.",
        "",
        *rows,
        "",
        "Notes:",
        "",
        *notes,
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
    (out / "results.json").write_text(
        _scrub(
            json.dumps(
                {
                    "command": command,
                    "seconds": seconds,
                    "passed": ok,
                    "cases": len(results),
                    "results": [asdict(r) | {"ok": r.ok} for r in results],
                },
                indent=1,
            )
        )  # fmt: skip
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    command = "OMP_NUM_THREADS=1 python benchmarks/hostile_input.py" + (
        "" if args.out == ROOT / "benchmarks" / "results" / "hostile" else f" --out {args.out}"
    )
    root = Path(tempfile.mkdtemp(prefix="kl-hostile-"))
    t0 = time.monotonic()
    try:
        results = run_all(root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    write_report(results, args.out, command, time.monotonic() - t0, root)
    print(f"{sum(r.ok for r in results)} of {len(results)} as expected -> {args.out / 'report.md'}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
