"""The code sandbox behind `python_tests`: run an untrusted program with its tests in one locked-down process.

Every program runs in a fork of a warm interpreter (sandbox_zygote.py, the system Python started with -I -S, which
imports nothing of tunelake) with: its own PID namespace (everything it started dies with it), no network, an empty
private /tmp and the repository and the caller's directory hidden (a mount namespace), an unprivileged uid/gid,
RLIMIT_CPU / AS / NPROC / FSIZE, no core files, a private working directory (removed after), a wall-clock limit and a
cap on its output. Where `unshare` or root is missing the namespaces are left out; `isolation()` says which applies.
"""

import atexit
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MIB = 1024 * 1024
# The uid/gid programs run as when we are root (nobody/nogroup): no files of its own outside the working directory.
SANDBOX_UID = 65534
SANDBOX_GID = 65534
# The system interpreter: readable by the sandbox's uid (a pyenv Python under /root is not) and free of our packages.
INTERPRETER = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
ZYGOTE_SOURCE = Path(__file__).with_name("sandbox_zygote.py")
# World-writable or ours: covered by empty read-only tmpfs mounts inside the sandbox's mount namespace.
HIDDEN_DIRS = ("/var/tmp", "/run/lock", "/dev/shm", "/home")
# How long a zygote may take beyond the program's wall limit before it is presumed dead.
ZYGOTE_GRACE_SECONDS = 10.0


class Limits(BaseModel):
    """What one program (with all of its tests) may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_seconds: float = Field(5.0, gt=0, description="CPU time of each process (RLIMIT_CPU, rounded up to whole s).")
    wall_seconds: float = Field(10.0, gt=0, description="Wall-clock time of the whole run, after which all is killed.")
    memory_bytes: int = Field(512 * MIB, ge=64 * MIB, description="Address space of each process (RLIMIT_AS).")
    processes: int = Field(32, ge=1, description="Processes the sandbox uid may have at once (RLIMIT_NPROC).")
    file_size_bytes: int = Field(16 * MIB, ge=0, description="Largest file a program may write (RLIMIT_FSIZE).")
    output_bytes: int = Field(1 * MIB, ge=0, description="Stdout + stderr kept before the run is killed as a flood.")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # every test passed
    status: str  # "ok" | "failed" | "timeout" | "infra_error"
    reason: str  # short: the first failing assertion, "killed: CPU time over 1 s", "could not drop privileges", ...
    seconds: float


@cache
def namespaces_available() -> bool:
    """True where we are root and `unshare` can make network, mount and PID namespaces (probed once)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "-m", "-p", "-f", "true"], capture_output=True)
    return probe.returncode == 0


def isolation() -> str:
    """What this host gives a program, in words (for reports and the README)."""
    if namespaces_available():
        return "uid drop, rlimits, PID + network + mount namespaces"
    if os.geteuid() == 0:
        return "uid drop, rlimits; no namespaces: network open, a setsid() child may outlive the run"
    return "rlimits only (not root: no uid drop, no namespaces)"


def run_tests(program: str, tests: str, *, limits: Limits) -> SandboxResult:
    """Run `program` followed by `tests` (asserts) as one file in one sandboxed process."""
    started = time.monotonic()
    root = os.geteuid() == 0
    request = {
        "source": f"{program}\n\n{tests}\n",
        "cpu": limits.cpu_seconds,
        "wall": limits.wall_seconds,
        "memory": limits.memory_bytes,
        "processes": limits.processes,
        "file_size": limits.file_size_bytes,
        "output": limits.output_bytes,
        "uid": SANDBOX_UID if root else os.getuid(),
        "gid": SANDBOX_GID if root else os.getgid(),
        "pid_namespace": namespaces_available(),
    }
    with _LOCK:
        answer = _zygote().ask(request, limits.wall_seconds + ZYGOTE_GRACE_SECONDS)
    return SandboxResult(
        passed=answer["status"] == "ok",
        status=answer["status"],
        reason=answer["reason"],
        seconds=time.monotonic() - started,
    )


class _Zygote:
    """One warm interpreter per caller process; requests go one at a time (run_tests holds _LOCK)."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.process = subprocess.Popen(
            _zygote_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            cwd="/",
        )

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.process.poll() is None

    def ask(self, request: dict, timeout: float) -> dict:
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            line = self.process.stdout.readline() if ready else b""
        except (BrokenPipeError, OSError) as exc:
            return self.died(f"{type(exc).__name__}: {exc}")
        if not line:
            return self.died("no answer in time" if not ready else "it exited")
        return json.loads(line)

    def died(self, how: str) -> dict:
        self.close()
        detail = self.process.stderr.read().decode("utf-8", "replace").strip().splitlines()[-1:]
        return {"status": "infra_error", "reason": f"sandbox worker failed ({how}) {' '.join(detail)}".strip()}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


_LOCK = threading.Lock()
_CURRENT: list[_Zygote] = []


def _zygote() -> _Zygote:
    """The warm interpreter, started again when it died or when we are a fork of the process that started it."""
    if not _CURRENT or not _CURRENT[0].alive():
        _CURRENT[:] = [_Zygote()]
    return _CURRENT[0]


@atexit.register
def _stop_zygote() -> None:
    for zygote in _CURRENT:
        if zygote.owner == os.getpid():
            zygote.close()


def _zygote_command() -> list[str]:
    python = [INTERPRETER, "-I", "-S", "-c", ZYGOTE_SOURCE.read_text()]
    if not namespaces_available():
        return python
    # An empty /tmp for the working directories, empty read-only dirs over the rest, then the interpreter.
    mounts = (
        'python="$0"; source="$1"; shift; mount -t tmpfs -o mode=0711,size=1g tmpfs /tmp || exit 97; '
        'for d in "$@"; do mount -t tmpfs -o ro,mode=0755 tmpfs "$d" || exit 97; done; '
        'exec "$python" -I -S -c "$source"'
    )
    return ["unshare", "-n", "-m", "--propagation", "private", "sh", "-c", mounts, *python[:1], python[-1], *_hidden()]


def _hidden() -> list[str]:
    """Directories the program must not see: world-writable ones, this package's tree and the caller's directory."""
    package = Path(__file__).resolve().parents[2]  # src/ of a checkout, or site-packages
    candidates = [*HIDDEN_DIRS, str(package), os.getcwd()]
    if (package.parent / "pyproject.toml").exists():
        candidates.append(str(package.parent))
    hidden = []
    for path in candidates:
        inside_tmp = path == "/tmp" or path.startswith("/tmp/")
        covers_interpreter = INTERPRETER.startswith(path.rstrip("/") + "/")
        if os.path.isdir(path) and path != "/" and not inside_tmp and not covers_interpreter and path not in hidden:
            hidden.append(path)
    return hidden
