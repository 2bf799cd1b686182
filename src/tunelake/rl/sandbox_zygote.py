"""The sandbox's warm interpreter: started once by sandbox.py (as `python -I -S -c <this file's text>`, inside
`unshare -n -m` where the host allows), it imports only the standard library and forks one child per program.

Protocol: one JSON request per stdin line ({"source", "cpu", "wall", "memory", "processes", "file_size", "output",
"uid", "gid", "pid_namespace"}), one JSON answer per stdout line ({"status", "passed", "reason"}).

Per program: a child C calls unshare(CLONE_NEWPID) and forks G, the first process of a fresh PID namespace; G sets
the limits, drops to the unprivileged uid and runs the program with its tests. When G ends or is killed, the kernel
kills every process left in its namespace (a setsid()'d grandchild included). This process is a child subreaper, so G
is reparented here when C exits and its exit status and rusage come back to us.
"""

import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback

CLONE_NEWPID = 0x20000000
PR_SET_CHILD_SUBREAPER = 36
SOURCE_NAME = "solution.py"
REPORT_FD = 3
REPORT_CAP = 64 * 1024

libc = ctypes.CDLL(None, use_errno=True)


def failure_reason(exc: BaseException, memory: int) -> str:
    """The first failing line of the program as a user reads it: the exception and the line of solution.py that
    raised it (for a failed assert, the assert itself)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SOURCE_NAME]
    where = f" at line {frames[-1].lineno}: {frames[-1].line}" if frames else ""
    message = str(exc)
    if isinstance(exc, MemoryError):
        message = f"over the memory limit of {memory // (1024 * 1024)} MiB"
    text = f"{type(exc).__name__}{': ' + message if message else ''}{where}"
    return text[:500]


def run_program(request: dict, work: str, nonce: str) -> None:
    """G: limits, privilege drop, then the program and its tests in this one process. Never returns."""
    report = os.fdopen(REPORT_FD, "w")

    def finish(status: str, reason: str) -> None:
        report.write(nonce + json.dumps({"status": status, "reason": reason}) + "\n")
        report.flush()
        os._exit(0)

    try:
        os.chdir(work)
        cpu = max(1, int(request["cpu"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # The hard limit one second later turns SIGXCPU (which a program may catch) into SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (request["memory"], request["memory"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["file_size"], request["file_size"]))
        resource.setrlimit(resource.RLIMIT_NPROC, (request["processes"], request["processes"]))
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(request["gid"])
            os.setuid(request["uid"])
        if os.geteuid() == 0 or os.getegid() == 0 and request["gid"] != 0:
            finish("infra_error", "could not drop privileges")
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "TMPDIR": work})
        code = compile(request["source"], SOURCE_NAME, "exec")
    except SyntaxError as exc:
        finish("failed", f"SyntaxError at line {exc.lineno}: {exc.msg}")
    except OSError as exc:
        finish("infra_error", f"could not set up the sandbox: {exc}")
    with open(SOURCE_NAME, "w") as f:  # for the tracebacks' source lines
        f.write(request["source"])
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as exc:
        finish("failed", f"exited (sys.exit({exc.code!r})) before the tests finished")
    except BaseException as exc:  # the program's own error is its verdict  # noqa: BLE001
        finish("failed", failure_reason(exc, request["memory"]))
    sys.stdout.flush()
    finish("ok", "")


def fork_program(request: dict, work: str, nonce: str, out_w: int, report_w: int) -> int:
    """Fork C, which makes the PID namespace and forks G; returns G's pid (ours once C has exited)."""
    pid_r, pid_w = os.pipe()
    c = os.fork()
    if c == 0:
        try:
            os.close(pid_r)
            if request["pid_namespace"] and libc.unshare(CLONE_NEWPID) != 0:
                os.write(pid_w, b"-%d" % ctypes.get_errno())
                os._exit(0)
            g = os.fork()
            if g == 0:
                os.setsid()
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
                os.dup2(report_w, REPORT_FD)
                os.closerange(REPORT_FD + 1, 1 << 16)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                run_program(request, work, nonce)
            os.write(pid_w, b"%d" % g)
        finally:
            os._exit(0)
    os.close(pid_w)
    with os.fdopen(pid_r, "rb") as f:
        answer = f.read()
    os.waitpid(c, 0)
    g = int(answer or b"-1")
    if g < 0:
        raise OSError(-g, f"could not start the program: {os.strerror(-g)}")
    return g


def kill_all(g: int) -> None:
    """SIGKILL G's process group; in a PID namespace killing G (its init) kills all the rest."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(g, signal.SIGKILL)


def judge(request: dict, g: int, out_r: int, report_r: int, nonce: str) -> dict:
    """Watch G until it ends, its wall time is up or its output is over the cap; then read its verdict."""
    deadline = time.monotonic() + request["wall"]
    pidfd = os.pidfd_open(g)
    output = 0
    report = b""
    killed = None
    open_fds = {out_r, report_r}
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            killed = {"status": "timeout", "reason": f"killed: wall time over {request['wall']:g} s"}
            break
        readable, _, _ = select.select([pidfd, *open_fds], [], [], left)
        if out_r in readable:
            chunk = os.read(out_r, 65536)
            output += len(chunk)
            if not chunk:
                open_fds.discard(out_r)
            elif output > request["output"]:
                killed = {"status": "failed", "reason": f"killed: output over {request['output']} bytes"}
                break
        if report_r in readable:
            chunk = os.read(report_r, 65536)
            report += chunk[: max(0, REPORT_CAP - len(report))]
            if not chunk:
                open_fds.discard(report_r)
        if pidfd in readable:
            break
    kill_all(g)
    _, status, usage = os.wait4(g, 0)
    reap_group(g)
    os.close(pidfd)
    os.set_blocking(report_r, False)
    try:
        while chunk := os.read(report_r, 65536):
            report += chunk[: max(0, REPORT_CAP - len(report))]
    except BlockingIOError:
        pass
    if killed:
        return killed
    for line in report.decode("utf-8", "replace").splitlines():
        if line.startswith(nonce):
            verdict = json.loads(line[len(nonce) :])
            return {"status": verdict["status"], "reason": verdict["reason"]}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or usage.ru_utime + usage.ru_stime >= int(request["cpu"] + 0.999):
            return {"status": "timeout", "reason": f"killed: CPU time over {request['cpu']:g} s"}
        if sig == signal.SIGXFSZ:
            return {"status": "failed", "reason": f"killed: a file over {request['file_size']} bytes"}
        return {"status": "failed", "reason": f"killed by {signal.Signals(sig).name}"}
    code = os.waitstatus_to_exitcode(status)
    return {"status": "failed", "reason": f"exited (code {code}) before the tests finished"}


def serve_one(request: dict) -> dict:
    work = tempfile.mkdtemp(prefix="run-")
    out_r, out_w = os.pipe()
    report_r, report_w = os.pipe()
    nonce = os.urandom(16).hex()
    try:
        os.chown(work, request["uid"], request["gid"]) if os.geteuid() == 0 else None
        try:
            g = fork_program(request, work, nonce, out_w, report_w)
        except OSError as exc:
            return {"status": "infra_error", "reason": str(exc)}
        finally:
            os.close(out_w)
            os.close(report_w)
        return judge(request, g, out_r, report_r, nonce)
    finally:
        os.close(out_r)
        os.close(report_r)
        shutil.rmtree(work, ignore_errors=True)


def reap_group(g: int) -> None:
    """Kill and collect what is left of G's process group (G's orphans are reparented here, the subreaper). In a PID
    namespace nothing is left; without one, a setsid() child has left the group and outlives the run."""
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)
        try:
            os.waitpid(-g, 0)
        except ChildProcessError:
            return


def main() -> None:
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for line in sys.stdin:
        sys.stdout.write(json.dumps(serve_one(json.loads(line))) + "\n")
        sys.stdout.flush()


main()
