#!/usr/bin/env bash
# Distillation check of `weitiao data label` (issue 18, "large model teaches the small one"):
#   1. the demo's teacher: a tiny Qwen2 fine-tuned on the waimai training split (as scripts/demo.sh does);
#   2. `weitiao serve` serves it; `weitiao data label` labels 500 validation reviews with their labels removed;
#   3. teacher accuracy = its labels against the real ones;
#   4. a student (the same tiny base) is trained only on those 500 teacher labels and evaluated on 1,000
#      other validation reviews with their real labels.
# Prints both accuracies. Heavy (two trainings on CPU): run alone, `bash bench/distill.sh`.
# DISTILL_TEACHER=ft:… and WEITIAO_HOME=… reuse an already fine-tuned teacher (e.g. the demo's home).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.distill
mkdir -p "$OUT"
export WEITIAO_HOME="${WEITIAO_HOME:-$PWD/$OUT/home}"
DATA=../shared/data/waimai_10k.csv
SYSTEM="你是一位外卖评论好评差评评论专家。"
# the TypeScript sources (bin/weitiao.js prefers dist/, which may predate these commands)
W() { node --import tsx src/cli/main.ts "$@"; }
json() { node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const j=JSON.parse(s);console.log($1)})"; }

if [ ! -f "$OUT/data/validation.jsonl" ]; then
  W data prepare "$DATA" -o "$OUT/data" --system "$SYSTEM" --user "{review}" --assistant "{label}" \
    --label-map 1=好评,0=差评 --validation 0.3 --seed 100
fi
TEACHER="${DISTILL_TEACHER:-}"
if [ -z "$TEACHER" ]; then
  W models list --json | grep -q '"tiny-qwen2"' || W models create-tiny tiny-qwen2 --corpus "$DATA" --hidden-size 128 --layers 2 --heads 4 --kv-heads 2 --vocab-size 4096
  W train --model tiny-qwen2 --train "$OUT/data/train.jsonl" --suffix teacher --epochs 2 --batch-size 16 --learning-rate 3e-3 \
    --lora-r 16 --lora-alpha 32 --modules-to-save embed_tokens --seed 100
  TEACHER=$(W jobs list --json --limit 1 | json 'j.data[0].fine_tuned_model')
fi
echo "teacher 教师模型: $TEACHER"

# 500 reviews without labels (the first 500 validation examples) and 1,000 others kept for the student's test.
node -e '
const fs = require("fs");
const rows = fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
const q = (s) => `"${s.replaceAll("\"", "\"\"")}"`;
const review = (r) => r.messages.find((m) => m.role === "user").content;
const label = (r) => r.messages.at(-1).content;
fs.writeFileSync(process.argv[2], "review\n" + rows.slice(0, 500).map((r) => q(review(r))).join("\n") + "\n");
fs.writeFileSync(process.argv[3], rows.slice(0, 500).map((r) => JSON.stringify({ review: review(r), label: label(r) })).join("\n") + "\n");
fs.writeFileSync(process.argv[4], rows.slice(500, 1500).map((r) => JSON.stringify(r)).join("\n") + "\n");
' "$OUT/data/validation.jsonl" "$OUT/unlabelled.csv" "$OUT/truth.jsonl" "$OUT/student-test.jsonl"

PORT=${DISTILL_PORT:-18431}
node --import tsx src/cli/main.ts serve --no-auth --no-worker --port "$PORT" > "$OUT/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 1; done

rm -f "$OUT"/labelled.jsonl "$OUT"/labelled.jsonl.*
start=$(date +%s)
W data label "$OUT/unlabelled.csv" --column review --labels 好评,差评 --instruction "$SYSTEM" \
  --teacher "http://127.0.0.1:$PORT/v1" --model "$TEACHER" --concurrency 4 -o "$OUT/labelled.jsonl"
echo "labelling took $(( $(date +%s) - start )) s"
kill $SERVE 2>/dev/null || true

TEACHER_ACC=$(node -e '
const fs = require("fs");
const read = (f) => fs.readFileSync(f, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
const truth = new Map(read(process.argv[2]).map((r) => [r.review, r.label]));
const got = read(process.argv[1]);
const right = got.filter((r) => truth.get(r.review) === r.label).length;
console.log(`${right}/${truth.size} = ${(right / truth.size).toFixed(4)} (labelled ${got.length})`);
' "$OUT/labelled.jsonl" "$OUT/truth.jsonl")

rm -rf "$OUT/student-data"
W data prepare "$OUT/labelled.jsonl" -o "$OUT/student-data" --system "$SYSTEM" --user "{review}" --assistant "{label}" --seed 100
W train --model tiny-qwen2 --train "$OUT/student-data/train.jsonl" --suffix student --epochs 6 --batch-size 16 --learning-rate 3e-3 \
  --lora-r 16 --lora-alpha 32 --modules-to-save embed_tokens --seed 100
STUDENT=$(W jobs list --json --limit 1 | json 'j.data[0].fine_tuned_model')
W eval --model "$STUDENT" --data "$OUT/student-test.jsonl" --output "$OUT/eval-student.json" >/dev/null
W eval --model "$TEACHER" --data "$OUT/student-test.jsonl" --output "$OUT/eval-teacher.json" >/dev/null
STUDENT_ACC=$(json 'j.label_metrics.accuracy' < "$OUT/eval-student.json")
TEACHER_TEST_ACC=$(json 'j.label_metrics.accuracy' < "$OUT/eval-teacher.json")

echo
echo "teacher labels vs real labels (500 reviews)          教师标注准确率: $TEACHER_ACC"
echo "teacher on the 1,000 test reviews                    教师模型测试准确率: $TEACHER_TEST_ACC"
echo "student trained on teacher labels, same 1,000 reviews 学生模型测试准确率: $STUDENT_ACC"
