"""Scale-out: one `train` request on N processes under torchrun (DDP for LoRA, FSDP2 for full fine-tuning).

The control plane still starts one engine and writes one request. With `nproc > 1` that process is only a
launcher (`launch`): it writes the request to `<output_dir>/launch-request.json` and runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m weitiao_engine train --request-file …

forwarding rank 0's events to its own stdout and relaying SIGTERM/SIGINT to the workers. Each worker
runs the ordinary recipe; the recipe asks this module for its share of a global batch, wraps the model
(`data_parallel` / `fully_sharded`), sums metrics over ranks (`all_sum`) and lets only rank 0 write files
and emit events. Every rank reads the whole data set and draws the same (seed, epoch) order, so no data
is sent between processes, only gradients (DDP all-reduce, FSDP reduce-scatter) and a few scalars.

Several hosts (issue 19): the same request is started on every host with torchrun's own `PET_*` variables in
the environment — `PET_NNODES` (hosts), `PET_NODE_RANK` (this host's), `PET_MASTER_ADDR`/`PET_MASTER_PORT`
(node 0's address: static rendezvous, node 0's launcher hosts the store there) or `PET_RDZV_ENDPOINT` (c10d).
With `PET_NNODES` above 1 the launcher drops `--standalone`; the global batch is shared by nodes × nproc
ranks. Only global rank 0 (on node 0) emits events and writes files: a launcher on another node emits no
training events, only a log line at its end and a result with `model_dir: null` and `steps: 0` (node 0's
result is the run's).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist

LAUNCHER_PID = "WEITIAO_LAUNCHER_PID"  # workers exit when the launcher is gone (the control plane killed it)


# ------------------------------------------------------------------------------------------------ ranks


def nodes() -> int:
    """Hosts of the run: torchrun's `PET_NNODES` (`N` or an elastic `MIN:MAX`, its upper bound), else 1."""
    raw = os.environ.get("PET_NNODES", "").strip()
    return int(raw.split(":")[-1]) if raw else 1


def node_rank() -> int:
    return int(os.environ.get("PET_NODE_RANK", "0") or 0)


def processes(request) -> int:
    """Ranks of the whole run: `nproc` per host times the hosts; each takes an equal share of a batch."""
    return request.nproc * nodes()


def in_worker() -> bool:
    """True inside a process that torchrun started (it sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one process that emits events and writes checkpoints and the result."""
    return rank() == 0


def init() -> None:
    """Joins the process group torchrun set up (gloo on CPU, nccl on CUDA); other ranks go quiet on stdout."""
    from . import protocol

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not is_main():
        protocol._out = _ErrorsToStderr(rank())
    if LAUNCHER_PID in os.environ:
        threading.Thread(target=_exit_without_launcher, args=(int(os.environ[LAUNCHER_PID]),), daemon=True).start()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _ErrorsToStderr:
    """stdout of ranks other than 0: their events are rank 0's again, except an error, which goes to stderr."""

    def __init__(self, rank: int):
        self.rank = rank

    def write(self, line: str) -> None:
        if line.startswith('{"type": "error"'):
            sys.stderr.write(f"[rank {self.rank}] {line}")

    def flush(self) -> None:
        sys.stderr.flush()


def _exit_without_launcher(pid: int) -> None:
    """torchrun starts each worker in its own session, so the control plane's kill of the launcher's process
    group does not reach them: a worker checks every second that the launcher still runs."""
    import time

    while True:
        time.sleep(1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, owned by someone else (the pid was reused): treat as gone
            os._exit(1)


# ------------------------------------------------------------------------------------------ collectives


def shard(items: list, blank: Any) -> list:
    """This rank's part of a global batch: every world_size-th item, padded with `blank` (an item that adds
    nothing to the loss) so that every rank runs the same number of forward passes, each a collective
    under FSDP. One process: `items` itself."""
    n = world_size()
    if n == 1:
        return items
    mine = items[rank() :: n]
    return mine + [blank] * (math.ceil(len(items) / n) - len(mine))


def loss_scale() -> int:
    """What a rank multiplies its share of the batch loss by: DDP and FSDP average gradients over ranks,
    and the batch's gradient is the *sum* of the shares' (each a token sum over the global token count)."""
    return world_size()


def all_sum(*values: float) -> tuple[float, ...]:
    """Each value summed over ranks (float64, so token counts stay exact); one process: unchanged."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(t.tolist())


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one: a stop signal must end every rank at the same step."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (pickled; for small things such as RNG states)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------ models


class ModelCall(torch.nn.Module):
    """`call(fn, *args)` runs `fn(model, *args)` as this module's forward.

    The recipes compute their loss with their own function (the LM head only where labels are); DDP and
    FSDP do their work (gradient hooks, gathering sharded weights) around a module's forward, so that
    function runs inside one. Validation and label scoring go through it too under FSDP.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """`ModelCall(model)`, under DDP when there are several ranks: backward all-reduces the trained weights' gradients."""
    from torch.nn.parallel import DistributedDataParallel

    call = ModelCall(model)
    if world_size() == 1:
        return call
    # Every rank loaded the same base and seeded the same LoRA init; broadcasting only the trained weights
    # makes sure without sending the frozen base (init_sync=False). Buffers (rotary tables, QLoRA's NF4
    # weights) are the same on every rank and never change: not sent before each forward either.
    for p in model.parameters():
        if p.requires_grad:
            dist.broadcast(p.data, src=0)
    device = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return DistributedDataParallel(call, device_ids=device, init_sync=False, forward_sync_buffers=False)


def fully_sharded(model: torch.nn.Module, layers: Optional[torch.nn.ModuleList]) -> torch.nn.Module:
    """`ModelCall(model)` with its weights sharded over the ranks (FSDP2): each decoder layer is one unit,
    gathered for its forward and backward only; the root (embeddings, tied LM head, final norm) is the
    rest. Call it before the optimizer is built: the parameters become DTensor shards."""
    call = ModelCall(model)
    if world_size() == 1:
        return call
    from torch.distributed.fsdp import fully_shard

    for layer in layers or []:
        fully_shard(layer)
    fully_shard(call)
    return call


def is_sharded(model: torch.nn.Module) -> bool:
    """True when FSDP holds `model`'s weights as shards (DTensors)."""
    if world_size() == 1:
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The complete weights on rank 0 (gathered from every rank's shards: call on every rank; others get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter names, complete on rank 0 (call on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """Every rank takes its shards of complete, name-keyed weights; returns the missing/unexpected keys."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Every rank takes its shards of a complete optimizer state saved by full_optimizer_state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s result as a float (a DTensor under FSDP)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


# ---------------------------------------------------------------------------------------------- launcher


def launch(request) -> dict[str, Any]:
    """Runs `request` on `request.nproc` processes under torchrun; returns rank 0's result.

    Rank 0's events pass through unchanged (its `result` is returned, its `error` raised, so __main__ ends
    the stream as for one process). SIGTERM/SIGINT go to every worker, which finish the step, agree to
    stop (`any_rank`) and checkpoint, exactly as one process does.
    """
    from .protocol import EngineError, emit, log

    output_dir = Path(request.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if request.threads is None:  # one torch thread per physical core, shared out between the workers
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        request = request.model_copy(update={"threads": max(1, cores // request.nproc)})
    request_file = output_dir / "launch-request.json"
    request_file.write_text(request.model_dump_json(indent=2) + "\n", encoding="utf-8")

    rendezvous = _rendezvous()
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc-per-node", str(request.nproc),
               "-m", "weitiao_engine", "train", "--request-file", str(request_file)]  # fmt: skip
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, LAUNCHER_PID: str(os.getpid()), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}  # fmt: skip
    where = f" on node {node_rank()} of {nodes()}" if nodes() > 1 else ""
    log(f"launching {request.nproc} processes under torchrun{where} / 启动 {request.nproc} 个训练进程")
    # Its own session: a terminal's Ctrl-C or the control plane's group signal reaches only this process,
    # which relays it to the workers; torchrun itself would give them only 30 s to checkpoint, then kill.
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, text=True, start_new_session=True,
                            preexec_fn=_die_with_parent())  # fmt: skip
    signalled: list[int] = []

    def relay(signum, _frame):
        signalled.append(signum)
        _signal_workers(proc.pid, signum)

    previous = {sig: signal.signal(sig, relay) for sig in (signal.SIGTERM, signal.SIGINT)}
    final: Optional[dict[str, Any]] = None
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                sys.stderr.write(line)  # not an event (a library printing to stdout): keep stdout clean
                continue
            if event.get("type") in ("result", "error"):
                final = event
            else:
                emit(event.pop("type"), **event)
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if final is not None and final["type"] == "result":
        return final["data"]
    if final is None and code == 0 and node_rank() > 0:
        # Rank 0 (on node 0) reported the run; this node only says that its share ended.
        log(f"node {node_rank()} of {nodes()} finished; node 0 reports the run / 第 {node_rank()} 号节点已结束")
        return {"model_dir": None, "interrupted": bool(signalled), "steps": 0, "total_steps": 0, "trained_tokens": 0,
                "final_train_loss": None, "final_valid_loss": None, "last_checkpoint": None}  # fmt: skip
    if final is not None:
        raise EngineError(final.get("code", "engine_error"), final.get("message", ""), final.get("param"))
    if signalled:
        raise EngineError("cancelled", "stopped before training began / 训练开始前已停止")
    raise EngineError(
        "engine_error",
        f"distributed training ended without a result (torchrun exit code {code}); see the engine's stderr / 分布式训练异常结束，详见日志",
    )


def _die_with_parent() -> Optional[Callable[[], None]]:
    """What torchrun's process runs before it starts (Linux): SIGKILL when this launcher dies (the control plane
    killed it). Its workers notice a dead launcher themselves, but a multi-node torchrun waiting for a node that is
    gone (at the rendezvous, or in its SIGTERM shutdown) would linger for minutes holding the engine's stderr open,
    so the control plane would never see the engine end. Graceful stops never go this way: the launcher relays
    SIGTERM to the workers itself. libc is loaded here, before the fork: the child only makes the call."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the workers' own check still ends the run
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _rendezvous() -> list[str]:
    """torchrun's rendezvous options: one host → `--standalone`; several → this node's place in the group,
    static rendezvous at node 0's `PET_MASTER_ADDR:PET_MASTER_PORT` when given (else torchrun reads `PET_RDZV_*`)."""
    if nodes() == 1:
        return ["--standalone"]
    options = ["--nnodes", str(nodes()), "--node-rank", str(node_rank())]
    if os.environ.get("PET_MASTER_ADDR"):
        options += ["--master-addr", os.environ["PET_MASTER_ADDR"], "--master-port", os.environ.get("PET_MASTER_PORT", "29500")]
    return options


def _signal_workers(torchrun_pid: int, signum: int) -> None:
    """Sends `signum` to torchrun's worker processes (before they exist: to torchrun, which then stops)."""
    import psutil

    try:
        workers = psutil.Process(torchrun_pid).children()
    except psutil.NoSuchProcess:
        return
    for p in workers or [psutil.Process(torchrun_pid)]:
        try:
            p.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


@contextmanager
def worker_session() -> Iterator[None]:
    """init() ... teardown() around a recipe run inside torchrun."""
    init()
    try:
        yield
    finally:
        teardown()
