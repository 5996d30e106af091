"""The `serve` command: a warm process answering queued chat calls, with adapters switched per request.

Each test talks to a real `python -m weitiao_engine serve` process over stdin/stdout and compares its
answers with the one-shot `chat` command's (as a subprocess, or its `run` in-process) on the tiny model.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

from conftest import ENGINE_DIR
from weitiao_engine import generate
from weitiao_engine.protocol import ChatRequest

MESSAGES = [
    {"role": "system", "content": "你是一位外卖评论好评差评评论专家。"},
    {"role": "user", "content": "送餐很快，味道也不错，下次还点！"},
]
OTHER = [{"role": "user", "content": "太难吃了，再也不点了。"}]


def make_adapter(base_dir: str, out: Path, seed: int, modules_to_save: Optional[list[str]] = None) -> str:
    """A LoRA adapter with random (non-zero) weights, so it really changes the answers; saved modules get noise too."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, modules_to_save=modules_to_save)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def adapters(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "lora": make_adapter(tiny_model, root / "lora", seed=7),
        "embed": make_adapter(tiny_model, root / "embed", seed=8, modules_to_save=["embed_tokens"]),
    }


def one_shot(monkeypatch: pytest.MonkeyPatch, **request: Any) -> dict[str, Any]:
    """The one-shot `chat` command's answer, run in-process (a fresh load of the model and adapter)."""
    monkeypatch.setattr(generate.protocol, "emit", lambda type, **fields: None)
    return generate.run(ChatRequest.model_validate(request))


class Serve:
    """A running `serve` process: `send` writes calls, `next_event` reads events (with a timeout)."""

    def __init__(self, config: Optional[dict[str, Any]] = None):
        env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weitiao_engine", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            cwd=ENGINE_DIR,
            env=env,
        )
        self.events: "queue.Queue[Optional[dict[str, Any]]]" = queue.Queue()
        self.results = 0  # answers received so far
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain, so the engine never blocks
        self.hello = self.next_event()
        self.proc.stdin.write(json.dumps(config or {}) + "\n")
        self.proc.stdin.flush()

    def _read(self) -> None:
        for line in self.proc.stdout:
            event = json.loads(line)
            self.results += event["type"] == "result" and "request_id" in event
            self.events.put(event)
        self.events.put(None)

    def send(self, *calls: dict[str, Any]) -> None:
        """Writes all `calls` in one write, as a client firing them at once would."""
        self.proc.stdin.write("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in calls))
        self.proc.stdin.flush()

    def chat(self, id: str, **request: Any) -> dict[str, Any]:
        return {"id": id, "command": "chat", "request": {"messages": MESSAGES, "temperature": 0, "max_tokens": 12, **request}}

    def next_event(self, timeout: float = 120) -> dict[str, Any]:
        event = self.events.get(timeout=timeout)
        assert event is not None, "the serve process ended"
        return event

    def until_done(self, ids: list[str], on_event: Optional[Callable[[dict[str, Any]], None]] = None) -> list[dict[str, Any]]:
        """Every request-carrying event until each of `ids` has its result or error, in arrival order."""
        seen: list[dict[str, Any]] = []
        left = set(ids)
        while left:
            event = self.next_event()
            if "request_id" not in event:
                assert event["type"] == "log", event
                continue
            seen.append(event)
            if on_event is not None:
                on_event(event)
            if event["type"] in ("result", "error"):
                left.discard(event["request_id"])
        return seen


@pytest.fixture(scope="module")
def warm():
    """One serve process for the module, as the control plane keeps one: each test leaves it ready for the next.

    Small cache limits, so the tests also go through evicting base models and adapters.
    """
    s = Serve({"max_models": 1, "max_adapters": 2})
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def answers(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """request id -> {text streamed, result or error event}."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        entry = out.setdefault(e["request_id"], {"streamed": ""})
        if e["type"] == "token":
            entry["streamed"] += e["text"]
        else:
            entry[e["type"]] = e
    return out


def test_calls_sent_at_once_come_back_whole_in_order_and_equal_one_shot(warm, tiny_model, adapters, run_engine, monkeypatch):
    s = warm
    assert s.hello["type"] == "hello" and s.hello["command"] == "serve" and s.hello["pid"] == s.proc.pid
    s.send(s.chat("r1", model=tiny_model), s.chat("r2", model=tiny_model, messages=OTHER), s.chat("r3", model=tiny_model, adapter=adapters["lora"]))
    events = s.until_done(["r1", "r2", "r3"])

    # Strictly one after the other: r1's events, then r2's, then r3's, each ending with its result.
    order = [e["request_id"] for e in events]
    assert order == sorted(order) and [e["request_id"] for e in events if e["type"] == "result"] == ["r1", "r2", "r3"]
    got = answers(events)
    for rid, request in [
        ("r1", {"model": tiny_model}),
        ("r2", {"model": tiny_model, "messages": OTHER}),
        ("r3", {"model": tiny_model, "adapter": adapters["lora"]}),
    ]:
        result = got[rid]["result"]["data"]
        assert result == one_shot(monkeypatch, **{"messages": MESSAGES, "temperature": 0, "max_tokens": 12, **request}), rid
        assert got[rid]["streamed"] == result["text"] and result["text"]
    assert got["r1"]["result"]["data"]["text"] != got["r3"]["result"]["data"]["text"]
    # And the one-shot command itself, as a process, agrees (the in-process `run` above is its code).
    code, shot = run_engine("chat", {"model": tiny_model, "adapter": adapters["lora"], "messages": MESSAGES, "temperature": 0, "max_tokens": 12})
    assert code == 0 and shot[-1]["data"] == got["r3"]["result"]["data"]


def test_adapters_switch_per_request_and_never_leak_into_base_requests(warm, tiny_model, adapters, monkeypatch, tmp_path):
    base = one_shot(monkeypatch, model=tiny_model, messages=MESSAGES, temperature=0, max_tokens=16)
    lora = one_shot(monkeypatch, model=tiny_model, adapter=adapters["lora"], messages=MESSAGES, temperature=0, max_tokens=16)
    embed = one_shot(monkeypatch, model=tiny_model, adapter=adapters["embed"], messages=MESSAGES, temperature=0, max_tokens=16)
    assert len({base["text"], lora["text"], embed["text"]}) == 3

    s = warm
    plan = [None, "lora", None, "embed", "lora", None, "embed", None]
    s.send(*(s.chat(f"r{i}", model=tiny_model, adapter=adapters[a] if a else None, max_tokens=16) for i, a in enumerate(plan)))
    got = answers(s.until_done([f"r{i}" for i in range(len(plan))]))
    expected = {None: base, "lora": lora, "embed": embed}
    for i, a in enumerate(plan):
        assert got[f"r{i}"]["result"]["data"] == expected[a], f"request {i} ({a or 'base'})"

    # A fine-tune written again (same directory, new weights) is loaded again, not served stale.
    moved = tmp_path / "lora"
    shutil.copytree(adapters["lora"], moved)
    s.send(s.chat("before", model=tiny_model, adapter=str(moved), max_tokens=16))
    assert answers(s.until_done(["before"]))["before"]["result"]["data"] == lora
    make_adapter(tiny_model, moved, seed=99)
    retrained = one_shot(monkeypatch, model=tiny_model, adapter=str(moved), messages=MESSAGES, temperature=0, max_tokens=16)
    assert retrained["text"] != lora["text"]
    s.send(s.chat("after", model=tiny_model, adapter=str(moved), max_tokens=16), s.chat("base", model=tiny_model, max_tokens=16))
    got = answers(s.until_done(["after", "base"]))
    assert got["after"]["result"]["data"] == retrained and got["base"]["result"]["data"] == base

    # A second base model pushes the first out (max_models 1); coming back to the first loads it again.
    copy = shutil.copytree(tiny_model, tmp_path / "tiny-copy")
    calls = [("copy", str(copy), None), ("lora", tiny_model, adapters["lora"]), ("copy-embed", str(copy), adapters["embed"]), ("base", tiny_model, None)]
    s.send(*(s.chat(rid, model=m, adapter=a, max_tokens=16) for rid, m, a in calls))
    got = answers(s.until_done([rid for rid, _, _ in calls]))
    assert [got[rid]["result"]["data"] for rid, _, _ in calls] == [base, lora, embed, base]


def test_a_bad_request_gets_an_error_and_the_next_one_is_answered(warm, tiny_model, adapters, monkeypatch, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    # An adapter trained on another base: its shapes cannot fit this model.
    other = AutoModelForCausalLM.from_config(Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, vocab_size=1024))
    get_peft_model(other, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)).save_pretrained(str(tmp_path / "misfit"))

    s = warm
    # (`send` takes dicts; the non-JSON line is written on its own.)
    s.send(
        s.chat("warm", model=tiny_model, adapter=adapters["lora"]),
        s.chat("no-messages", model=tiny_model, messages=[]),
        s.chat("no-model", model=str(tmp_path / "没有这个模型")),
        s.chat("misfit", model=tiny_model, adapter=str(tmp_path / "misfit")),
        {"id": "bad-call", "command": "chat", "request": {"model": tiny_model, "messages": MESSAGES}, "extra": 1},
    )
    s.proc.stdin.write("not even json\n")
    s.send(s.chat("base", model=tiny_model), s.chat("lora", model=tiny_model, adapter=adapters["lora"]))
    got = answers(s.until_done(["warm", "no-messages", "no-model", "misfit", "bad-call", "base", "lora"]))

    def error(rid: str) -> tuple[str, Optional[str]]:
        assert "result" not in got[rid] and got[rid]["streamed"] == ""
        return got[rid]["error"]["code"], got[rid]["error"]["param"]

    assert error("no-messages") == ("invalid_request", "messages")
    assert error("no-model") == ("not_found", "model") and "没有这个模型" in got["no-model"]["error"]["message"]
    assert error("misfit") == ("invalid_file", "adapter") and "无法加载适配器" in got["misfit"]["error"]["message"]
    assert error("bad-call") == ("invalid_request", "extra")
    # After all that (the misfit even forced the base model to be loaded again), answers are still right.
    assert got["warm"]["result"]["data"] == got["lora"]["result"]["data"]
    assert got["base"]["result"]["data"] == one_shot(monkeypatch, model=tiny_model, messages=MESSAGES, temperature=0, max_tokens=12)
    assert got["lora"]["result"]["data"] == one_shot(monkeypatch, model=tiny_model, adapter=adapters["lora"], messages=MESSAGES, temperature=0, max_tokens=12)


def test_cancel_stops_a_running_answer_and_drops_a_queued_one(warm, tiny_model):
    s = warm
    long = {"model": tiny_model, "temperature": 1.0, "seed": 3, "max_tokens": 400}
    s.send(s.chat("warm", model=tiny_model, max_tokens=2))  # load the model first, so r1 starts generating at once
    s.until_done(["warm"])
    s.send(s.chat("r1", **long), s.chat("r2", **long), s.chat("r3", model=tiny_model))
    s.send({"id": "c0", "command": "cancel", "target": "r2"})

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "token" and event["request_id"] == "r1" and not cancelled:
            cancelled.append(True)
            s.send({"id": "c1", "command": "cancel", "target": "r1"}, {"id": "c2", "command": "cancel", "target": "already-done"})

    cancelled: list[bool] = []
    events = s.until_done(["r1", "r2", "r3"], on_event)
    got = answers(events)
    assert got["r1"]["error"]["code"] == "cancelled" and "对话请求已取消" in got["r1"]["error"]["message"]
    # Stopped between tokens, well before its 400 (the cancel is sent on its first token).
    assert 0 < len([e for e in events if e["request_id"] == "r1" and e["type"] == "token"]) < 400
    assert got["r2"]["error"]["code"] == "cancelled" and got["r2"]["streamed"] == ""
    assert got["r3"]["result"]["data"]["text"]  # the queue moved on



def test_shutdown_cancels_what_is_left_and_ends_the_process(warm, tiny_model):
    s = warm
    long = {"model": tiny_model, "temperature": 1.0, "seed": 3, "max_tokens": 400}
    s.send(s.chat("r1", **long), s.chat("r2", **long))
    assert s.next_event()["request_id"] == "r1"
    s.send({"id": "s1", "command": "shutdown"})
    rest = []
    while (event := s.events.get(timeout=60)) is not None:
        rest.append(event)
    assert [(e["request_id"], e["code"]) for e in rest if e["type"] == "error"] == [("r1", "cancelled"), ("r2", "cancelled")]
    assert rest[-1] == {"type": "result", "data": {"served": s.results}} and s.results >= 14
    assert s.proc.wait(timeout=30) == 0


def test_end_of_input_ends_the_process():
    # stdin closes when the control plane is gone: nothing is left to answer to.
    s = Serve()
    s.proc.stdin.close()
    assert s.next_event() == {"type": "result", "data": {"served": 0}}
    assert s.proc.wait(timeout=30) == 0
