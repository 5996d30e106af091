"""One benchmark run in its own process (so peak memory is this run's alone); prints one JSON line.

    .venv/bin/python bench/worker.py SPEC.json     (bench/run.py writes the spec and starts this)

Systems: `trl` (TRL SFTTrainer + PEFT LoRA, default settings, completion-only loss) and `weitiao` (the
engine's LoRA recipe in-process, with optional ablation switches). Both record the wall time of steps
2..N (step 1 warms up oneDNN's kernels) and the peak RSS right after training; then the same evaluator
(fp32, the engine's labels, no autocast) computes the validation loss of the saved adapter, so the two
losses mean exactly the same thing.
"""

from __future__ import annotations

import io
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "engine"))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    def as_prompt_completion(messages):  # the same conversation, in TRL's prompt-completion format
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    rows = [as_prompt_completion(json.loads(line)["messages"]) for line in Path(spec["train"]).read_text(encoding="utf-8").splitlines()]
    marks: list[tuple[float, int]] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), trainer._total_train_tokens))

    config = SFTConfig(
        output_dir=str(Path(spec["out"]) / "trl"),
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        learning_rate=spec["learning_rate"],
        seed=spec["seed"],
        completion_only_loss=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=spec["model"], args=config, train_dataset=Dataset.from_list(rows), peft_config=lora, callbacks=[StepTimes()])
    trainer.train()
    peak = peak_rss_bytes()
    adapter = Path(spec["out"]) / "trl-adapter"
    trainer.save_model(str(adapter))
    settings = {k: getattr(config, k, None) for k in ("bf16", "gradient_checkpointing", "loss_type", "padding_free", "packing", "group_by_length")}
    return {"marks": marks, "peak_rss": peak, "adapter": str(adapter), "settings": settings}


def run_weitiao(spec: dict[str, Any]) -> dict[str, Any]:
    from weitiao_engine import protocol
    from weitiao_engine.protocol import TrainRequest
    from weitiao_engine.recipes import lora_finetune

    options = spec.get("options", {})
    lora_finetune.LM_HEAD_AT_LABELS_ONLY = options.get("lm_head_at_labels_only", True)
    marks: list[tuple[float, int]] = []

    class Events(io.TextIOBase):  # the recipe's stdout events, timestamped as they come
        def write(self, line: str) -> int:
            for text in line.splitlines():
                event = json.loads(text)
                if event["type"] == "metrics" and "train_loss" in event:
                    marks.append((time.perf_counter(), event["trained_tokens"]))
            return len(line)

        def flush(self) -> None:
            pass

    protocol._out = Events()
    request = TrainRequest.model_validate(
        {
            "base_model": spec["model"],
            "output_dir": str(Path(spec["out"]) / "weitiao"),
            "training_file": spec["train"],
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
            "hyperparameters": {
                "n_epochs": 1,
                "batch_size": spec["batch_size"],
                "learning_rate": spec["learning_rate"],
                "seed": spec["seed"],
                "bf16": options.get("bf16", "auto"),
                "group_by_length": options.get("group_by_length", True),
                "gradient_checkpointing": options.get("gradient_checkpointing", False),
            },
            "max_steps": spec["steps"],
        }
    )
    result = lora_finetune.run(request)
    peak = peak_rss_bytes()
    return {"marks": marks, "peak_rss": peak, "adapter": result["model_dir"], "settings": {**options, "precision": result["precision"]}}


def validation_loss(model_dir: str, adapter: str, valid: str) -> float:
    """Mean cross-entropy over the validation answers (the engine's labels), fp32, for either system's adapter."""
    import torch
    from weitiao_engine.chat_format import tokenize_examples
    from weitiao_engine.loading import load_model
    from weitiao_engine.recipes import lora_finetune

    lora_finetune.LM_HEAD_AT_LABELS_ONLY = True  # same loss either way (tested); this way is cheaper
    model, tokenizer = load_model(model_dir, adapter, dtype=torch.float32)
    examples, _ = tokenize_examples(tokenizer, lora_finetune.load_examples(valid, "validation_file"), 1024)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in lora_finetune.length_sorted_batches([len(e.input_ids) for e in examples], 16):
            s, n, _ = lora_finetune.token_loss(model, *lora_finetune.collate([examples[i] for i in batch], tokenizer.pad_token_id))
            total, count = total + s.item(), count + n
    return total / count


def run_scoring(spec: dict[str, Any]) -> dict[str, Any]:
    """Batched label scoring vs a greedy generate loop, one example at a time, on the same prompts."""
    from weitiao_engine.evaluate import generate_greedy
    from weitiao_engine.loading import load_model, score_labels
    from weitiao_engine.recipes import lora_finetune

    model, tokenizer = load_model(spec["model"], spec["adapter"])
    prompts = [m[:-1] for m in lora_finetune.load_examples(spec["valid"], "validation_file")]
    labels, batch = ["好评", "差评"], 32
    score_labels(model, tokenizer, prompts[:batch], labels, batch)  # warm-up, both ways
    generate_greedy(model, tokenizer, prompts[:2], 1, 8)
    t = time.perf_counter()
    scored = score_labels(model, tokenizer, prompts, labels, batch)
    score_s = time.perf_counter() - t
    t = time.perf_counter()
    generated = generate_greedy(model, tokenizer, prompts, 1, 8)
    generate_s = time.perf_counter() - t
    n = len(prompts)
    return {"n": n, "batch_size": batch, "score_eps": n / score_s, "generate_eps": n / generate_s, "agree": sum(a == b for a, b in zip(scored, generated))}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
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
