"""Optional native CPU kernels, compiled on first use and called through ctypes.

Why: the log-prob and entropy of materialised logits cost one read of the logits and one ``exp`` per element, but
eager PyTorch needs five or six passes over each row.  ``kernels.c`` does one online pass per row (and one pass for
the gradient).  It is plain C99 with no dependency, compiled by the system C compiler into a per-user cache the
first time it is needed (about a second); the result is keyed on the source, the flags, the compiler and the CPU.
These two row kernels (``stats`` and ``grad``) are the only native code in entrolab.

Nothing here is required: when no compiler is found, compilation fails, the cache is unsafe, loading or a symbol
lookup fails, the self-check fails, or ``ENTROLAB_NATIVE=0`` is set, :func:`get` returns ``None`` and entrolab uses
its pure-PyTorch chunked path, which computes the same quantities.  Only CPU tensors use the kernels.

Safety: a shared library runs code in the process that loads it.  The cache directory must be owned by the user
and closed to everyone else (mode 0700; a directory entrolab creates gets it, one owned by the user that nobody
else can write is tightened to it), and the library file must be owned by the user and writable by nobody else;
otherwise nothing is loaded from there.  There is no fallback to a shared temporary directory: when the cache
directory is unusable, the library is built in a fresh private directory (``tempfile.mkdtemp``, mode 0700) for
this process only.

Environment:
    ``ENTROLAB_NATIVE``     ``0`` disables the kernels.
    ``ENTROLAB_CACHE_DIR``  where the compiled library is kept (default ``$XDG_CACHE_HOME/entrolab`` or
                            ``~/.cache/entrolab``).
    ``CC``                  the C compiler (default: ``cc``, then ``gcc``, then ``clang``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["NativeKernels", "get", "status"]

_SOURCE = Path(__file__).with_name("kernels.c")
_SOURCES = [_SOURCE]
_HEADERS = [Path(__file__).with_name("vmath.h")]  # included by kernels.c: part of the cache key
_ABI_VERSION = 3
_BASE_FLAGS = [
    "-O3",
    "-std=gnu11",
    "-fPIC",
    "-shared",
    "-fopenmp-simd",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
]
# Tried in order; the first set that compiles wins (a compiler without -march=native or _Float16 still works).
_OPTIONAL_FLAG_SETS = [
    ["-march=native", "-DENTROLAB_HAVE_FLOAT16"],
    ["-march=native"],
    ["-DENTROLAB_HAVE_FLOAT16"],
    [],
]
# Below this many elements a call runs on the calling thread: a thread hand-off costs more than the work.
_PARALLEL_MIN_ELEMENTS = 1 << 17

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "kernels": None, "reason": "not loaded yet"}


def _cache_dir() -> Path:
    env = os.environ.get("ENTROLAB_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "entrolab"


def _compiler() -> list[str] | None:
    env = os.environ.get("CC")
    if env:
        cmd = shlex.split(env)
        return cmd if cmd and shutil.which(cmd[0]) else None
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and its CPU flags (a shared home may span CPU models)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _private_dir(directory: Path) -> str | None:
    """Make sure ``directory`` exists, is owned by this user and is closed to everyone else (mode 0700).

    Returns ``None`` when it is safe to build in and load from, else why not.  A directory owned by the user that
    nobody else can write is tightened to 0700; one that others can write (or that another user owns) is refused:
    a library planted there would run in this process.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.lstat()
    except OSError as exc:
        return f"{directory}: {exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory (a symbolic link or a file)"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{directory} is owned by uid {st.st_uid}, not by this user ({os.getuid()})"
    if st.st_mode & 0o022:
        return f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    if st.st_mode & 0o077:
        try:
            os.chmod(directory, 0o700)
        except OSError as exc:
            return f"{directory}: cannot restrict to mode 0700: {exc}"
    return None


def _safe_file(path: Path) -> str | None:
    """``None`` when ``path`` is a regular file owned by this user that nobody else can write, else why not."""
    try:
        st = path.lstat()
    except OSError as exc:
        return f"{path}: {exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _compile(cc: list[str], flag_sets: list[list[str]] | None = None) -> tuple[Path | None, str]:
    source = b"\0".join(p.read_bytes() for p in _SOURCES + _HEADERS)
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"C compiler {cc[0]!r} does not run: {exc}"
    errors = []
    directory = _cache_dir()
    problem = _private_dir(directory)
    if problem is not None:  # never a shared, predictable directory: a fresh private one for this process
        errors.append(problem)
        directory = Path(tempfile.mkdtemp(prefix="entrolab-kernels-"))
    for extra in _OPTIONAL_FLAG_SETS if flag_sets is None else flag_sets:
        flags = _BASE_FLAGS + extra
        key = hashlib.sha256(
            b"\0".join([source, " ".join(cc + flags).encode(), version.encode(), _cpu_signature().encode()])
        ).hexdigest()[:20]
        target = directory / f"entrolab_kernels_{key}.so"
        if target.exists():
            problem = _safe_file(target)
            if problem is None:
                return target, "cached"
            return None, f"refusing to load {problem}"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=directory)
            os.close(fd)
        except OSError as exc:
            errors.append(f"{directory}: {exc}")
            break
        try:
            proc = subprocess.run(
                [*cc, *flags, "-o", tmp, *map(str, _SOURCES)], capture_output=True, text=True, timeout=300
            )
            if proc.returncode != 0:
                errors.append(f"{' '.join(extra) or 'plain'}: {proc.stderr.strip()[-300:]}")
                continue  # this flag set does not compile here; try the next one
            os.chmod(tmp, 0o700)
            os.replace(tmp, target)  # atomic: concurrent processes never load a half-written library
            return target, "compiled"
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{directory}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None, "compilation failed: " + " | ".join(errors)


def _load(path: Path) -> NativeKernels:
    """Load and bind the library at ``path``; any load or symbol error raises (the caller turns it into "off")."""
    problem = _safe_file(path) or _private_dir(path.parent)
    if problem is not None:
        raise OSError(f"refusing to load: {problem}")
    lib = ctypes.CDLL(str(path))
    if lib.entrolab_abi_version() != _ABI_VERSION:
        raise OSError("ABI version mismatch")
    return NativeKernels(lib, path)


_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


class NativeKernels:
    """ctypes wrappers over the compiled kernels; rows are split over ``torch.get_num_threads()`` threads."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self.lib = lib
        self.dtypes: set[torch.dtype] = set()
        self._stats = {}
        self._grad = {}
        for dtype, suffix in _SUFFIX.items():
            stats = getattr(lib, f"entrolab_stats_{suffix}", None)
            grad = getattr(lib, f"entrolab_grad_{suffix}", None)
            if stats is None or grad is None:
                continue
            stats.argtypes = [_P, _P, _I, _I, _F, _P, _P, _P, _P]
            stats.restype = None
            grad.argtypes = [_P, _P, _P, _P, _I, _I, _F, _P, _P, _P, _P, _P, _P]
            grad.restype = None
            self._stats[dtype] = stats
            self._grad[dtype] = grad
            self.dtypes.add(dtype)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._pool_pid = 0

    def supports(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype in self.dtypes and x.shape[-1] > 0 and x.stride(-1) == 1

    def _run(self, fn, rows: int, width: int, chunk_rows: int) -> None:
        """Call ``fn(start, stop)`` over row ranges, in parallel when the work is large enough."""
        threads = max(1, torch.get_num_threads())
        if rows * width < _PARALLEL_MIN_ELEMENTS or threads == 1 or rows == 1:
            fn(0, rows)
            return
        pid = os.getpid()
        if self._pool is None or self._pool_size != threads or self._pool_pid != pid:
            # A pool inherited through fork() has no threads in the child (DataLoader workers, multiprocessing):
            # it is replaced, never shut down from here (that would wait on the parent's threads).
            if self._pool is not None and self._pool_pid == pid:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="entrolab-native")
            self._pool_size, self._pool_pid = threads, pid
        step = min(chunk_rows, -(-rows // threads))
        futures = [self._pool.submit(fn, a, min(a + step, rows)) for a in range(0, rows, step)]
        for f in futures:
            f.result()

    def stats(
        self, x: torch.Tensor, row_offsets: torch.Tensor, inv_t: float, chunk_rows: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-row (raw max m, s = sum e^t, d = sum e^t t, bad count), t = (x - m) inv_t; rows at ``row_offsets``."""
        rows, width = row_offsets.numel(), x.shape[-1]
        m = torch.empty(rows, dtype=torch.float32)
        s = torch.empty(rows, dtype=torch.float32)
        d = torch.empty(rows, dtype=torch.float32)
        bad = torch.empty(rows, dtype=torch.int32)
        fn = self._stats[x.dtype]
        base, off = x.data_ptr(), row_offsets.data_ptr()
        mp, sp, dp, bp = m.data_ptr(), s.data_ptr(), d.data_ptr(), bad.data_ptr()

        def part(a: int, b: int) -> None:
            fn(base, off + 8 * a, b - a, width, inv_t, mp + 4 * a, sp + 4 * a, dp + 4 * a, bp + 4 * a)

        self._run(part, rows, width, chunk_rows)
        return m, s, d, bad

    def grad(
        self,
        x: torch.Tensor,
        row_offsets: torch.Tensor,
        out: torch.Tensor,
        out_offsets: torch.Tensor,
        inv_t: float,
        mx: torch.Tensor,
        logs: torch.Tensor,
        ent: torch.Tensor,
        g_lp: torch.Tensor,
        g_h: torch.Tensor,
        labels: torch.Tensor,
        chunk_rows: int,
    ) -> None:
        """Write d(g_lp * logp + g_h * H)/dx into ``out`` (may alias ``x``); float32 row vectors, int64 labels."""
        rows, width = row_offsets.numel(), x.shape[-1]
        fn = self._grad[x.dtype]
        ptrs = [t.data_ptr() for t in (mx, logs, ent, g_lp, g_h)]
        xb, ob, xo, oo, lb = (
            x.data_ptr(),
            out.data_ptr(),
            row_offsets.data_ptr(),
            out_offsets.data_ptr(),
            labels.data_ptr(),
        )

        def part(a: int, b: int) -> None:
            fn(xb, xo + 8 * a, ob, oo + 8 * a, b - a, width, inv_t, *(p + 4 * a for p in ptrs), lb + 8 * a)

        self._run(part, rows, width, chunk_rows)


def _self_check(kernels: NativeKernels) -> str | None:
    """Compare the kernels with PyTorch on a small row set; a mismatch disables them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1031, generator=gen, dtype=torch.float64) * 3
    x[1, 7] = float("-inf")
    x32 = x.float()
    off = torch.arange(5, dtype=torch.int64) * 1031
    m, s, d, bad = kernels.stats(x32, off, 1.0, 5)
    lse = m.double() + s.double().log()
    ref = torch.logsumexp(x, -1)
    if bad.any() or not torch.allclose(lse, ref, atol=1e-4):
        return "self-check of the stats kernel failed"
    out = torch.empty_like(x32)
    ent = (s.log() - d / s).float()
    labels = torch.arange(5, dtype=torch.int64)
    ones = torch.ones(5)
    kernels.grad(x32, off, out, off, 1.0, m, s.log(), ent, ones, ones, labels, 5)
    p = torch.softmax(x, -1)
    logp = torch.log_softmax(x, -1)
    h = -(p * logp.nan_to_num(neginf=0.0)).sum(-1, keepdim=True)
    ref_g = -p * (1 + torch.where(p > 0, logp, 0.0) + h)
    ref_g[torch.arange(5), labels] += 1
    if not torch.allclose(out.double(), ref_g, atol=1e-4):
        return "self-check of the gradient kernel failed"
    return None


def build(extra_flags: list[str]) -> NativeKernels:
    """Compile and load a variant of the kernels with extra compiler flags (for tests of the portable code path,
    e.g. ``["-mno-avx512f"]``); raises ``RuntimeError`` when it cannot."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found")
    path, reason = _compile(cc, [["-march=native", *extra_flags], list(extra_flags)])
    if path is None:
        raise RuntimeError(reason)
    try:
        return _load(path)
    except Exception as exc:
        raise RuntimeError(f"could not load {path}: {exc}") from exc


def get() -> NativeKernels | None:
    """The loaded kernels, or ``None`` when they are unavailable (see :func:`status`)."""
    if _state["loaded"]:
        return _state["kernels"]  # type: ignore[return-value]
    with _lock:
        if _state["loaded"]:
            return _state["kernels"]  # type: ignore[return-value]
        kernels, reason = None, ""
        if os.environ.get("ENTROLAB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            reason = "disabled by ENTROLAB_NATIVE"
        else:
            cc = _compiler()
            if cc is None:
                reason = "no C compiler found (set CC)"
            else:
                path, reason = _compile(cc)
                if path is not None:
                    try:
                        kernels = _load(path)
                        problem = _self_check(kernels)
                        if problem:
                            kernels, reason = None, problem
                            warnings.warn(f"entrolab native kernels disabled: {problem}", RuntimeWarning, stacklevel=2)
                        else:
                            reason = f"{reason}: {path}"
                    except Exception as exc:
                        kernels, reason = None, f"could not load {path}: {exc}"
        _state.update(loaded=True, kernels=kernels, reason=reason)
        return kernels


def status() -> str:
    """A one-line account of whether the native kernels are in use, and why (not)."""
    get()
    return (
        ("native kernels in use (" if _state["kernels"] else "native kernels not in use (")
        + str(_state["reason"])
        + ")"
    )
