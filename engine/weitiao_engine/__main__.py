"""Entry point: `python -m weitiao_engine <command>` with the request as one JSON line on stdin.

Each command lives in its own module with a `run(request) -> dict` function; this file only
validates the request, says hello, and turns the outcome into a `result` or `error` event.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path

from . import __version__, allocator
from .protocol import PROTOCOL_VERSION, REQUESTS, EngineError, emit

# command -> module that implements it
MODULES = {
    "create-tiny": "weitiao_engine.tiny",
    "count-tokens": "weitiao_engine.tokens",
    "train": "weitiao_engine.recipes",  # recipes/__init__.py picks the recipe by request.method
    "evaluate": "weitiao_engine.evaluate",
    "chat": "weitiao_engine.generate",
    "serve": "weitiao_engine.serve",
    "estimate": "weitiao_engine.estimate",
    "export": "weitiao_engine.export",
    "grade": "weitiao_engine.graders",  # graders/run.py
    "score-answers": "weitiao_engine.eval_metrics",
}
# Commands that never need torch say hello without importing it: that import alone takes seconds on a
# busy CPU, and the graders API answers while a user waits (cosine's embedding model imports it itself).
TORCH_FREE = {"grade", "score-answers"}


def main(argv: list[str]) -> int:
    # `--request-file PATH`: the request is that file, not stdin. The scale-out launcher (distributed.py)
    # starts its torchrun workers this way; it has said hello already, so they do not.
    request_file = argv[2] if len(argv) == 3 and argv[1] == "--request-file" else None
    if len(argv) not in (1, 3) or argv[0] not in MODULES or (len(argv) == 3 and request_file is None):
        print(f"usage: python -m weitiao_engine {{{','.join(MODULES)}}} [--request-file PATH] < request.json", file=sys.stderr)
        return 2
    command = argv[0]
    allocator.use_tcmalloc()  # first: it re-executes the process with tcmalloc preloaded (allocator.py)
    try:
        if command in TORCH_FREE:
            from importlib.metadata import version

            torch_version, device, threads = version("torch"), "cpu", os.cpu_count() or 1
        else:
            import torch

            torch_version, device, threads = torch.__version__, "cuda" if torch.cuda.is_available() else "cpu", torch.get_num_threads()
        if request_file is None:
            emit(
                "hello",
                protocol_version=PROTOCOL_VERSION,
                engine_version=__version__,
                command=command,
                pid=os.getpid(),
                torch_version=torch_version,
                device=device,
                threads=threads,
                allocator=allocator.in_use(),
            )
        raw = sys.stdin.readline() if request_file is None else Path(request_file).read_text(encoding="utf-8")
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as e:
            raise EngineError("invalid_request", f"request is not JSON: {e}") from e
        from pydantic import ValidationError

        try:
            request = REQUESTS[command].model_validate(payload)
        except ValidationError as e:
            # Every problem at once, each with the field it concerns.
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            first = ".".join(map(str, e.errors()[0]["loc"])) if e.errors() else None
            raise EngineError("invalid_request", f"invalid {command} request: {problems}", first) from e
        module = importlib.import_module(MODULES[command])
        result = module.run(request)
        emit("result", data=result)
        return 0
    except EngineError as e:
        emit("error", code=e.code, message=e.message, param=e.param)
        return 1
    except KeyboardInterrupt:
        emit("error", code="cancelled", message="interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - the control plane must always get an error event
        traceback.print_exc(file=sys.stderr)
        emit("error", code="engine_error", message=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
