"""One benchmark run in its own process (so peak memory is this run's alone); prints one JSON line.

    .venv/bin/python bench/worker.py SPEC.json     (bench/run.py writes the spec and starts this)

Systems: `trl` (TRL SFTTrainer + PEFT LoRA, TRL's default settings, completion-only loss) and `weitiao`
(the engine's LoRA recipe in-process, its defaults plus the spec's `options`), and `score` (batched label
scoring against a per-example generate loop). Both trainers record the wall time of steps 2..N (step 1
warms up oneDNN's kernels), every step's train loss and the peak RSS right after training; then the same
evaluator (fp32, the engine's labels, no autocast) computes the validation loss of the saved adapter.
The process runs on tcmalloc when the machine has it, as the engine does (allocator.py), unless the spec
says `"malloc": "system"` (the TRL baseline, and the engine's "− tcmalloc" row).

Same optimisation in both (what the harness pins, `parity` in the result): the engine's tokens with its
label mask (answer + end-of-turn; TRL's own prompt-completion tokenization also labels the template's
`\\n` after `<|im_end|>`), the engine's batches in the engine's order (TRL reads them sequentially), the
LoRA weights initialised from the same seed, and TRL's optimizer defaults, which the engine's equal
(AdamW 0.9/0.999/1e-8, no weight decay, linear decay without warmup, clipping at 1.0, loss = sum over
the batch's labelled tokens / their number). What is about speed stays TRL's default: bf16 autocast,
gradient checkpointing, padding to the longest in the batch, chunked cross-entropy.
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "engine"))

PIN = ("labels", "order", "init")
# The engine's LoRA defaults (dropout 0, as PEFT, torchtune and Unsloth), given to both systems alike.
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


SWITCHES = ("lm_head_at_labels_only", "packing", "fast_lora_dropout", "selective_checkpointing", "packed_attention", "lean_lora_forward", "fused_projections", "silu_mul", "row_multiple")  # recipe switches, not request fields


def engine_hyperparameters(spec: dict[str, Any]) -> dict[str, Any]:
    """The engine's TrainRequest hyperparameters for this run: its defaults plus the spec's options."""
    options = {k: v for k, v in spec.get("options", {}).items() if k not in SWITCHES}
    return {"n_epochs": 1, "batch_size": spec["batch_size"], "learning_rate": spec["learning_rate"], "seed": spec["seed"], **options}


def engine_data(spec: dict[str, Any], tokenizer) -> tuple[list[Any], list[list[int]]]:
    """The training file tokenized as the engine does, and the engine's batches of epoch 0 in its order."""
    from weitiao_engine.chat_format import tokenize_examples
    from weitiao_engine.protocol import TrainHyperparameters
    from weitiao_engine.training.batching import epoch_batches
    from weitiao_engine.training.data import load_examples

    hp = TrainHyperparameters.model_validate(engine_hyperparameters(spec))
    examples, _ = tokenize_examples(tokenizer, load_examples(spec["train"], "training_file"), hp.max_seq_length)
    batches = epoch_batches(hp.seed, 0, [len(e.input_ids) for e in examples], hp.batch_size, hp.group_by_length)
    return examples, batches[: spec["steps"]]


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from weitiao_engine import allocator
    from weitiao_engine.training.rng import seed_everything

    # What the harness pins to the engine's (all three by default; fewer only to measure what each changes):
    # "labels" (the engine's tokens and label mask), "order" (the engine's batches), "init" (LoRA A from the seed).
    pin = set(spec.get("pin", PIN))
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    examples, batches = engine_data(spec, tokenizer)
    order = [i for b in batches for i in b] if "order" in pin else list(range(len(examples)))
    if "labels" in pin:
        # Pre-tokenized data is used as is by TRL: completion_mask becomes its label mask (completion_only_loss).
        rows = [{"input_ids": examples[i].input_ids, "completion_mask": [int(l != -100) for l in examples[i].labels]} for i in order]
    else:  # TRL's own prompt-completion tokenization of the same conversations
        chats = [json.loads(line)["messages"] for line in Path(spec["train"]).read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [{"prompt": chats[i][:-1], "completion": chats[i][-1:]} for i in order]
    marks: list[tuple[float, int]] = []
    losses: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), trainer._total_train_tokens))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    config = SFTConfig(
        output_dir=str(Path(spec["out"]) / "trl"),
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        learning_rate=spec["learning_rate"],
        seed=spec["seed"],
        completion_only_loss=True,
        train_sampling_strategy="sequential" if "order" in pin else "random",  # the rows are in the engine's batch order
        logging_steps=1,  # every step's loss, to compare with the engine's
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    # What SFTTrainer does with a model path and a peft_config (load in fp32, get_peft_model), with the
    # LoRA init seeded as the engine seeds it, so both start from the same A matrices.
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=spec.get("lora_dropout", LORA["dropout"]), target_modules="all-linear", task_type="CAUSAL_LM")
    model, peft_config = spec["model"], lora
    if "init" in pin:
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
        seed_everything(spec["seed"])
        model, peft_config = get_peft_model(model, lora), None
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimes()])
    trainer.train()
    peak = peak_rss_bytes()
    adapter = Path(spec["out"]) / "trl-adapter"
    trainer.save_model(str(adapter))
    keys = ("bf16", "gradient_checkpointing", "loss_type", "padding_free", "packing", "train_sampling_strategy", "optim", "lr_scheduler_type",
            "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "gradient_accumulation_steps")  # fmt: skip
    settings = {k: str(v) if not isinstance(v, (bool, int, float, type(None))) else v for k, v in ((k, getattr(config, k, None)) for k in keys)}
    settings["allocator"] = allocator.in_use()
    return {"marks": marks, "losses": losses, "peak_rss": peak, "adapter": str(adapter), "settings": settings, "pinned": sorted(pin)}


def run_weitiao(spec: dict[str, Any]) -> dict[str, Any]:
    from weitiao_engine import allocator, protocol
    from weitiao_engine.protocol import TrainRequest
    from weitiao_engine.recipes import lora_finetune
    from weitiao_engine.training import activation_checkpointing, batching, lora as lora_setup, loss as training_loss
    from weitiao_engine.training import fused_ops, fused_projections, lora_forward, packed_attention

    options = spec.get("options", {})
    # Techniques with no request field: module switches of the recipe, on by default (the ablations turn one off).
    training_loss.LM_HEAD_AT_LABELS_ONLY = options.get("lm_head_at_labels_only", True)
    batching.PACKING = options.get("packing", True)
    batching.ROW_MULTIPLE = options.get("row_multiple", batching.ROW_MULTIPLE)
    lora_setup.FAST_LORA_DROPOUT = options.get("fast_lora_dropout", True)
    packed_attention.PACKED_ATTENTION = options.get("packed_attention", True)
    lora_forward.LEAN_LORA_FORWARD = options.get("lean_lora_forward", True)
    fused_projections.FUSE_PROJECTIONS = options.get("fused_projections", True)
    fused_ops.SILU_MUL = options.get("silu_mul", True)
    if options.get("selective_checkpointing", True) is False:
        activation_checkpointing.SELECTIVE_MAX_SHARE = 0.0  # full checkpointing whenever checkpointing is on
    marks: list[tuple[float, int]] = []
    losses: list[float] = []

    class Events(io.TextIOBase):  # the recipe's stdout events, timestamped as they come
        def write(self, line: str) -> int:
            for text in line.splitlines():
                event = json.loads(text)
                if event["type"] == "metrics" and "train_loss" in event:
                    marks.append((time.perf_counter(), event["trained_tokens"]))
                    losses.append(event["train_loss"])
            return len(line)

        def flush(self) -> None:
            pass

    protocol._out = Events()
    request = TrainRequest.model_validate(
        {
            "base_model": spec["model"],
            "output_dir": str(Path(spec["out"]) / "weitiao"),
            "training_file": spec["train"],
            "lora": {**LORA, "dropout": spec.get("lora_dropout", LORA["dropout"])},
            "hyperparameters": engine_hyperparameters(spec),
            "max_steps": spec["steps"],
        }
    )
    result = lora_finetune.run(request)
    peak = peak_rss_bytes()
    hp = request.hyperparameters
    settings = {**options, "precision": result["precision"], "group_by_length": hp.group_by_length, "packed": result["packed"],
                "gradient_checkpointing": result["gradient_checkpointing"], "lora_dropout": lora_setup.FAST_LORA_DROPOUT and request.lora.dropout > 0,
                "allocator": allocator.in_use()}  # fmt: skip
    return {"marks": marks, "losses": losses, "peak_rss": peak, "adapter": result["model_dir"], "settings": settings,
            "precision_choice": result.get("precision_choice")}  # how `bf16` was resolved: the probe's figures


def validation_loss(model_dir: str, adapter: str, valid: str) -> float:
    """Mean cross-entropy over the validation answers (the engine's labels), fp32, for either system's adapter."""
    import torch
    from weitiao_engine.chat_format import tokenize_examples
    from weitiao_engine.loading import load_model
    from weitiao_engine.training import loss as training_loss
    from weitiao_engine.training.batching import collate, length_sorted_batches
    from weitiao_engine.training.data import load_examples

    training_loss.LM_HEAD_AT_LABELS_ONLY = True  # same loss either way (tested); this way is cheaper
    model, tokenizer = load_model(model_dir, adapter, dtype=torch.float32)
    examples, _ = tokenize_examples(tokenizer, load_examples(valid, "validation_file"), 1024)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in length_sorted_batches([len(e.input_ids) for e in examples], 16):
            s, n, _ = training_loss.token_loss(model, *collate([examples[i] for i in batch], tokenizer.pad_token_id))
            total, count = total + s.item(), count + n
    return total / count


def run_scoring(spec: dict[str, Any]) -> dict[str, Any]:
    """Batched label scoring vs a greedy generate loop, one example at a time, on the same prompts.

    The loop is what a user's evaluation would do: render the prompt, `generate` greedily until an end
    token (room for the longest label and its end token), decode and strip. Both are timed end to end,
    prompt rendering and tokenization included."""
    import torch
    from transformers import GenerationConfig
    from weitiao_engine.chat_format import answers_for_prompts, prompt_ids
    from weitiao_engine.loading import load_model, stop_token_ids
    from weitiao_engine.scoring import score_labels
    from weitiao_engine.training.data import load_examples

    model, tokenizer = load_model(spec["model"], spec["adapter"])
    prompts = [m[:-1] for m in load_examples(spec["valid"], "validation_file")][: spec.get("n")]
    labels, batch = ["好评", "差评"], spec.get("batch_size", 32)
    longest = max(len(c) for c in answers_for_prompts(tokenizer, prompts[:1], labels)[0][1])  # label tokens + end token
    config = GenerationConfig(max_new_tokens=longest, do_sample=False, eos_token_id=sorted(stop_token_ids(model, tokenizer)), pad_token_id=tokenizer.pad_token_id)
    stops = set(config.eos_token_id)

    @torch.no_grad()
    def generate_one(messages) -> str:
        ids = torch.tensor([prompt_ids(tokenizer, messages)])
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)[0, ids.shape[1] :].tolist()
        return tokenizer.decode([t for t in new if t not in stops], skip_special_tokens=True).strip()

    score_labels(model, tokenizer, prompts[:batch], labels, batch)  # warm-up, both ways
    [generate_one(p) for p in prompts[:2]]
    t = time.perf_counter()
    scored = score_labels(model, tokenizer, prompts, labels, batch)
    score_s = time.perf_counter() - t
    t = time.perf_counter()
    generated = [generate_one(p) for p in prompts]
    generate_s = time.perf_counter() - t
    n = len(prompts)
    return {
        "n": n, "batch_size": batch, "max_new_tokens": longest, "score_eps": n / score_s, "generate_eps": n / generate_s,
        "agree": sum(a == b for a, b in zip(scored, generated)), "generated_labels": sum(g in labels for g in generated),
        "predicted": {label: scored.count(label) for label in labels},
    }  # fmt: skip


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    from weitiao_engine import allocator

    if spec.get("malloc") == "system":
        os.environ["WEITIAO_MALLOC"] = "system"
    allocator.use_tcmalloc()  # re-executes this process with tcmalloc preloaded, as the engine's entry point does
    import torch

    torch.manual_seed(spec["seed"])
    if spec["system"] == "score":
        print("RESULT " + json.dumps(run_scoring(spec)), flush=True)
        return
    out = run_trl(spec) if spec["system"] == "trl" else run_weitiao(spec)
    marks = out.pop("marks")
    (t1, tok1), (tn, tokn) = marks[0], marks[-1]
    steps_timed = len(marks) - 1
    out.update(
        steps=len(marks),
        steps_timed=steps_timed,
        seconds=tn - t1,
        examples_per_second=steps_timed * spec["batch_size"] / (tn - t1),
        tokens_per_second=(tokn - tok1) / (tn - t1),
        valid_loss=validation_loss(spec["model"], out["adapter"], spec["valid"]),
    )
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
