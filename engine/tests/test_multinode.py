"""Multi-node scale-out (issue 19) on this CPU: the same `train` request started twice, as two hosts would, with
torchrun's PET_* variables naming each launcher's node (static rendezvous at node 0's 127.0.0.1:port, gloo).
It must train what one process trains with the same global batch, and only node 0 reports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ENGINE_DIR
from test_distributed import TOLERANCE, assert_no_workers_left, request, small_data, train_in_process, train_losses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(raw: dict[str, Any], rank: int, port: int, cwd: Path) -> subprocess.Popen:
    """One host's engine: `python -m weitiao_engine train`, the request on stdin, this node's PET_* settings;
    its streams are files (two processes run at once: a full pipe must never stall one of them)."""
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "request.json").write_text(json.dumps(raw, ensure_ascii=False) + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PET_NNODES": "2", "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}  # fmt: skip
    with open(cwd / "request.json", "rb") as stdin, open(cwd / "stdout", "wb") as out, open(cwd / "stderr", "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "weitiao_engine", "train"], stdin=stdin, stdout=out, stderr=err, cwd=cwd, env=env)


def finish(proc: subprocess.Popen, cwd: Path) -> list[dict[str, Any]]:
    proc.wait(timeout=600)  # generous: two torch starts per node on a loaded machine
    events = [json.loads(line) for line in (cwd / "stdout").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert proc.returncode == 0, (events[-1:], (cwd / "stderr").read_text(encoding="utf-8")[-3000:])
    return events


def test_lora_on_two_nodes_of_one_process_equals_one_process(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    data = small_data(waimai_small, tmp_path)
    # Two steps, a checkpoint after each; relative paths: each node resolves them in its own work dir, as
    # remote workers do (every node reads its own copy of the data, only node 0 writes).
    settings = {"max_steps": 2, "save_every_steps": 1, "eval_every_steps": 0}
    one = train_in_process(request(tiny_model, data, tmp_path / "one", **settings), monkeypatch)

    raw = request(tiny_model, data, Path("output"), **settings)
    port = free_port()
    nodes = [(start_node(raw, rank, port, tmp_path / f"node{rank}"), tmp_path / f"node{rank}") for rank in (0, 1)]
    node0, node1 = (finish(p, cwd) for p, cwd in nodes)

    losses_1, losses_2 = train_losses(one), train_losses(node0)
    print(f"train loss per step, 1 process: {losses_1}; 2 nodes × 1 process: {losses_2}")
    assert len(losses_1) == len(losses_2) == 2
    assert abs(losses_1[0] - losses_2[0]) < TOLERANCE and abs(losses_1[1] - losses_2[1]) < TOLERANCE
    assert [e["step"] for e in node0 if e["type"] == "checkpoint"] == [1, 2]
    assert node0[-1]["type"] == "result" and node0[-1]["data"]["steps"] == 2 and node0[-1]["data"]["model_dir"]
    assert node0[-1]["data"]["trained_tokens"] == one[-1]["data"]["trained_tokens"]

    # Node 1: its hello, the launcher's log lines and its end; no training events, no files.
    kinds = {e["type"] for e in node1}
    assert kinds <= {"hello", "log", "result"}, kinds
    assert node1[-1]["type"] == "result" and node1[-1]["data"]["model_dir"] is None and node1[-1]["data"]["steps"] == 0
    assert any("node 1 of 2 finished" in e.get("message", "") for e in node1 if e["type"] == "log")
    assert not list((tmp_path / "node1" / "output").glob("checkpoints/step-*")) and not (tmp_path / "node1" / "output" / "model").exists()
    launched = json.loads((tmp_path / "node0" / "output" / "launch-request.json").read_text(encoding="utf-8"))
    assert launched["nproc"] == 1
    assert_no_workers_left(tmp_path)
