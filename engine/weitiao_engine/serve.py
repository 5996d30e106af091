"""Command `serve`: the warm inference process, one per control plane, answering chat requests one at a time.

```
$ python -m weitiao_engine serve
{"type": "hello", "command": "serve", "pid": 4242, …}
< {"max_models": 2}
< {"id": "r1", "command": "chat", "request": {"model": "/…/models/tiny", "messages": […], "max_tokens": 8}}
< {"id": "r2", "command": "chat", "request": {"model": "/…/models/tiny", "adapter": "/…/jobs/ftjob-1/model", …}}
{"type": "token", "text": "好", "request_id": "r1"}
{"type": "result", "data": {"text": "好评", …}, "request_id": "r1"}
{"type": "token", "text": "差", "request_id": "r2"}
…
< {"id": "s1", "command": "shutdown"}
{"type": "result", "data": {"served": 2}}
```
Requests are answered strictly in arrival order, so the tokens of two answers never interleave (two CPU
cores cannot run two generations faster than one after the other anyway). A base model is loaded once and
kept (least recently used out, `max_models`); each fine-tune's LoRA adapter is loaded into it once under
its own PEFT name and switched on per request, or all adapters are switched off for a base request. An
adapter directory whose files changed on disk is loaded again. stdin is read on a thread, so `cancel`
reaches a running generation between two tokens and a client that went away does not hold the queue.
"""

from __future__ import annotations

import gc
import json
import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

from pydantic import ValidationError

from .generate import answer_request
from .loading import _require_dir, load_model, set_threads
from .protocol import ChatRequest, EngineError, ServeCall, ServeRequest, emit

CANCELLED = "the chat request was cancelled / 对话请求已取消"


def run(request: ServeRequest, stdin: Optional[TextIO] = None) -> dict[str, Any]:
    """Answers `chat` calls from stdin until `shutdown` or end of input; returns `{served}`, the answers given."""
    set_threads(request.threads)
    inbox = Inbox(stdin if stdin is not None else sys.stdin)
    models = Models(request.max_models, request.max_adapters, request.threads)
    served = 0
    while (call := inbox.take()) is not None:
        try:
            served += answer(call, inbox, models)
        finally:
            inbox.done()
    return {"served": served}


def answer(call: ServeCall, inbox: "Inbox", models: "Models") -> bool:
    """Runs one chat call; its outcome is a `result` (True) or an `error` event, carrying the call's id."""
    rid = call.id
    try:
        request = _validate_chat(call.request)
        with models.use(request.model, request.adapter) as (model, tokenizer, decoder):

            def check_cancelled(_module: Any, _args: Any) -> None:
                if inbox.cancel_running.is_set():
                    raise Cancelled()

            # A pre-hook on the decoder runs before every forward pass, i.e. between two tokens. (The decoder,
            # not the top model: PEFT calls the top model's `forward` directly, which skips hooks.)
            hook = decoder.register_forward_pre_hook(check_cancelled)
            try:
                on_text = (lambda piece: emit("token", text=piece, request_id=rid)) if request.stream else None
                result = answer_request(model, tokenizer, request, on_text)
            finally:
                hook.remove()
        emit("result", data=result, request_id=rid)
        return True
    except Cancelled:
        emit("error", code="cancelled", message=CANCELLED, param=None, request_id=rid)
    except EngineError as e:
        emit("error", code=e.code, message=e.message, param=e.param, request_id=rid)
    except Exception as e:  # noqa: BLE001 - one bad request must not end the process that serves the others
        traceback.print_exc(file=sys.stderr)
        emit("error", code="engine_error", message=f"{type(e).__name__}: {e}", param=None, request_id=rid)
    return False


def _validate_chat(payload: Optional[dict[str, Any]]) -> ChatRequest:
    try:
        return ChatRequest.model_validate(payload if payload is not None else {})
    except ValidationError as e:
        # Every problem at once, each with the field it concerns (as the one-shot commands report them).
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        first = ".".join(map(str, e.errors()[0]["loc"])) if e.errors() else None
        raise EngineError("invalid_request", f"invalid chat request: {problems}", first) from e


class Cancelled(Exception):
    """Raised inside a forward pass when the running request was cancelled."""


# ------------------------------------------------------------------------------------------------- inbox


class Inbox:
    """The calls read from stdin by a thread: chats queue up in order, cancels and shutdown act at once."""

    def __init__(self, stdin: TextIO):
        self.cancel_running = threading.Event()  # set = stop the running generation before its next token
        self._queue: "queue.Queue[Optional[ServeCall]]" = queue.Queue()
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._cancelled: set[str] = set()  # queued ids to drop when their turn comes
        self._running: Optional[str] = None
        self._closing = False
        threading.Thread(target=self._read, args=(stdin,), name="serve-stdin", daemon=True).start()

    def take(self) -> Optional[ServeCall]:
        """The next chat call to answer (skipping cancelled ones), or None once shutting down."""
        while True:
            call = self._queue.get()
            if call is None:
                return None
            with self._lock:
                self._queued.discard(call.id)
                dropped = self._closing or call.id in self._cancelled
                self._cancelled.discard(call.id)
                if not dropped:
                    self._running = call.id
                    self.cancel_running.clear()
                    return call
            emit("error", code="cancelled", message=CANCELLED, param=None, request_id=call.id)

    def done(self) -> None:
        with self._lock:
            self._running = None

    def _read(self, stdin: TextIO) -> None:
        for line in stdin:
            if not line.strip():
                continue
            try:
                call = ServeCall.model_validate_json(line)
            except ValidationError as e:
                _reject_line(line, e)
                continue
            if call.command == "chat":
                with self._lock:
                    self._queued.add(call.id)
                self._queue.put(call)
            elif call.command == "cancel":
                with self._lock:
                    if call.target is not None and call.target == self._running:
                        self.cancel_running.set()
                    elif call.target in self._queued:
                        self._cancelled.add(call.target)
                    # Any other target has already been answered: nothing to do.
            else:
                break
        # `shutdown`, or stdin closed because the control plane is gone: no one waits for the rest.
        with self._lock:
            self._closing = True
            self.cancel_running.set()
        self._queue.put(None)


def _reject_line(line: str, error: ValidationError) -> None:
    """An unreadable call: an error for its id when it has one, else a log line (there is no one to answer)."""
    try:
        payload = json.loads(line)
        rid = payload.get("id") if isinstance(payload, dict) else None
    except json.JSONDecodeError:
        rid = None
    problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(line)'}: {err['msg']}" for err in error.errors())
    message = f"invalid serve call: {problems}"
    if isinstance(rid, str) and rid:
        first = ".".join(map(str, error.errors()[0]["loc"])) if error.errors() else None
        emit("error", code="invalid_request", message=message, param=first or None, request_id=rid)
    else:
        emit("log", level="error", message=f"{message}: {line.strip()[:200]}")


# ------------------------------------------------------------------------------------------------ models


@dataclass
class Loaded:
    """A base model kept in memory, with the adapters loaded into it."""

    model: Any  # the transformers model, or the PeftModel wrapping it once an adapter was loaded
    tokenizer: Any
    decoder: Any  # the transformer stack inside, called once per forward pass (where cancellation is checked)
    adapters: "OrderedDict[str, tuple[str, tuple]]" = field(default_factory=OrderedDict)  # dir -> (name, stamp); LRU first


class Models:
    """Base models by directory (least recently used first out), each holding its adapters under PEFT names."""

    def __init__(self, max_models: int, max_adapters: int, threads: Optional[int] = None):
        self.max_models = max_models
        self.max_adapters = max_adapters
        self.threads = threads
        self._loaded: "OrderedDict[str, Loaded]" = OrderedDict()
        self._names = 0  # adapter names are never reused, so a reload can load the new before dropping the old

    @contextmanager
    def use(self, model_dir: str, adapter_dir: Optional[str]) -> Iterator[tuple[Any, Any, Any]]:
        """(model, tokenizer, decoder) with exactly `adapter_dir`'s adapter switched on, or none for None."""
        loaded = self._base(model_dir)
        if adapter_dir is None:
            if loaded.adapters:
                with loaded.model.disable_adapter():  # every LoRA layer and saved module falls back to the base
                    yield loaded.model, loaded.tokenizer, loaded.decoder
            else:
                yield loaded.model, loaded.tokenizer, loaded.decoder
            return
        name = self._adapter(model_dir, loaded, adapter_dir)
        loaded.model.set_adapter(name, inference_mode=True)
        yield loaded.model, loaded.tokenizer, loaded.decoder

    def _base(self, model_dir: str) -> Loaded:
        key = str(Path(model_dir).resolve())
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        while len(self._loaded) >= self.max_models:
            self._loaded.popitem(last=False)
            gc.collect()  # free the evicted weights before loading the next ones
        started = time.perf_counter()
        model, tokenizer = load_model(model_dir, threads=self.threads)
        emit("log", level="info", message=f"loaded {key} in {time.perf_counter() - started:.1f}s")
        loaded = Loaded(model=model, tokenizer=tokenizer, decoder=model.base_model)
        self._loaded[key] = loaded
        return loaded

    def _adapter(self, model_dir: str, loaded: Loaded, adapter_dir: str) -> str:
        """The PEFT name of `adapter_dir` in `loaded`, loading it (again, if its files changed) when needed."""
        _require_dir(adapter_dir, "adapter_config.json", "adapter", "adapter directory", "适配器目录")
        key = str(Path(adapter_dir).resolve())
        stamp = _stamp(key)
        known = loaded.adapters.get(key)
        if known is not None and known[1] == stamp:
            loaded.adapters.move_to_end(key)
            return known[0]
        self._names += 1
        name = f"a{self._names}"
        try:
            if not loaded.adapters:
                from peft import PeftModel

                loaded.model = PeftModel.from_pretrained(loaded.model, key, adapter_name=name)
            else:
                loaded.model.load_adapter(key, adapter_name=name)
        except Exception as e:  # e.g. an adapter trained on another base: shapes do not match
            # A failed load may leave half an adapter in the base's layers: drop the base, reload it next time.
            self._loaded.pop(str(Path(model_dir).resolve()), None)
            gc.collect()
            raise EngineError("invalid_file", f"{adapter_dir}: cannot load the adapter: {e} / 无法加载适配器", "adapter") from e
        loaded.model.eval()
        stale = [known[0]] if known is not None else []
        loaded.adapters[key] = (name, stamp)
        loaded.adapters.move_to_end(key)
        while len(loaded.adapters) > self.max_adapters:
            stale.append(loaded.adapters.popitem(last=False)[1][0])
        for old in stale:
            loaded.model.delete_adapter(old)
        return name


def _stamp(adapter_dir: str) -> tuple:
    """What identifies an adapter directory's contents: each file's name, size and modification time."""
    return tuple(sorted((p.name, s.st_size, s.st_mtime_ns) for p in Path(adapter_dir).iterdir() if p.is_file() for s in [p.stat()]))
