#!/usr/bin/env bash
# `make demo`: the whole workflow on the waimai reviews, offline, with the commands a user would type.
# A tiny random-weight Qwen2 (2 layers, 128 wide) with a tokenizer trained on the reviews stands in for a
# real base model, so that it runs in minutes on 2 CPU cores. Its random embeddings carry no meaning, so
# LoRA alone cannot move its answers (measured: stuck at the majority class); the demo also trains the
# embedding (`--modules-to-save embed_tokens`). A real pretrained base needs only LoRA.
# `bash scripts/demo.sh --train-only`: steps 1, 2 and 4 only (base model, data, fine-tune), no evaluation or
# export; the distillation test (make test-distill) trains its teacher this way when .demo holds no model.
set -euo pipefail
TRAIN_ONLY=$([ "${1:-}" = "--train-only" ] && echo 1 || true)
cd "$(dirname "$0")/.."

DEMO=.demo
export WEITIAO_HOME="$PWD/$DEMO/home"
weitiao() { echo; echo "\$ weitiao $*" | sed "s#$PWD/##g"; node bin/weitiao.js "$@"; }

rm -rf "$DEMO" && mkdir -p "$DEMO"
DATA=../shared/data/waimai_10k.csv
if [ ! -f "$DATA" ]; then
  DATA="$DEMO/waimai_10k.csv"
  echo "downloading the public waimai_10k.csv (ChineseNlpCorpus) / 下载公开数据集"
  curl -fsSL --retry 2 -o "$DATA" https://raw.githubusercontent.com/SophonPlus/ChineseNlpCorpus/master/datasets/waimai_10k/waimai_10k.csv
fi
start=$(date +%s)

echo "== 1. a base model 基座模型 =="
weitiao models create-tiny tiny-qwen2 --corpus "$DATA" --hidden-size 128 --layers 2 --heads 4 --kv-heads 2 --vocab-size 4096

echo; echo "== 2. prepare the data 准备数据 =="
weitiao data prepare "$DATA" -o "$DEMO/data" \
  --system "你是一位外卖评论好评差评评论专家。" --user "{review}" --assistant "{label}" \
  --label-map 1=好评,0=差评 --validation 0.3 --seed 100 --model tiny-qwen2
if [ -z "$TRAIN_ONLY" ]; then
weitiao data stats "$DEMO/data/train.jsonl" --model tiny-qwen2 --epochs 2

echo; echo "== 3. the base model before fine-tuning 微调前 =="
weitiao eval --model tiny-qwen2 --data "$DEMO/data/validation.jsonl" --output "$DEMO/eval-base.json"
fi

echo; echo "== 4. fine-tune with LoRA 微调 =="
weitiao train --model tiny-qwen2 --train "$DEMO/data/train.jsonl" --validation "$DEMO/data/validation.jsonl" \
  --suffix waimai --epochs 2 --batch-size 16 --learning-rate 3e-3 --lora-r 16 --lora-alpha 32 --modules-to-save embed_tokens \
  --eval-every 200 --seed 100
MODEL=$(node bin/weitiao.js jobs list --json --limit 1 | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).data[0].fine_tuned_model))')
if [ -n "$TRAIN_ONLY" ]; then echo; echo "fine-tuned model 微调模型: $MODEL"; exit 0; fi

echo; echo "== 5. evaluate: fine-tuned beside base 评估：微调后对比微调前 =="
weitiao eval --model "$MODEL" --data "$DEMO/data/validation.jsonl" --output "$DEMO/eval-finetuned.json"

echo; echo "== 5b. was it worth it? base zero-shot / few-shot / fine-tuned 微调值得吗？ =="
weitiao eval --model "$MODEL" --data "$DEMO/data/validation.jsonl" --baseline few-shot:4 --max-examples 500 --report "$DEMO/eval-baselines.html"
weitiao eval --model "$MODEL" --forgetting --max-examples 60 --report "$DEMO/eval-forgetting.html"

echo; echo "== 6. use it 使用 =="
for review in "送餐很快，味道也很好，下次还点" "等了两个小时，饭都凉了，太差了" "包装精致，分量足，好评！" "难吃，而且少送了一份菜"; do
  weitiao chat --model "$MODEL" --temperature 0 --max-tokens 8 --system "你是一位外卖评论好评差评评论专家。" --prompt "$review"
done

node - "$DEMO/eval-base.json" "$DEMO/eval-finetuned.json" "$start" <<'JS'
const fs = require('node:fs');
const [base, tuned] = process.argv.slice(2, 4).map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
const acc = (r) => r.label_metrics.accuracy;
const minutes = ((Date.now() / 1000 - Number(process.argv[4])) / 60).toFixed(1);
console.log(`\n== result 结果 ==\nvalidation accuracy 验证集准确率: base 微调前 ${acc(base).toFixed(4)} → fine-tuned 微调后 ${acc(tuned).toFixed(4)}` +
  ` (majority class 多数类 ${(Math.max(...tuned.label_metrics.labels.map((l) => tuned.label_metrics.per_class[l].support)) / tuned.n).toFixed(4)}; ${minutes} min)`);
if (acc(tuned) <= 0.8) { console.error('the fine-tuned model did not beat 0.80 accuracy / 微调后准确率未超过 0.80'); process.exit(1); }
JS

echo; echo "== 7. export and check 导出并检查 (GGUF q8_0, Ollama) =="
# Each export is checked against the trained model on the job's validation file (llama.cpp vs the engine);
# a failed check exits non-zero and stops the demo.
weitiao export "$MODEL" --format gguf --quantize q8_0 --check-max-examples 200 -o "$DEMO/export-gguf"
weitiao export "$MODEL" --format ollama --quantize q8_0 --check-max-examples 100 -o "$DEMO/export-ollama"
