"""The code sandbox: real programs that try to escape, each asserting the escape failed and the run came back."""

import json
import os
import socket
import uuid
from pathlib import Path

import pytest

from tunelake.rl.sandbox import SANDBOX_UID, Limits, namespaces_available, run_tests

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
SMALL = Limits(cpu_seconds=1, wall_seconds=3, memory_bytes=256 * 1024 * 1024, processes=16, output_bytes=64 * 1024)


def mbpp_rows() -> list[dict]:
    return [json.loads(line) for line in (REAL / "mbpp_sample.jsonl").read_text().splitlines()]


def humaneval_rows() -> list[dict]:
    return [json.loads(line) for line in (REAL / "humaneval_sample.jsonl").read_text().splitlines()]


def sandbox_pids() -> set[int]:
    """Live processes of the sandbox's uid on this host."""
    pids = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid_line = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) == SANDBOX_UID:
            pids.add(int(status.parent.name))
    return pids


@pytest.mark.parametrize("row", mbpp_rows(), ids=lambda row: f"mbpp-{row['task_id']}")
def test_a_real_mbpp_solution_passes_its_tests(row):
    tests = "\n".join([row["test_setup_code"], *row["test_list"], *row["challenge_test_list"]])
    result = run_tests(row["code"], tests, limits=SMALL)
    assert (result.passed, result.status, result.reason) == (True, "ok", "")


@pytest.mark.parametrize("row", humaneval_rows(), ids=lambda row: row["task_id"])
def test_a_real_humaneval_solution_passes_its_tests(row):
    program = row["prompt"] + row["canonical_solution"]
    result = run_tests(program, f"{row['test']}\ncheck({row['entry_point']})", limits=SMALL)
    assert (result.passed, result.status, result.reason) == (True, "ok", "")


def test_a_wrong_solution_fails_with_its_first_failing_assertion():
    row = mbpp_rows()[0]  # task 502: find(n, m) is n % m
    result = run_tests("def find(n, m):\n    return n // m", "\n".join(row["test_list"]), limits=SMALL)
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason == "AssertionError at line 4: assert find(3,3) == 0"  # line 4 of program + tests


def test_exiting_before_the_tests_is_not_a_pass():
    for exit_call in ("import sys; sys.exit(0)", "import os; os._exit(0)"):
        result = run_tests(exit_call, "assert False", limits=SMALL)
        assert (result.passed, result.status) == (False, "failed")
        assert "before the tests finished" in result.reason


def test_an_infinite_loop_times_out():
    result = run_tests("while True:\n    pass", "", limits=SMALL)
    assert (result.passed, result.status) == (False, "timeout")
    assert result.reason.startswith("killed:")
    assert result.seconds < SMALL.wall_seconds + 2


def test_a_fork_bomb_is_contained_and_the_sandbox_still_works():
    before = sandbox_pids()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run_tests(bomb, "", limits=SMALL)
    assert (result.passed, result.status) == (False, "timeout")
    assert result.seconds < SMALL.wall_seconds + 2
    assert sandbox_pids() - before == set()
    assert run_tests("x = 1", "assert x == 1", limits=SMALL).passed


def test_a_memory_bomb_is_stopped():
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))"
    result = run_tests(bomb, "", limits=SMALL)
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason.startswith("MemoryError: over the memory limit of 256 MiB")


@pytest.mark.skipif(os.geteuid() != 0, reason="without root there is no uid drop: the program reads what we can")
def test_files_outside_the_working_directory_cannot_be_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the-secret-value")
    secret.chmod(0o600)
    for path in ("/etc/shadow", str(secret)):
        result = run_tests(f"data = open({path!r}).read()", "assert False, data", limits=SMALL)
        assert (result.passed, result.status) == (False, "failed")
        assert result.reason.startswith(("PermissionError", "FileNotFoundError")), result.reason
        assert "the-secret-value" not in result.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="without root there is no uid drop: the program writes where we can")
def test_files_outside_the_working_directory_cannot_be_written(tmp_path):
    tmp_path.chmod(0o777)  # even a directory anyone may write to on the host
    name = f"escape-{uuid.uuid4().hex}"
    targets = [tmp_path / name]
    if namespaces_available():  # without a mount namespace /tmp and /var/tmp stay writable
        targets += [Path("/tmp") / name, Path("/var/tmp") / name]
    program = "written = []\n" + "".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\n    written.append({str(t)!r})\nexcept OSError:\n    pass\n"
        for t in targets
    )
    result = run_tests(program, "assert written == [], written", limits=SMALL)
    assert (result.passed, result.status, result.reason) == (True, "ok", "")
    assert [t for t in targets if t.exists()] == []


def test_a_socket_to_a_local_server_does_not_connect():
    if not namespaces_available():
        pytest.skip("no network namespace on this host: the connection is not blocked")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
        result = run_tests(program, "", limits=SMALL)
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason.startswith(("OSError", "ConnectionRefusedError")), result.reason


def test_a_setsid_child_is_gone_after_the_run():
    if not namespaces_available():
        pytest.skip("no PID namespace on this host: a setsid() child outlives the run")
    before = sandbox_pids()
    program = (
        "import os, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.write(w, b'up')\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "started = os.read(r, 2)\n"
    )
    result = run_tests(program, "assert started == b'up'", limits=SMALL)
    assert (result.passed, result.status) == (True, "ok")
    assert sandbox_pids() - before == set()


def test_output_flooding_is_cut_off_quickly():
    result = run_tests("while True:\n    print('x' * 10000)", "", limits=SMALL)
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason == "killed: output over 65536 bytes"
    assert result.seconds < SMALL.wall_seconds


def test_a_file_over_the_size_limit_cannot_be_written():
    limits = SMALL.model_copy(update={"file_size_bytes": 1024 * 1024})
    result = run_tests("open('big.bin', 'wb').write(bytes(2 * 1024 * 1024))", "", limits=limits)
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason.startswith("OSError: [Errno 27] File too large"), result.reason
