"""A run's inputs: its JSONL files (read with file:line errors), the output directory, the tokenizer, a
plain base model, and tokenized examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..chat_format import TokenizedExample, tokenize_examples
from ..protocol import ChatExample, EngineError, Strict, TrainRequest, log


def read_jsonl(path: str, param: str, schema: type[Strict], what: str) -> Iterator[tuple[int, Any]]:
    """(line number, record validated by `schema`) for every non-blank line; the first bad line is an error
    naming file:line and the field. `what` names the record in the Chinese half of the message."""
    from pydantic import ValidationError

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise EngineError("invalid_file", f"{path}: file not found / 文件不存在", param) from e
    except (OSError, UnicodeDecodeError) as e:
        raise EngineError("invalid_file", f"{path}: cannot read as UTF-8 text: {e} / 无法读取", param) from e
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EngineError("invalid_file", f"{path}:{number}: invalid JSON: {e.msg} / JSON 格式错误", param) from e
        try:
            yield number, schema.model_validate(record)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise EngineError("invalid_file", f"{path}:{number}: {where}: {err['msg']} / {what}格式错误", param) from e


def load_examples(path: str, param: str) -> list[list[dict[str, Any]]]:
    """The messages of every example in a chat JSONL file; the first bad line is an error naming file:line."""
    examples = []
    for number, example in read_jsonl(path, param, ChatExample, "样本"):
        if not example.messages:
            raise EngineError("invalid_file", f"{path}:{number}: messages: empty / messages 为空", param)
        examples.append([m.model_dump(exclude_none=True) for m in example.messages])
    if not examples:
        raise EngineError("invalid_file", f"{path}: no examples / 文件中没有样本", param)
    return examples


def read_files(request: TrainRequest, read: Optional[Callable[[str, str], list]] = None) -> tuple[Path, list, list]:
    """(output directory, its checkpoints/ created; training records; validation records or []): `read(path, param)`
    reads one file (chat examples by default). Data first: a bad file should fail before minutes of model loading."""
    output_dir = Path(request.output_dir)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    read = read or load_examples
    train = read(request.training_file, "training_file")
    return output_dir, train, read(request.validation_file, "validation_file") if request.validation_file else []


def load_plain_base(base: str, dtype) -> Any:
    """A base model as transformers loads it (full fine-tuning, DPO); a broken directory is an error on `base_model`."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    except Exception as e:  # transformers/safetensors raise OSError, ValueError… for broken directories
        raise EngineError("invalid_file", f"{base}: cannot load the model: {e} / 无法加载模型", "base_model") from e


def load_tokenizer(base: str) -> tuple[Any, int]:
    """(tokenizer, pad id) of a base model directory; a missing or broken directory is an error on `base_model`."""
    from ..tokens import auto_tokenizer

    if not Path(base).is_dir():
        raise EngineError("not_found", f"base model directory {base} does not exist / 基础模型目录不存在", "base_model")
    try:
        tokenizer = auto_tokenizer(base)
    except Exception as e:  # transformers raises OSError, ValueError… for broken directories
        raise EngineError("invalid_file", f"{base}: cannot load the tokenizer: {e} / 无法加载分词器", "base_model") from e
    return tokenizer, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def tokenize_sft(
    tokenizer, request: TrainRequest, train_examples: list, valid_examples: list
) -> tuple[list[TokenizedExample], list[TokenizedExample], tuple[int, int]]:
    """(training data, validation data, (long training, long validation)): what happens to examples longer than
    max_seq_length follows hyperparameters.long_examples and is logged; a training file with no assistant tokens
    to train on is an error."""
    max_len, policy = request.hyperparameters.max_seq_length, request.hyperparameters.long_examples
    # skip/error look at the full lengths; truncate keeps the answer whole where the prompt can give way.
    limit = max_len if policy == "truncate" else None
    train_data, _ = tokenize_examples(tokenizer, train_examples, limit, keep_answer=True)
    valid_data, _ = tokenize_examples(tokenizer, valid_examples, limit, keep_answer=True)
    long_train = [i for i, e in enumerate(train_data) if e.truncated or len(e.input_ids) > max_len]
    long_valid = [i for i, e in enumerate(valid_data) if e.truncated or len(e.input_ids) > max_len]
    n_truncated, n_valid_truncated = len(long_train), len(long_valid)
    if long_train or long_valid:
        # 1-based example numbers (the files' non-blank lines); the control plane's warning names the exact lines.
        where = f"training examples {[i + 1 for i in long_train][:20]}, validation examples {[i + 1 for i in long_valid][:20]}"
        if policy == "error":
            raise EngineError(
                "invalid_file",
                f"{n_truncated} training and {n_valid_truncated} validation examples are longer than max_seq_length={max_len} "
                f"({where}) / 有样本超过最大长度",
                "training_file" if long_train else "validation_file",
            )
        if policy == "skip":
            skip_train, skip_valid = set(long_train), set(long_valid)
            train_data = [e for i, e in enumerate(train_data) if i not in skip_train]
            valid_data = [e for i, e in enumerate(valid_data) if i not in skip_valid]
        done = "were truncated keeping the answer" if policy == "truncate" else "were skipped"
        log(
            f"{n_truncated} training and {n_valid_truncated} validation examples are longer than max_seq_length="
            f"{max_len} and {done} ({where}) / {n_truncated} 条训练样本和 {n_valid_truncated} 条验证样本超长，"
            f"{'已截断（保留回答）' if policy == 'truncate' else '已跳过'}",
            "warning",
        )
    if not train_data:
        raise EngineError("invalid_file", f"{request.training_file}: every example is longer than max_seq_length={max_len} / 所有样本都超长", "training_file")
    if not any(e.n_trained for e in train_data):
        raise EngineError(
            "invalid_file", f"{request.training_file}: no assistant tokens to train on / 没有可训练的助手回复", "training_file"
        )
    return train_data, valid_data, (n_truncated, n_valid_truncated)
