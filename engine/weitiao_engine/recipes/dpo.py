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

The shared steps are the plain functions in training/ that lora_finetune.py uses too (no recipe imports
another); checkpoints are the same adapter directories, so stop + resume equals one uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..chat_format import TokenizedExample, tokenize_examples
from ..loading import set_threads
from ..protocol import EngineError, PreferenceExample, TrainRequest, emit, log, progress
from ..training import activation_checkpointing, batching, checkpoints
from ..training.batching import EVAL_BATCH_SIZE
from ..training.data import load_plain_base, load_tokenizer, read_files, read_jsonl
from ..training.early_stopping import record_validation_loss
from ..training.evaluation import after_step, next_epoch_if_done
from ..training.lora import add_lora, describe as describe_lora, lora_input_in_compute_dtype
from ..training.loss import sequence_logps
from ..training.optimization import adamw, clip_and_step, schedule
from ..training.precision import autocast, autocast_context, choose_for_run, compute_in_fp32
from ..training.state import TrainingState, interrupt, result, stopping_on_signals
from ..training.step_metrics import Throughput, emit_metrics, finish_step
from ..training.final_model import save_final_model
from ..training.fused_ops import use_fused_ops


@dataclass
class Pairs:
    """Tokenized preference pairs and the reference model's summed answer log-probabilities."""

    chosen: list[TokenizedExample]
    rejected: list[TokenizedExample]
    ref_chosen: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    ref_rejected: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def __len__(self) -> int:
        return len(self.chosen)


@dataclass(kw_only=True)
class Run(TrainingState):
    """Everything a run needs, built by setup(); the counters (TrainingState) are what a checkpoint restores.
    best_valid_loss is of the validation DPO loss."""

    train_data: Pairs
    valid_data: Pairs


def run(request: TrainRequest) -> dict[str, Any]:
    """Trains a LoRA adapter on preference pairs; returns the same fields as lora_finetune.run."""
    state = setup(request)
    with stopping_on_signals(state):
        interrupted = train(state)
        model_dir = None if interrupted else save_final(state)
    return result(state, model_dir, interrupted)


# ------------------------------------------------------------------------------------------------- setup


def setup(request: TrainRequest) -> Run:
    """Threads, seed, pairs, base model + LoRA, reference log-probabilities, optimizer, scheduler; resume."""
    hp = request.hyperparameters
    set_threads(request.threads)
    choice = choose_for_run(request)  # bf16 on/off, or auto by the probe (cached per machine), as every recipe
    precision = choice["precision"]

    progress("setup", 0, 5, "reading preference pairs / 读取偏好数据")
    output_dir, train_pairs, valid_pairs = read_files(request, load_pairs)

    progress("setup", 1, 5, "loading the base model / 加载基础模型")
    tokenizer, pad_id = load_tokenizer(request.base_model)
    # As lora_finetune: the frozen base in bf16 unless the run is fp32.
    model = load_plain_base(request.base_model, torch.float32 if precision == "fp32" else torch.bfloat16)

    progress("setup", 2, 5, "tokenizing / 分词")
    train_data = tokenize_pairs(tokenizer, train_pairs, hp.max_seq_length, request.training_file, "training_file")
    valid_data = tokenize_pairs(tokenizer, valid_pairs, hp.max_seq_length, request.validation_file, "validation_file")

    progress("setup", 3, 5, "adding LoRA / 添加 LoRA")
    model, lora = add_lora(model, request)
    if precision == "bf16":
        lora_input_in_compute_dtype(model)  # no fp32 round trip of every LoRA input under autocast
    if precision == "bf16-weights":
        compute_in_fp32(model)
    if activation_checkpointing.use_gradient_checkpointing(hp.gradient_checkpointing, model):  # "auto": by the base's size
        activation_checkpointing.enable(model)

    use_fused_ops(model)  # fp32 RMSNorm as one kernel, SwiGLU keeping less; the reference too (training/fused_ops.py)
    # The reference never changes: its log-probabilities once, now, instead of a second forward per step
    # (with the policy's precision, so that before any step policy and reference agree up to rounding).
    progress("setup", 4, 5, "scoring with the reference model / 参考模型打分")
    for pairs in (train_data, valid_data):
        pairs.ref_chosen, pairs.ref_rejected = reference_logps(model, pairs, pad_id, precision == "bf16")
    model.train()

    optimizer = adamw(model, hp)
    steps_per_epoch, total_steps, scheduler = schedule(optimizer, hp, len(train_data), request.max_steps)
    state = Run(
        request=request, output_dir=output_dir, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
        train_data=train_data, valid_data=valid_data, steps_per_epoch=steps_per_epoch, total_steps=total_steps, pad_id=pad_id,
        bf16=precision == "bf16", precision=precision, precision_choice=choice,
    )  # fmt: skip
    if request.resume:
        checkpoints.restore_adapter(state)
    log(
        f"{len(train_data)} training / {len(valid_data)} validation pairs, {steps_per_epoch} steps per epoch, {total_steps} steps;"
        f" DPO beta={request.dpo.beta}, {describe_lora(lora, model)}, {torch.get_num_threads()} threads,"
        f" precision {precision} / 偏好训练"
    )
    progress("setup", 5, 5)
    return state


def load_pairs(path: str, param: str) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]]:
    """(prompt, preferred, non-preferred) messages of every line of a preference JSONL file; the first bad
    line is an error naming file:line and the field."""
    pairs = []
    for number, pair in read_jsonl(path, param, PreferenceExample, "偏好样本"):
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


@torch.no_grad()
def reference_logps(model, pairs: Pairs, pad_id: int, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (base, adapter disabled, eval mode) log-probabilities of every chosen and rejected answer."""
    model.eval()
    out = {}
    with model.disable_adapter(), autocast_context(bf16):
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
    hp, beta = state.request.hyperparameters, state.request.dpo.beta
    model, data = state.model, state.train_data
    params = [p for p in model.parameters() if p.requires_grad]
    meter = Throughput()
    while state.step < state.total_steps:
        batches = batching.epoch_batches(hp.seed, state.epoch_index, [0] * len(data), hp.batch_size, group_by_length=False)
        for batch_indices in batches[state.batches_done :]:
            if state.stop_requested:
                return interrupt(state, save_checkpoint)
            t0 = time.monotonic()
            # Micro-batches weigh their mean loss by their share of the batch: the accumulated gradient is the batch's.
            micro = math.ceil(len(batch_indices) / hp.gradient_accumulation_steps)
            state.optimizer.zero_grad(set_to_none=True)
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
            grad_norm, learning_rate = clip_and_step(state, params)
            finish_step(
                state, meter, t0, loss_total, batch_tokens, len(batch_indices), learning_rate=learning_rate, grad_norm=float(grad_norm),
                **{"rewards/accuracy": accuracy, "rewards/margin": margin},
            )  # fmt: skip
            validate_now = lambda with_eval: validate(state, with_eval)  # noqa: E731
            if after_step(state, len(batches), len(state.valid_data) > 0, validate_now, save_checkpoint, "validation DPO loss"):
                return False
        next_epoch_if_done(state, len(batches))
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
        record_validation_loss(state, loss.item())
        rewards = {"rewards/accuracy": accuracy.item(), "rewards/margin": margin.item()}
        emit_metrics(state, valid_loss=state.valid_loss)
        if with_eval:
            emit("eval", step=state.step, epoch=state.epoch, valid_loss=state.valid_loss, **rewards)
            log(f"step {state.step}: validation reward accuracy {rewards['rewards/accuracy']:.4f}, margin {rewards['rewards/margin']:.4f}")
        return {"valid_loss": state.valid_loss, **rewards}
    finally:
        model.train()


# ----------------------------------------------------------------------------------------- checkpointing


def save_checkpoint(state: Run) -> str:
    """`checkpoints/step-NNNNNN/`: the policy adapter, training_state.pt, state.json, manifest.json (training/checkpoints.py)."""
    return checkpoints.write_checkpoint(state, lambda d: checkpoints.save_adapter(state.model, d), state.optimizer.state_dict())


# ------------------------------------------------------------------------------------------------ finish


def save_final(state: Run) -> str:
    """The adapter, tokenizer and weitiao.json (lineage, `format: lora`) in `<output_dir>/model/`, written atomically."""
    return save_final_model(state, lambda d: checkpoints.save_adapter(state.model, d), format="lora")
