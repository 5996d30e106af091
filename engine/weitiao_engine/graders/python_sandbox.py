"""`python` graders: the user's `grade(sample, item)` in a separate, walled process (sandbox_child.py).

The engine only talks to that process over pipes and watches it: a sample that runs past its wall-clock
or CPU budget gets the process killed (its whole process group); a crash, a MemoryError, a refused socket
or file write — any failure — scores 0 with the reason, and the next sample gets a fresh process. The
caller (a training job, an evaluation) never sees more than a score and an error string.

>>> with PythonSandbox("def grade(sample, item):\\n    return float(sample['output_text'] == item['label'])") as box:
...     box.grade({"output_text": "好评"}, {"label": "好评"}).score
1.0
"""

from __future__ import annotations

import ast
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

CHILD = Path(__file__).with_name("sandbox_child.py")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class SandboxLimits:
    cpu_seconds: float = 10.0  # per sample
    wall_seconds: float = 20.0  # per sample; the process start counts towards the first sample
    memory_mb: int = 1024  # address space of the grader process (OpenAI allows 2 GB)


@dataclass
class SandboxOutcome:
    score: float = 0.0
    error: Optional[str] = None  # None: graded
    kind: Optional[str] = None  # runtime | memory | timeout | cpu | crash | fatal
    stdout: str = ""
    walls: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def check_source(source: str) -> None:
    """Validation without running anything: the source compiles and defines `grade` at module level."""
    try:
        tree = ast.parse(source, "<grader>")
    except SyntaxError as e:
        raise ValueError(f"source does not compile: line {e.lineno}: {e.msg} / 源代码有语法错误（第 {e.lineno} 行）") from None
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if "grade" not in names:
        raise ValueError("source must define grade(sample, item) / 源代码须定义 grade(sample, item) 函数")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc; 0 elsewhere, where the rlimit still holds)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


class PythonSandbox:
    """One grader's source, graded sample by sample in a walled process that is replaced after any failure."""

    def __init__(self, source: str, limits: SandboxLimits = SandboxLimits()):
        self.source = source
        self.limits = limits
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.walls: list[str] = []
        self.missing: list[str] = []
        self.fatal: Optional[str] = None
        self._buffer = b""
        self._cwd = tempfile.mkdtemp(prefix="weitiao-grader-")
        self._lifetime_cpu = int(limits.cpu_seconds * 20 + 5)

    def __enter__(self) -> "PythonSandbox":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _start(self) -> None:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(CHILD)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=self._cwd, env=env, start_new_session=True,  # its own process group: one kill reaches all it starts
        )
        self._buffer = b""
        # The CPU rlimit is the process's whole life: a generous backstop; the per-sample budget is watched here.
        config = {"source": self.source, "memory_bytes": self.limits.memory_mb << 20, "cpu_seconds": self._lifetime_cpu}
        self._write(config)

    def _write(self, obj: Any) -> bool:
        assert self.proc and self.proc.stdin
        try:
            self.proc.stdin.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def _read(self, deadline: float, cpu_start: float) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        """The child's next line, or (None, reason) when it dies or overruns its budget."""
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if time.monotonic() > deadline:
                return None, "timeout"
            if _cpu_seconds(self.proc.pid) - cpu_start > self.limits.cpu_seconds:
                return None, "cpu"
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None, "crash"
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line), None

    def _kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe and pipe.close()
            except OSError:
                pass
        self.proc = None

    def _failure(self, reason: str, returncode: Optional[int]) -> SandboxOutcome:
        limits = self.limits
        message = {
            "timeout": f"the grader ran longer than {limits.wall_seconds:g} s and was stopped / 评分程序运行超过 {limits.wall_seconds:g} 秒，已终止",
            "cpu": f"the grader used more than {limits.cpu_seconds:g} s of CPU and was stopped / 评分程序 CPU 时间超过 {limits.cpu_seconds:g} 秒，已终止",
        }.get(reason)
        if message is None:
            sig = -returncode if returncode is not None and returncode < 0 else None
            how = f"signal {signal.Signals(sig).name}" if sig else f"exit code {returncode}"
            message = f"the grader process died ({how}) / 评分进程异常退出（{how}）"
            if sig == signal.SIGXCPU:
                reason, message = "cpu", f"the grader used up its CPU limit and was stopped / 评分程序 CPU 时间用尽，已终止"
        return SandboxOutcome(error=message, kind=reason, walls=self.walls, missing=self.missing)

    def grade(self, sample: dict[str, Any], item: Any) -> SandboxOutcome:
        """One sample's score; never raises for anything the user's code does."""
        if self.fatal:
            return SandboxOutcome(error=self.fatal, kind="fatal", walls=self.walls, missing=self.missing)
        deadline = time.monotonic() + self.limits.wall_seconds
        if self.proc is not None and _cpu_seconds(self.proc.pid) + self.limits.cpu_seconds >= self._lifetime_cpu - 1:
            self.close_process()  # near its lifetime CPU rlimit: a fresh process, so no sample is blamed for the others' time
        if self.proc is None:
            self._start()
            hello, reason = self._read(deadline, 0.0)
            if hello is None or "fatal" in hello:
                returncode = self.proc.poll() if self.proc else None
                self._kill()
                if hello is not None:
                    self.fatal = f"the grader's source failed to load: {hello['fatal']} / 评分程序加载失败"
                    return SandboxOutcome(error=self.fatal, kind="fatal", stdout=hello.get("traceback", ""))
                return self._failure(reason or "crash", returncode)
            self.walls, self.missing = hello["walls"], hello["missing"]
        assert self.proc is not None
        cpu_start = _cpu_seconds(self.proc.pid)
        if not self._write({"sample": sample, "item": item}):
            returncode = self.proc.poll()
            self._kill()
            return self._failure("crash", returncode)
        answer, reason = self._read(deadline, cpu_start)
        if answer is None:
            returncode = self.proc.wait() if reason == "crash" else None  # its stdout closed: it is exiting
            self._kill()
            return self._failure(reason or "crash", returncode)
        if "score" in answer:
            return SandboxOutcome(score=answer["score"], stdout=answer.get("stdout", ""), walls=self.walls, missing=self.missing)
        return SandboxOutcome(error=answer["error"], kind=answer.get("kind", "runtime"), stdout=answer.get("traceback", "") or answer.get("stdout", ""),
                              walls=self.walls, missing=self.missing)

    def close(self) -> None:
        self.close_process()
        try:
            os.rmdir(self._cwd)
        except OSError:
            pass

    def close_process(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin and self.proc.stdin.close()  # end of input: the child's loop ends by itself
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._kill()
