"""Preference training (DPO) on CPU or one GPU: `train` with method `dpo`.

    echo '{"base_model": "...", "output_dir": "...", "training_file": "pairs.jsonl", "method": "dpo",
          "dpo": {"beta": 0.1}, "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate": 5e-4}}' \\
      | python -m weitiao_engine train

Data: OpenAI's preference format, one pair per line:
    {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": "好评"}],
     "non_preferred_output": [{"role": "assistant", "content": "差评"}]}

The policy is the base plus a LoRA adapter; the reference is the same base with the adapter disabled
(PEFT's `disable_adapter()`), so there is no second copy of the model. Its log-probabilities never change,
so they are computed once in setup. For a pair (chosen c, rejected r), with log-probabilities summed over
the answer tokens (content + end-of-turn, as SFT trains them):

    loss = -log σ(β · ((π_c − π_r) − (ref_c − ref_r)))        (Rafailov et al., 2023, eq. 7)
    reward_c = β · (π_c − ref_c), reward_r = β · (π_r − ref_r); accuracy = mean(reward_c > reward_r),
    margin = mean(reward_c − reward_r)

Copied from lora_finetune.py and edited (torchtune style); checkpoints are the same adapter directories,
so stop + resume equals one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .. import __version__
from ..chat_format import TokenizedExample, tokenize_examples
from ..atomic import atomic_dir
from ..protocol import EngineError, PreferenceExample, TrainRequest, emit, log, progress
from .lora_finetune import (
    EVAL_BATCH_SIZE,
    autocast,
    collate,
    compute_in_fp32,
    due,
    epoch_order,
    linear_module_names,
    newest_checkpoint,
    precision_mode,
    rng_state,
    seed_everything,
    set_rng_state,
    token_logprobs,
    use_gradient_checkpointing,
)


@dataclass
class Pairs:
    """Tokenized preference pairs and the reference model's summed answer log-probabilities."""

    chosen: list[TokenizedExample]
    rejected: list[TokenizedExample]
    ref_chosen: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    ref_rejected: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def __len__(self) -> int:
        return len(self.chosen)


@dataclass
class Run:
    """Everything a run needs, built by setup(); the counters are what a checkpoint restores."""

    request: TrainRequest
    output_dir: Path
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_data: Pairs
    valid_data: Pairs
    steps_per_epoch: int
    total_steps: int
    pad_id: int
    bf16: bool = False  # bf16 autocast (compute); see `precision` for how the frozen base is stored
    precision: str = "fp32"  # as lora_finetune: "bf16", "bf16-weights" or "fp32"
    # counters, saved in every checkpoint
    step: int = 0
    epoch_index: int = 0
    batches_done: int = 0
    trained_tokens: int = 0
    elapsed_before: float = 0.0
    train_loss: Optional[float] = None
    valid_loss: Optional[float] = None
    best_valid_loss: Optional[float] = None  # of the validation DPO loss
    evals_without_improvement: int = 0  # early stopping's patience counter
    early_stopped: bool = False
    last_checkpoint: Optional[str] = None
    last_checkpoint_step: int = -1
    stop_requested: bool = False
    started: float = field(default_factory=time.monotonic)
    previous_handlers: dict[int, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> float:
        return self.epoch_index + self.batches_done / self.steps_per_epoch

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started


def run(request: TrainRequest) -> dict[str, Any]:
    """Trains a LoRA adapter on preference pairs; returns the same fields as lora_finetune.run."""
    state = setup(request)
    try:
        interrupted = train(state)
        model_dir = None if interrupted else save_final(state)
    finally:
        cleanup(state)
    return {
        "model_dir": model_dir,
        "interrupted": interrupted,
        "early_stopped": state.early_stopped,
        "steps": state.step,
        "total_steps": state.total_steps,
        "trained_tokens": state.trained_tokens,
        "final_train_loss": state.train_loss,
        "final_valid_loss": state.valid_loss,
        "last_checkpoint": state.last_checkpoint,
        "precision": state.precision,
    }


# ------------------------------------------------------------------------------------------------- setup


def setup(request: TrainRequest) -> Run:
    """Threads, seed, pairs, base model + LoRA, reference log-probabilities, optimizer, scheduler; resume."""
    import psutil
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_scheduler

    from ..tokens import auto_tokenizer

    hp = request.hyperparameters
    torch.set_num_threads(request.threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    precision = precision_mode(hp.bf16)
    output_dir = Path(request.output_dir)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    progress("setup", 0, 5, "reading preference pairs / 读取偏好数据")
    train_pairs = load_pairs(request.training_file, "training_file")
    valid_pairs = load_pairs(request.validation_file, "validation_file") if request.validation_file else []

    progress("setup", 1, 5, "loading the base model / 加载基础模型")
    base = request.base_model
    if not Path(base).is_dir():
        raise EngineError("not_found", f"base model directory {base} does not exist / 基础模型目录不存在", "base_model")
    try:
        tokenizer = auto_tokenizer(base)
        # As lora_finetune: the frozen base in bf16 unless the run is fp32.
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32 if precision == "fp32" else torch.bfloat16)
    except Exception as e:
        raise EngineError("invalid_file", f"{base}: cannot load the model: {e} / 无法加载模型", "base_model") from e
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    progress("setup", 2, 5, "tokenizing / 分词")
    train_data = tokenize_pairs(tokenizer, train_pairs, hp.max_seq_length, request.training_file, "training_file")
    valid_data = tokenize_pairs(tokenizer, valid_pairs, hp.max_seq_length, request.validation_file, "validation_file")

    progress("setup", 3, 5, "adding LoRA / 添加 LoRA")
    missing = [m for m in request.lora.modules_to_save or [] if not any(n.endswith(m) for n, _ in model.named_modules())]
    if missing:
        raise EngineError("invalid_request", f"LoRA: modules_to_save {missing} not found in the model / 模型中没有这些模块", "lora.modules_to_save")
    seed_everything(hp.seed)
    target = request.lora.target_modules
    lora = LoraConfig(
        r=request.lora.r,
        lora_alpha=request.lora.alpha,
        lora_dropout=request.lora.dropout,
        target_modules=linear_module_names(model) if target == "all-linear" else list(target),
        modules_to_save=request.lora.modules_to_save,
        ensure_weight_tying=bool(request.lora.modules_to_save and model.config.tie_word_embeddings),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise EngineError("invalid_request", f"LoRA: {e} / LoRA 配置无效", "lora.target_modules") from e

    # What the optimizer updates stays fp32 (a bf16 AdamW update underflows); tied weights share the Parameter.
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if precision == "bf16-weights":
        compute_in_fp32(model)
    if use_gradient_checkpointing(hp.gradient_checkpointing, model):  # "auto": by the base's size
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # The reference never changes: its log-probabilities once, now, instead of a second forward per step
    # (with the policy's precision, so that before any step policy and reference agree up to rounding).
    progress("setup", 4, 5, "scoring with the reference model / 参考模型打分")
    for pairs in (train_data, valid_data):
        pairs.ref_chosen, pairs.ref_rejected = reference_logps(model, pairs, pad_id, precision == "bf16")
    model.train()

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=hp.learning_rate
    )
    steps_per_epoch = math.ceil(len(train_data) / hp.batch_size)
    total_steps = hp.n_epochs * steps_per_epoch
    if request.max_steps is not None:
        total_steps = min(total_steps, request.max_steps)
    scheduler = get_scheduler(
        "constant_with_warmup" if hp.lr_scheduler == "constant" else hp.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(hp.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    state = Run(
        request=request,
        output_dir=output_dir,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        train_data=train_data,
        valid_data=valid_data,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        pad_id=pad_id,
        bf16=precision == "bf16",
        precision=precision,
    )
    if request.resume:
        restore_checkpoint(state)

    def on_signal(signum, _frame):
        state.stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        state.previous_handlers[sig] = signal.signal(sig, on_signal)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"{len(train_data)} training / {len(valid_data)} validation pairs, {steps_per_epoch} steps per epoch, {total_steps} steps;"
        f" DPO beta={request.dpo.beta}, LoRA r={lora.r}: {trainable:,} trainable parameters, {torch.get_num_threads()} threads,"
        f" precision {precision} / 偏好训练"
    )
    progress("setup", 5, 5)
    return state


def load_pairs(path: str, param: str) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]]:
    """(prompt, preferred, non-preferred) messages of every line of a preference JSONL file; the first bad
    line is an error naming file:line and the field."""
    from pydantic import ValidationError

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise EngineError("invalid_file", f"{path}: file not found / 文件不存在", param) from e
    except (OSError, UnicodeDecodeError) as e:
        raise EngineError("invalid_file", f"{path}: cannot read as UTF-8 text: {e} / 无法读取", param) from e
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EngineError("invalid_file", f"{path}:{number}: invalid JSON: {e.msg} / JSON 格式错误", param) from e
        try:
            pair = PreferenceExample.model_validate(record)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise EngineError("invalid_file", f"{path}:{number}: {where}: {err['msg']} / 偏好样本格式错误", param) from e
        for key in ("preferred_output", "non_preferred_output"):
            if any(m.role != "assistant" for m in getattr(pair, key)):
                raise EngineError("invalid_file", f"{path}:{number}: {key}: only assistant messages / 只能包含 assistant 消息", param)
        if not pair.input.messages:
            raise EngineError("invalid_file", f"{path}:{number}: input.messages: empty / messages 为空", param)
        # Earlier assistant turns are context, not what is being preferred: weight 0 keeps them out of the sums.
        prompt = [{**m.model_dump(exclude_none=True), **({"weight": 0} if m.role == "assistant" else {})} for m in pair.input.messages]
        answer = lambda ms: [{"role": m.role, "content": m.content} for m in ms]  # noqa: E731
        pairs.append((prompt, answer(pair.preferred_output), answer(pair.non_preferred_output)))
    if not pairs:
        raise EngineError("invalid_file", f"{path}: no preference pairs / 文件中没有偏好样本", param)
    return pairs


def tokenize_pairs(tokenizer, pairs, max_seq_length: int, path: Optional[str], param: str) -> Pairs:
    """Both conversations of every pair, tokenized as SFT tokenizes them (loss labels = the answer tokens)."""
    chosen, n1 = tokenize_examples(tokenizer, [p + c for p, c, _ in pairs], max_seq_length)
    rejected, n2 = tokenize_examples(tokenizer, [p + r for p, _, r in pairs], max_seq_length)
    if n1 or n2:
        log(f"{path}: {n1 + n2} answers longer than max_seq_length={max_seq_length} were truncated / {n1 + n2} 条回答被截断", "warning")
    for i, (c, r) in enumerate(zip(chosen, rejected)):
        if not c.n_trained or not r.n_trained:
            raise EngineError(
                "invalid_file", f"{path}: pair {i + 1}: an answer has no tokens left after truncation to {max_seq_length} / 回答被完全截断", param
            )
    return Pairs(chosen, rejected)


def sequence_logps(model, examples: list[TokenizedExample], pad_id: int) -> torch.Tensor:
    """Sum of log p(answer token) over each example's labelled tokens: one value per example."""
    logp, rows, _ = token_logprobs(model, *collate(examples, pad_id))
    return torch.zeros(len(examples), dtype=logp.dtype).index_add(0, rows, logp)


@torch.no_grad()
def reference_logps(model, pairs: Pairs, pad_id: int, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (base, adapter disabled, eval mode) log-probabilities of every chosen and rejected answer."""
    model.eval()
    out = {}
    with model.disable_adapter(), torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16, enabled=bf16):
        for name, examples in (("chosen", pairs.chosen), ("rejected", pairs.rejected)):
            values = torch.zeros(len(examples))
            for start in range(0, len(examples), EVAL_BATCH_SIZE):
                values[start : start + EVAL_BATCH_SIZE] = sequence_logps(model, examples[start : start + EVAL_BATCH_SIZE], pad_id)
            out[name] = values
    return out["chosen"], out["rejected"]


def dpo_loss(policy_c, policy_r, ref_c, ref_r, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, reward accuracy, mean reward margin) of a batch of pairs."""
    reward_c, reward_r = beta * (policy_c - ref_c), beta * (policy_r - ref_r)
    loss = -F.logsigmoid(reward_c - reward_r).mean()
    return loss, (reward_c > reward_r).float().mean(), (reward_c - reward_r).mean()


def pair_batch_logps(model, pairs: Pairs, indices: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Policy log-probabilities of the chosen and rejected answers of `indices`, in one forward pass; and the tokens."""
    examples = [pairs.chosen[i] for i in indices] + [pairs.rejected[i] for i in indices]
    logps = sequence_logps(model, examples, pad_id)
    return logps[: len(indices)], logps[len(indices) :], sum(len(e.input_ids) for e in examples)


# ------------------------------------------------------------------------------------------------- train


def train(state: Run) -> bool:
    """The training loop; returns True when a signal stopped it (after saving a checkpoint)."""
    request, hp, beta = state.request, state.request.hyperparameters, state.request.dpo.beta
    model, optimizer, scheduler, data = state.model, state.optimizer, state.scheduler, state.train_data
    steps_seconds = 0.0
    tokens_this_process = examples_this_process = steps_this_process = 0

    while state.step < state.total_steps:
        order = epoch_order(hp.seed, state.epoch_index, len(data))
        batches = [order[i : i + hp.batch_size] for i in range(0, len(order), hp.batch_size)]
        for batch_indices in batches[state.batches_done :]:
            if state.stop_requested:
                return interrupt(state)
            t0 = time.monotonic()
            # Micro-batches weigh their mean loss by their share of the batch: the accumulated gradient is the batch's.
            micro = math.ceil(len(batch_indices) / hp.gradient_accumulation_steps)
            optimizer.zero_grad(set_to_none=True)
            loss_total, accuracy, margin, batch_tokens = 0.0, 0.0, 0.0, 0
            for start in range(0, len(batch_indices), micro):
                part = batch_indices[start : start + micro]
                share = len(part) / len(batch_indices)
                with autocast(state):
                    policy_c, policy_r, n_tokens = pair_batch_logps(model, data, part, state.pad_id)
                idx = torch.tensor(part)
                loss, acc, mar = dpo_loss(policy_c, policy_r, data.ref_chosen[idx], data.ref_rejected[idx], beta)
                (loss * share).backward()
                loss_total, accuracy, margin = loss_total + loss.item() * share, accuracy + acc.item() * share, margin + mar.item() * share
                batch_tokens += n_tokens
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], hp.max_grad_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()

            state.step += 1
            state.batches_done += 1
            state.train_loss = loss_total
            state.trained_tokens += batch_tokens
            steps_seconds += time.monotonic() - t0
            tokens_this_process += batch_tokens
            examples_this_process += len(batch_indices)
            steps_this_process += 1
            emit(
                "metrics",
                step=state.step,
                total_steps=state.total_steps,
                epoch=state.epoch,
                train_loss=state.train_loss,
                learning_rate=learning_rate,
                grad_norm=float(grad_norm),
                tokens_per_second=tokens_this_process / steps_seconds,
                examples_per_second=examples_this_process / steps_seconds,
                trained_tokens=state.trained_tokens,
                elapsed_seconds=state.elapsed,
                eta_seconds=(state.total_steps - state.step) * steps_seconds / steps_this_process,
                **{"rewards/accuracy": accuracy, "rewards/margin": margin},
            )

            epoch_end = state.batches_done == len(batches)
            last = state.step == state.total_steps
            if len(state.valid_data) and (epoch_end or last or due(state.step, request.eval_every_steps)):
                validate(state, with_eval=epoch_end or last)
            patience = hp.early_stopping_patience
            stopping = patience is not None and state.evals_without_improvement >= patience and not last
            if epoch_end or last or stopping or due(state.step, request.save_every_steps):
                save_checkpoint(state)
            if stopping:
                state.early_stopped = True
                log(
                    f"early stopping at step {state.step}: validation DPO loss has not improved for {patience} evaluations"
                    f" (best {state.best_valid_loss:.4f}) / 验证损失连续 {patience} 次未改善，提前停止"
                )
                return False
            if last:
                break
        if state.batches_done == len(batches):
            state.epoch_index += 1
            state.batches_done = 0
    return False


@torch.no_grad()
def validate(state: Run, with_eval: bool) -> dict[str, float]:
    """DPO loss, reward accuracy and mean margin on the validation pairs; emits `metrics` and (epoch ends) `eval`."""
    model, data, beta = state.model, state.valid_data, state.request.dpo.beta
    model.eval()
    try:
        policy_c, policy_r = torch.zeros(len(data)), torch.zeros(len(data))
        for start in range(0, len(data), EVAL_BATCH_SIZE // 2):
            indices = list(range(start, min(start + EVAL_BATCH_SIZE // 2, len(data))))
            with autocast(state):
                c, r, _ = pair_batch_logps(model, data, indices, state.pad_id)
            policy_c[indices], policy_r[indices] = c, r
        loss, accuracy, margin = dpo_loss(policy_c, policy_r, data.ref_chosen, data.ref_rejected, beta)
        state.valid_loss = loss.item()
        best = state.best_valid_loss
        improved = best is None or state.valid_loss < best - state.request.hyperparameters.early_stopping_min_delta
        state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
        state.best_valid_loss = min(state.valid_loss, best if best is not None else math.inf)
        rewards = {"rewards/accuracy": accuracy.item(), "rewards/margin": margin.item()}
        emit("metrics", step=state.step, total_steps=state.total_steps, epoch=state.epoch, valid_loss=state.valid_loss, elapsed_seconds=state.elapsed)
        if with_eval:
            emit("eval", step=state.step, epoch=state.epoch, valid_loss=state.valid_loss, **rewards)
            log(f"step {state.step}: validation reward accuracy {rewards['rewards/accuracy']:.4f}, margin {rewards['rewards/margin']:.4f}")
        return {"valid_loss": state.valid_loss, **rewards}
    finally:
        model.train()


# ----------------------------------------------------------------------------------------- checkpointing


def save_checkpoint(state: Run) -> str:
    """Writes `checkpoints/step-NNNNNN/` (adapter, training_state.pt, state.json) atomically; emits `checkpoint`."""
    final = state.output_dir / "checkpoints" / f"step-{state.step:06d}"
    with atomic_dir(final) as tmp:
        state.model.save_pretrained(tmp)
        (tmp / "README.md").unlink(missing_ok=True)
        torch.save(
            {
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "rng": rng_state(),
                "step": state.step,
                "epoch_index": state.epoch_index,
                "batches_done": state.batches_done,
                "trained_tokens": state.trained_tokens,
                "elapsed_seconds": state.elapsed,
                "train_loss": state.train_loss,
                "valid_loss": state.valid_loss,
                "best_valid_loss": state.best_valid_loss,
                "evals_without_improvement": state.evals_without_improvement,
            },
            tmp / "training_state.pt",
        )
        summary = {
            "step": state.step,
            "total_steps": state.total_steps,
            "epoch": state.epoch,
            "train_loss": state.train_loss,
            "valid_loss": state.valid_loss,
            "best_valid_loss": state.best_valid_loss,
            "trained_tokens": state.trained_tokens,
            "config": state.request.model_dump(),
        }
        (tmp / "state.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    state.last_checkpoint, state.last_checkpoint_step = str(final), state.step
    fields = {k: v for k, v in (("train_loss", state.train_loss), ("valid_loss", state.valid_loss)) if v is not None}
    emit("checkpoint", step=state.step, epoch=state.epoch, path=str(final), **fields)
    return str(final)


def restore_checkpoint(state: Run) -> None:
    """Loads the newest checkpoint's adapter, optimizer, scheduler, RNG states and counters into `state`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = newest_checkpoint(state.output_dir)
    if path is None:
        log("resume: no checkpoint yet, starting from the beginning / 没有检查点，从头开始")
        return
    try:
        weights = load_file(path / "adapter_model.safetensors")
        saved = torch.load(path / "training_state.pt", weights_only=True)
    except Exception as e:
        raise EngineError("invalid_file", f"{path}: cannot load checkpoint: {e} / 无法加载检查点", "resume") from e
    result = set_peft_model_state_dict(state.model, weights)
    if getattr(result, "unexpected_keys", None):
        raise EngineError("invalid_file", f"{path}: adapter does not match this LoRA config / 适配器与 LoRA 配置不符", "resume")
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    state.step = saved["step"]
    state.epoch_index = saved["epoch_index"]
    state.batches_done = saved["batches_done"]
    state.trained_tokens = saved["trained_tokens"]
    state.elapsed_before = saved["elapsed_seconds"]
    state.train_loss, state.valid_loss, state.best_valid_loss = saved["train_loss"], saved["valid_loss"], saved["best_valid_loss"]
    state.evals_without_improvement = saved.get("evals_without_improvement", 0)  # absent before early stopping existed
    state.last_checkpoint, state.last_checkpoint_step = str(path), state.step
    if state.batches_done >= state.steps_per_epoch:
        state.epoch_index, state.batches_done = state.epoch_index + 1, 0
    log(f"resumed from {path} at step {state.step} / 从检查点恢复")


def interrupt(state: Run) -> bool:
    """A signal arrived: keep what has been trained (unless a checkpoint holds it already) and stop."""
    if state.step > 0 and state.last_checkpoint_step != state.step:
        save_checkpoint(state)
    log(f"stopped at step {state.step}; resume continues from {state.last_checkpoint} / 已停止，可恢复训练", "warning")
    return True


# ------------------------------------------------------------------------------------------------ finish


def save_final(state: Run) -> str:
    """The adapter, tokenizer and weitiao.json (lineage) in `<output_dir>/model/`, written atomically."""
    final = state.output_dir / "model"
    with atomic_dir(final) as tmp:
        state.model.save_pretrained(tmp)
        (tmp / "README.md").unlink(missing_ok=True)
        state.tokenizer.save_pretrained(tmp, save_jinja_files=False)
        lineage = {
            "base_model": str(Path(state.request.base_model).resolve()),
            "method": "dpo",
            "format": "lora",
            "steps": state.step,
            "total_steps": state.total_steps,
            "trained_tokens": state.trained_tokens,
            "final_train_loss": state.train_loss,
            "final_valid_loss": state.valid_loss,
            "engine_version": __version__,
            "request": state.request.model_dump(),
        }
        (tmp / "weitiao.json").write_text(json.dumps(lineage, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log(f"model saved to {final} / 模型已保存")
    return str(final)


def cleanup(state: Run) -> None:
    """Gives the signal handlers back (matters when the recipe runs inside another process, e.g. tests)."""
    for sig, handler in state.previous_handlers.items():
        signal.signal(sig, handler)
