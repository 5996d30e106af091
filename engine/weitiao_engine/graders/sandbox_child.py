"""The process a `python` grader runs in (started by python_sandbox.py as `python -I -B sandbox_child.py`).

Standalone on purpose: it imports nothing of the engine, so its start is quick and small. Walls, raised
in this order before the user's code is compiled:
1. namespaces: a new user, network, mount, IPC and UTS namespace (no network at all: not even loopback
   is up), and the whole mount tree made read-only (mount_setattr, recursive) — where the kernel allows;
2. rlimits: address space, CPU seconds, no core files, no file may grow (RLIMIT_FSIZE 0), few open files;
3. an audit hook (PEP 578) refusing sockets, subprocesses/fork/exec, ctypes, writes to files, renames and
   deletions, rlimit changes and other processes' /proc entries — a second wall where 1 is missing.
Protocol: stdin line 1 is {source, memory_bytes, cpu_seconds}; then one {sample, item} line per sample.
stdout (a private copy of fd 1; the user's prints are captured) gets {ready, walls, missing} or {fatal},
then one {score} or {error, kind} line per sample.
"""

import io
import json
import os
import resource
import signal
import sys
import traceback

_proto = os.dup(1)
os.dup2(2, 1)  # anything written to fd 1 by C code lands on stderr, not in the protocol


def send(obj):
    os.write(_proto, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))


def raise_namespaces(walls, missing):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    NEWUSER, NEWNET, NEWNS, NEWIPC, NEWUTS = 0x10000000, 0x40000000, 0x00020000, 0x08000000, 0x04000000
    if libc.unshare(NEWUSER | NEWNET | NEWNS | NEWIPC | NEWUTS) != 0:
        missing.append(f"namespaces: {os.strerror(ctypes.get_errno())}")
        return
    walls.append("network namespace (no network)")
    MS_REC, MS_PRIVATE = 0x4000, 1 << 18
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        missing.append(f"read-only filesystem: {os.strerror(ctypes.get_errno())}")
        return

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(0x1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
    SYS_mount_setattr, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000  # 442 on every architecture
    if libc.syscall(SYS_mount_setattr, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        missing.append(f"read-only filesystem: {os.strerror(ctypes.get_errno())}")
        return
    walls.append("read-only filesystem")


def set_limits(memory_bytes, cpu_seconds, walls):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails with EFBIG instead of killing
    for limit, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_NOFILE, 64),
    ):
        resource.setrlimit(limit, (value, value))
    walls.append(f"rlimits (memory {memory_bytes >> 20} MB, CPU {cpu_seconds} s, no file writes)")


_REFUSED_PREFIXES = (
    "socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "os.remove", "os.unlink", "os.rmdir", "os.rename", "os.replace", "os.mkdir",
    "os.chmod", "os.chown", "os.truncate", "os.link", "os.symlink", "os.utime", "os.chroot", "os.setuid",
    "shutil.", "ctypes.", "resource.setrlimit", "resource.prlimit", "pty.", "webbrowser.", "urllib.Request",
    "http.client.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "telnetlib.", "nntplib.", "sqlite3.connect",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_OWN_PROC = (f"/proc/{os.getpid()}/", "/proc/self/")


def audit_hook(event, args):
    if event == "import" and args and args[0] in ("_posixsubprocess", "_socket", "_ctypes"):
        raise PermissionError(f"sandbox: importing {args[0]} is not allowed / 沙箱禁止导入 {args[0]}")
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            raise PermissionError(f"sandbox: opening {path!r} for writing is not allowed / 沙箱禁止写文件")
        text = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
        if text.startswith("/proc/") and not text.startswith(_OWN_PROC) and text[6:7].isdigit():
            raise PermissionError(f"sandbox: reading {text} is not allowed / 沙箱禁止读取其他进程信息")
        return
    if event.startswith(_REFUSED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed / 沙箱禁止 {event}")


def main():
    config = json.loads(sys.stdin.readline())
    walls, missing = [], []
    try:
        raise_namespaces(walls, missing)
    except Exception as e:  # noqa: BLE001 - no namespaces on this OS: the other walls still stand
        missing.append(f"namespaces: {e}")
    set_limits(config["memory_bytes"], config["cpu_seconds"], walls)
    # What the user's code may need later is imported now, while ctypes and sockets still load.
    sys.addaudithook(audit_hook)
    walls.append("audit hook (no sockets, subprocesses, ctypes or file writes)")
    namespace = {"__name__": "grader"}
    real_stdout = sys.stdout
    try:
        sys.stdout = io.StringIO()
        exec(compile(config["source"], "<grader>", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source defines no function grade(sample, item) / 源代码中没有 grade(sample, item) 函数")
    except BaseException as e:  # noqa: BLE001 - the user's module-level code may raise anything
        send({"fatal": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=-3)[-2000:]})
        return
    finally:
        sys.stdout = real_stdout
    send({"ready": True, "walls": walls, "missing": missing})
    for line in sys.stdin:
        request = json.loads(line)
        captured = io.StringIO()
        sys.stdout = captured
        try:
            score = grade(request["sample"], request["item"])
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise TypeError(f"grade() must return a number, got {type(score).__name__}")
            out = {"score": float(score)}
        except MemoryError:
            out = {"error": f"MemoryError: the grader exceeded its memory limit ({config['memory_bytes'] >> 20} MB)", "kind": "memory"}
        except BaseException as e:  # noqa: BLE001 - SystemExit too: one sample's failure scores 0, the next goes on
            out = {"error": f"{type(e).__name__}: {e}", "kind": "runtime", "traceback": traceback.format_exc(limit=-3)[-2000:]}
        finally:
            sys.stdout = real_stdout
        out["stdout"] = captured.getvalue()[-2000:]
        send(out)


if __name__ == "__main__":
    main()
