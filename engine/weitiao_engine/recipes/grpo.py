"""Reinforcement fine-tuning with graders (OpenAI's `method: reinforcement`), GRPO-style: `train` with method
`reinforcement`.

    echo '{"base_model": "...", "output_dir": "...", "training_file": "prompts.jsonl", "method": "reinforcement",
          "reinforcement": {"grader": {"type": "string_check", "name": "label", "input": "{{sample.output_text}}",
                                       "reference": "{{item.label}}", "operation": "eq"}, "samples_per_prompt": 4},
          "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate": 1e-3}}' | python -m weitiao_engine train

Data: OpenAI's reinforcement format, one prompt per line: chat `messages` whose last message is the user's, plus any
fields the grader reads as `{{item.<field>}}` (the whole line is the item):
    {"messages": [{"role": "user", "content": "送餐很快，味道不错"}], "label": "好评"}

Each step takes `batch_size` prompts and samples `samples_per_prompt` answers to each (the group) from the policy;
the grader scores every answer (concurrently: training/rewards.py); an answer's advantage is its reward relative
to its group, A = (r − mean_group) / (std_group + ε), so only the differences within a group teach. With a
`response_format` (a JSON schema), an answer that is not JSON matching it scores 0 without being graded
(graders/response_format.py says why scored and not constrained). The loss, per
answer token t with ratio ρ_t = π(t) / π_old(t) (one update per batch: π_old is π detached, as TRL's default):

    loss = mean over answers of mean over their tokens of  −min(ρ_t·A, clip(ρ_t, 1−ε, 1+ε)·A) + β·KL_t
    KL_t = exp(ref_t − π_t) − (ref_t − π_t) − 1      (Schulman's k3 estimator; Shao et al. 2024, GRPO, eq. 4)

The reference is the base: with a LoRA policy the same model with its adapter disabled (as dpo.py), with `policy:
full` a frozen second copy. β = 0 skips the reference pass. Validation: every eval_every_steps (OpenAI's
eval_interval), at epoch ends and the last step, greedy answers to the first `eval_samples` validation prompts,
graded; its figures join that step's one `metrics` event. Checkpoints hold the policy, the optimizer and every RNG
state, the sampling generator's included, so stop + resume equals one uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import ConfigDict, Field

from ..graders import Judge, SandboxLimits
from ..loading import set_threads
from ..protocol import ChatMessage, EngineError, Strict, TrainRequest, emit, log, progress
from ..training import batching, checkpoints, lora as lora_setup
from ..training.batching import collate
from ..training.data import load_plain_base, load_tokenizer, read_files, read_jsonl
from ..training.evaluation import after_step, next_epoch_if_done
from ..training.final_model import save_final_model
from ..training.loss import token_logprobs
from ..training.optimization import adamw, clip_and_step, schedule
from ..training.precision import autocast, choose_for_run, compute_in_fp32
from ..training.rewards import GraderProblem, RewardPool, load_grader
from ..training.rng import seed_everything
from ..training.sampling import answer_text, sample_answers, scored_example, stop_ids, tokenize_prompts
from ..training.state import TrainingState, interrupt, result, stopping_on_signals
from ..training.step_metrics import Throughput, emit_metrics, finish_step
from ..training.fused_ops import use_fused_ops

EVAL_PROMPTS_PER_BATCH = 32  # greedy validation answers decoded together
ADVANTAGE_EPS = 1e-4  # a group whose answers all score the same has advantage 0, not 0/0


class PromptLine(Strict):
    """One line of the reinforcement format: messages, and any other fields (the grader's `{{item.x}}`)."""

    model_config = ConfigDict(extra="allow")
    messages: list[ChatMessage] = Field(min_length=1)


@dataclass
class Prompts:
    ids: list[list[int]]  # each conversation + the generation prompt, tokenized
    items: list[dict[str, Any]]  # each line as the grader's `item`

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(kw_only=True)
class Run(TrainingState):
    """Everything a run needs, built by setup(); the counters (TrainingState) and the sampling generator are what a
    checkpoint restores."""

    train_data: Prompts
    valid_data: Prompts
    rewards: RewardPool
    sampler: torch.Generator  # draws the training answers; saved in every checkpoint
    stops: set[int]
    reference: Any = None  # policy `full` with kl_beta > 0: the frozen base; LoRA uses the base with the adapter off
    initial_valid_reward: Optional[float] = None
    valid_reward: Optional[float] = None


def run(request: TrainRequest) -> dict[str, Any]:
    """Trains the policy on grader rewards; returns lora_finetune.run's fields plus initial/final validation reward."""
    state = setup(request)
    try:
        with stopping_on_signals(state):
            if state.step == 0 and len(state.valid_data):
                state.initial_valid_reward = validate(state, emit_fields=False)["valid_mean_reward"]
                log(f"validation reward before training: {state.initial_valid_reward:.4f} / 训练前验证奖励")
            interrupted = train(state)
            model_dir = None if interrupted else save_final(state)
    finally:
        state.rewards.close()
    return result(state, model_dir, interrupted, initial_valid_mean_reward=state.initial_valid_reward, final_valid_mean_reward=state.valid_reward)


# ------------------------------------------------------------------------------------------------- setup


def setup(request: TrainRequest) -> Run:
    """Threads, grader, prompts, the policy (LoRA or full) and its reference, optimizer, scheduler; restores on resume."""
    hp, rl = request.hyperparameters, request.reinforcement
    set_threads(request.threads)
    if request.nproc > 1:
        raise EngineError("invalid_request", "reinforcement runs in one process: set nproc to 1 / 强化微调仅支持单进程训练", "nproc")

    progress("setup", 0, 4, "reading prompts and the grader / 读取提示与评分器")
    output_dir, train_lines, valid_lines = read_files(request, load_prompts)
    files = [(request.training_file, "training_file")] + ([(request.validation_file, "validation_file")] if request.validation_file else [])
    try:
        grader = load_grader(rl.grader, files)  # a template field a line lacks fails now, naming file:line and field
    except GraderProblem as e:
        raise EngineError("invalid_request" if e.param.startswith("reinforcement") else "invalid_file", str(e), e.param) from None

    progress("setup", 1, 4, "loading the base model / 加载基础模型")
    tokenizer, pad_id = load_tokenizer(request.base_model)
    full = rl.policy == "full"
    # bf16 on/off, or auto by the probe (cached per machine), as every recipe; a full policy's weights train (fp32).
    choice = choose_for_run(request, full=full)
    precision = choice["precision"]
    if full:
        model = load_plain_base(request.base_model, torch.float32)
        seed_everything(hp.seed)
    else:
        model = lora_setup.load_base(request, precision)

    progress("setup", 2, 4, "tokenizing prompts / 分词")
    max_prompt = hp.max_seq_length - rl.max_new_tokens
    if max_prompt < 1:
        raise EngineError("invalid_request", f"max_new_tokens {rl.max_new_tokens} leaves no room for a prompt in max_seq_length"
                          f" {hp.max_seq_length} / 生成长度超过序列上限", "reinforcement.max_new_tokens")  # fmt: skip
    train_data, valid_data = prompts(tokenizer, train_lines, max_prompt), prompts(tokenizer, valid_lines, max_prompt)
    if rl.eval_samples is not None:
        valid_data = Prompts(valid_data.ids[: rl.eval_samples], valid_data.items[: rl.eval_samples])

    progress("setup", 3, 4, "the policy / 策略模型")
    reference = None
    if full:
        if rl.kl_beta > 0:  # a second, frozen copy of the base: the policy moves away from it
            reference = load_plain_base(request.base_model, torch.float32).eval().requires_grad_(False)
        description = f"full fine-tuning: {sum(p.numel() for p in model.parameters()):,} parameters"
    else:
        model, lora = lora_setup.add_lora(model, request)
        if precision == "bf16":
            lora_setup.lora_input_in_compute_dtype(model)  # no fp32 round trip of every LoRA input under autocast
        if precision == "bf16-weights":
            compute_in_fp32(model)
        description = lora_setup.describe(lora, model)
    use_fused_ops(model)  # fp32 RMSNorm as one kernel, SwiGLU keeping less (training/fused_ops.py)
    model.train()

    optimizer = adamw(model, hp)
    steps_per_epoch, total_steps, scheduler = schedule(optimizer, hp, len(train_data), request.max_steps)
    judge, limits = Judge(**rl.judge.model_dump()), SandboxLimits(**rl.python_limits.model_dump())
    answer_schema = rl.response_format.json_schema.schema_ if rl.response_format else None  # a mismatch scores 0
    pool = RewardPool(grader, judge, limits, rl.grading_threads, on_error=lambda m: log(m, "warning"), answer_schema=answer_schema)
    state = Run(
        request=request, output_dir=output_dir, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
        train_data=train_data, valid_data=valid_data, steps_per_epoch=steps_per_epoch, total_steps=total_steps, pad_id=pad_id,
        bf16=precision == "bf16", precision=precision, rewards=pool, sampler=torch.Generator().manual_seed(hp.seed),
        stops=stop_ids(model, tokenizer), reference=reference, precision_choice=choice,
    )  # fmt: skip
    if request.resume:
        checkpoints.restore(state, checkpoints.read_weights, lambda path, weights, saved: load_checkpoint(state, path, weights, saved))
    log(
        f"{len(train_data)} training / {len(valid_data)} validation prompts, {steps_per_epoch} steps per epoch, {total_steps} steps;"
        f" {rl.samples_per_prompt} answers per prompt, grader {grader.type} {grader.name!r}, KL beta {rl.kl_beta},"
        f" {description}, precision {precision} / 强化微调"
    )
    progress("setup", 4, 4)
    return state


def load_prompts(path: str, param: str) -> list[dict[str, Any]]:
    """Every line of a reinforcement JSONL file as a dict; a line whose last message is not the user's is an error
    naming file:line and the field."""
    lines = []
    for number, line in read_jsonl(path, param, PromptLine, "强化微调样本"):
        if line.messages[-1].role != "user":
            raise EngineError(
                "invalid_file", f"{path}:{number}: messages: the last message must be the user's (the model answers it) / 最后一条消息必须来自 user", param
            )
        lines.append(line.model_dump())
    if not lines:
        raise EngineError("invalid_file", f"{path}: no prompts / 文件中没有样本", param)
    return lines


def prompts(tokenizer, lines: list[dict[str, Any]], max_prompt_tokens: int) -> Prompts:
    ids, cut = tokenize_prompts(tokenizer, [line["messages"] for line in lines], max_prompt_tokens)
    if cut:
        log(f"{cut} prompts longer than {max_prompt_tokens} tokens keep their end / {cut} 条提示被截断", "warning")
    return Prompts(ids, lines)


# ------------------------------------------------------------------------------------------------- train


def train(state: Run) -> bool:
    """The training loop; returns True when a signal stopped it (after saving a checkpoint)."""
    hp, rl = state.request.hyperparameters, state.request.reinforcement
    params = [p for p in state.model.parameters() if p.requires_grad]
    meter = Throughput()
    while state.step < state.total_steps:
        batches = batching.epoch_batches(hp.seed, state.epoch_index, [0] * len(state.train_data), hp.batch_size, group_by_length=False)
        for batch_indices in batches[state.batches_done :]:
            if state.stop_requested:
                return interrupt(state, save_checkpoint)
            t0 = time.monotonic()
            # The group: every prompt of the batch `samples_per_prompt` times, answered by the policy as it is now.
            group = [i for i in batch_indices for _ in range(rl.samples_per_prompt)]
            answers = generate(state, [state.train_data.ids[i] for i in group], rl.temperature, state.sampler)
            graded = state.rewards.grade([answer_text(state.tokenizer, a, state.stops) for a in answers], [state.train_data.items[i] for i in group])
            rewards = torch.tensor(graded.rewards).view(len(batch_indices), rl.samples_per_prompt)
            advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + ADVANTAGE_EPS)).flatten()

            examples = [scored_example(state.train_data.ids[i], a) for i, a in zip(group, answers)]
            loss_total, kl_total = policy_step(state, examples, advantages)
            grad_norm, learning_rate = clip_and_step(state, params)
            finish_step(
                state, meter, t0, loss_total, sum(len(e.input_ids) for e in examples), len(examples), learning_rate=learning_rate,
                grad_norm=float(grad_norm), train_mean_reward=float(rewards.mean()), train_reward_per_grader=graded.mean_per_grader(),
                train_mean_answer_tokens=sum(map(len, answers)) / len(answers), kl=kl_total, grader_errors=graded.errors,
                **({"train_malformed_answers": graded.malformed} if rl.response_format else {}),
            )  # fmt: skip
            if after_step(state, len(batches), len(state.valid_data) > 0, lambda _epoch_end: validate(state), save_checkpoint, "validation reward"):
                return False
        next_epoch_if_done(state, len(batches))
    return False


def generate(state: Run, prompt_ids: list[list[int]], temperature: float, sampler: torch.Generator) -> list[list[int]]:
    """The policy's answers, in eval mode (no dropout), in chunks of the batch the run would train at once."""
    state.model.eval()
    try:
        answers = []
        chunk = EVAL_PROMPTS_PER_BATCH
        for start in range(0, len(prompt_ids), chunk):
            with autocast(state):
                answers += sample_answers(state.model, prompt_ids[start : start + chunk], state.pad_id, state.stops,
                                          state.request.reinforcement.max_new_tokens, temperature, sampler)  # fmt: skip
        return answers
    finally:
        state.model.train()


def policy_step(state: Run, examples: list, advantages: torch.Tensor) -> tuple[float, float]:
    """Backward of the clipped GRPO loss (+ β·KL) over the answers, in gradient_accumulation_steps micro-batches
    weighted by their share; (loss, mean per-token KL to the reference)."""
    rl = state.request.reinforcement
    micro = math.ceil(len(examples) / state.request.hyperparameters.gradient_accumulation_steps)
    state.optimizer.zero_grad(set_to_none=True)
    loss_total, kl_sum, kl_tokens = 0.0, 0.0, 0
    for start in range(0, len(examples), micro):
        part = examples[start : start + micro]
        batch = collate(part, state.pad_id)
        with autocast(state):
            logp, rows, _ = token_logprobs(state.model, *batch)
        adv = advantages[start : start + micro][rows]
        ratio = torch.exp(logp - logp.detach())  # 1 in value; its gradient is the policy gradient
        per_token = -torch.min(ratio * adv, ratio.clamp(1 - rl.clip_epsilon, 1 + rl.clip_epsilon) * adv)
        if rl.kl_beta > 0:
            with torch.no_grad(), autocast(state):
                ref = reference_logprobs(state, batch)
            delta = ref - logp
            kl = torch.exp(delta) - delta - 1
            per_token = per_token + rl.kl_beta * kl
            kl_sum, kl_tokens = kl_sum + float(kl.detach().sum()), kl_tokens + kl.numel()
        # Each answer's mean over its tokens (a long answer does not outweigh a short one), then the batch's mean.
        lengths = torch.zeros(len(part)).index_add(0, rows, torch.ones_like(logp))
        per_answer = torch.zeros(len(part), dtype=per_token.dtype).index_add(0, rows, per_token) / lengths.clamp(min=1)
        loss = per_answer.sum() / len(examples)
        loss.backward()
        loss_total += float(loss.detach())
    return loss_total, kl_sum / kl_tokens if kl_tokens else 0.0


def reference_logprobs(state: Run, batch) -> torch.Tensor:
    """The reference's log-probabilities of the same answer tokens: the frozen copy, or the base with the adapter off."""
    if state.reference is not None:
        return token_logprobs(state.reference, *batch)[0]
    state.model.eval()
    try:
        with state.model.disable_adapter():
            return token_logprobs(state.model, *batch)[0]
    finally:
        state.model.train()


@torch.no_grad()
def validate(state: Run, emit_fields: bool = True) -> dict[str, Any]:
    """Greedy answers to the validation prompts, graded: mean reward, per grader, answer length; added to the step's
    `metrics` event (draws nothing from the sampling generator)."""
    data = state.valid_data
    answers = generate(state, data.ids, 0.0, state.sampler)
    graded = state.rewards.grade([answer_text(state.tokenizer, a, state.stops) for a in answers], data.items)
    fields = {
        "valid_mean_reward": sum(graded.rewards) / len(graded.rewards),
        "valid_reward_per_grader": graded.mean_per_grader(),
        "valid_mean_answer_tokens": sum(map(len, answers)) / len(answers),
        **({"valid_malformed_answers": graded.malformed} if state.request.reinforcement.response_format else {}),
    }
    if emit_fields:
        state.valid_reward = fields["valid_mean_reward"]
        emit_metrics(state, **fields)
        log(f"step {state.step}: validation reward {state.valid_reward:.4f} / 第 {state.step} 步验证奖励")
    return fields


# ----------------------------------------------------------------------------------------- checkpointing


def save_checkpoint(state: Run) -> str:
    """`checkpoints/step-NNNNNN/`: the policy (adapter or full model), training_state.pt with the sampling generator,
    state.json, manifest.json (training/checkpoints.py)."""
    if state.request.reinforcement.policy == "full":
        def write(directory: Path) -> None:
            state.model.save_pretrained(directory)
            state.tokenizer.save_pretrained(directory, save_jinja_files=False)
    else:
        write = lambda directory: checkpoints.save_adapter(state.model, directory)  # noqa: E731
    extra = {"sampling_rng": state.sampler.get_state(), "valid_reward": state.valid_reward, "initial_valid_reward": state.initial_valid_reward}
    return checkpoints.write_checkpoint(state, write, state.optimizer.state_dict(), extra_state=extra,
                                        extra_summary={"valid_mean_reward": state.valid_reward})  # fmt: skip


def load_checkpoint(state: Run, path: Path, weights: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    """A checkpoint's policy, optimizer and sampling generator into the run."""
    if state.request.reinforcement.policy == "full":
        loaded = state.model.load_state_dict(weights, strict=False)
        if loaded.unexpected_keys or [k for k in loaded.missing_keys if "lm_head" not in k]:  # a tied LM head is not saved
            raise EngineError("invalid_file", f"{path}: weights do not match the model / 权重与模型不符", "resume")
        state.optimizer.load_state_dict(saved["optimizer"])
    else:
        checkpoints.load_adapter(state, path, weights, saved)
    state.sampler.set_state(saved["sampling_rng"])
    state.valid_reward, state.initial_valid_reward = saved.get("valid_reward"), saved.get("initial_valid_reward")


# ------------------------------------------------------------------------------------------------ finish


def save_final(state: Run) -> str:
    """The policy (adapter, or complete model), tokenizer and weitiao.json in `<output_dir>/model/`, written atomically."""
    if state.request.reinforcement.policy == "full":
        return save_final_model(state, state.model.save_pretrained, format="full", precision=state.precision,
                                final_valid_mean_reward=state.valid_reward)  # fmt: skip
    return save_final_model(state, lambda d: checkpoints.save_adapter(state.model, d), format="lora", final_valid_mean_reward=state.valid_reward)
