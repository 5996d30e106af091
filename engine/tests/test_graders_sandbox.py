"""`python` graders in their sandbox: a grader that loops, sleeps, allocates 10 GB, opens a socket, writes a
file, starts a subprocess or kills its own process scores 0 with the reason, and grading goes on — the
next sample gets a working process and this (the caller's) process is untouched.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from weitiao_engine.graders import GraderRunner, SandboxLimits, validate

SOURCE = '''
import os

def grade(sample, item):
    what = item.get("do")
    print("graded", what)  # the user's prints must not disturb the protocol
    if what == "loop":
        while True:
            pass
    if what == "sleep":
        import time
        time.sleep(60)
    if what == "allocate":
        block = bytearray(10 * 1024 ** 3)
    if what == "socket":
        import socket
        socket.create_connection(("127.0.0.1", 9))
    if what == "write":
        with open(item["path"], "w") as f:
            f.write("escaped")
    if what == "subprocess":
        import subprocess
        subprocess.run(["true"])
    if what == "exit":
        os._exit(3)
    if what == "interfaces":
        with open("/proc/self/net/dev") as f:
            return float(len(f.read().splitlines()) - 2)
    return float(sample["output_text"] == item["label"])
'''


@pytest.fixture()
def runner():
    grader = validate({"type": "python", "name": "py", "source": SOURCE})
    logged: list[str] = []
    with GraderRunner(grader, python_limits=SandboxLimits(cpu_seconds=1, wall_seconds=4, memory_mb=512), on_error=logged.append) as r:
        r.logged = logged  # type: ignore[attr-defined]
        yield r


def test_failures_score_zero_with_the_reason_and_grading_goes_on(runner, tmp_path):
    target = tmp_path / "escaped.txt"
    cases = [
        # a loop is stopped by its CPU budget, or by the wall clock first when the machine is busy
        ("loop", "unresponsive_reward_error", "CPU|longer than 4 s"),
        ("sleep", "unresponsive_reward_error", "longer than 4 s"),
        ("allocate", "python_grader_runtime_error", "MemoryError"),
        ("socket", "python_grader_runtime_error", "not allowed"),
        ("write", "python_grader_runtime_error", "writing is not allowed"),
        ("subprocess", "python_grader_runtime_error", "not allowed"),
        ("exit", "python_grader_server_error", "exit code 3"),
    ]
    assert runner.grade("好评", {"label": "好评"})["reward"] == 1.0
    for what, flag, reason in cases:
        started = time.monotonic()
        result = runner.grade("好评", {"label": "好评", "do": what, "path": str(target)})
        assert time.monotonic() - started < 15, what
        errors = result["metadata"]["errors"]
        assert result["reward"] == 0.0, what
        assert errors[flag] is True, (what, errors)
        assert re.search(reason, errors["python_grader_runtime_error_details"]), (what, errors)
        # after every failure the next sample is graded by a working process
        assert runner.grade("好评", {"label": "好评"})["reward"] == 1.0, what
    assert not target.exists()
    assert len(runner.logged) == len(cases)  # every failure's reason was logged
    assert os.getpid() > 0  # this process is alive and well


def test_walls_where_the_kernel_allows(runner):
    result = runner.grade("好评", {"label": "好评", "do": "interfaces"})
    sandbox = result["weitiao"]["notes"]["sandbox"]
    assert "audit hook (no sockets, subprocesses, ctypes or file writes)" in sandbox["walls"]
    if "network namespace (no network)" not in sandbox["walls"]:
        pytest.skip(f"no namespaces here: {sandbox['missing']}")
    assert result["reward"] == 1.0  # /proc/self/net/dev lists only the namespace's own loopback
    assert "read-only filesystem" in sandbox["walls"]


def test_a_source_that_fails_to_load_scores_zero_for_every_sample():
    grader = validate({"type": "python", "name": "py", "source": "raise RuntimeError('boom')\ndef grade(sample, item):\n    return 1.0"})
    with GraderRunner(grader) as runner:
        results = [runner.grade("x", {}) for _ in range(2)]
    for result in results:
        assert result["reward"] == 0.0
        assert "boom" in result["metadata"]["errors"]["python_grader_runtime_error_details"]


def test_a_non_number_is_a_runtime_error():
    grader = validate({"type": "python", "name": "py", "source": "def grade(sample, item):\n    return '1'"})
    with GraderRunner(grader) as runner:
        result = runner.grade("x", {})
    assert result["reward"] == 0.0 and "must return a number" in result["metadata"]["errors"]["python_grader_runtime_error_details"]
