// The grader schemas of both sides agree (src/graders/schema.ts and engine/weitiao_engine/graders/schema.py):
// the same grader JSON is accepted by both or refused by both, naming the same field.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { ENGINE_DIR, enginePython } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { parseGrader } from './index.js';

const exact = { type: 'string_check', name: 'exact', input: '{{sample.output_text}}', reference: '{{item.label}}', operation: 'eq' };
const similar = { type: 'text_similarity', name: 's', input: 'a', reference: 'b', evaluation_metric: 'rouge_l', pass_threshold: 0.5 };
const judge = {
  type: 'score_model', name: 'j', model: 'm', range: [0, 10], sampling_params: { temperature: 0, seed: 1, max_completions_tokens: 16 },
  input: [{ role: 'user', content: [{ type: 'input_text', text: '{{item.q}}' }, '{{sample.output_text}}'] }, { role: 'system', content: 'x', type: 'message' }],
  weitiao: { base_url: 'http://127.0.0.1:8000/v1' },
};
const python = { type: 'python', name: 'p', source: 'def grade(sample, item):\n    return 1.0', image_tag: '2025-05-08' };
const multi = { type: 'multi', name: 'm', graders: { exact, similar, judge, python }, calculate_output: 'exact + similar' };

/** Each case: a grader and the param both sides must name (null: valid). */
const CASES: [unknown, string | null][] = [
  [exact, null], [similar, null], [judge, null], [python, null], [multi, null],
  [{ ...exact, operation: 'equals' }, 'grader.operation'],
  [{ ...exact, refrence: 'x' }, 'grader.refrence'],
  [{ ...similar, evaluation_metric: 'rouge_6' }, 'grader.evaluation_metric'],
  [{ ...judge, range: [1, 0] }, 'grader.range'],
  [{ ...judge, range: [0] }, 'grader.range'],
  [{ ...judge, input: [] }, 'grader.input'],
  [{ ...judge, input: [{ role: 'bot', content: 'x' }] }, 'grader.input[0].role'],
  [{ ...judge, sampling_params: { temperature: 3 } }, 'grader.sampling_params.temperature'],
  [{ ...judge, weitiao: { base: 'x' } }, 'grader.weitiao.base'],
  [{ ...python, source: '' }, 'grader.source'],
  [{ ...multi, graders: { exact, b: { ...exact, operation: 'equals' } } }, 'grader.graders.b.operation'],
  [{ ...multi, graders: { exact, b: { ...python, sorce: 'x' } } }, 'grader.graders.b.sorce'],
  [{ ...multi, graders: { inner: multi } }, 'grader.graders.inner.type'],
  [{ ...multi, calculate_output: '' }, 'grader.calculate_output'],
  [{ ...exact, name: 3 }, 'grader.name'],
  [{ name: 'x' }, 'grader.type'],
  [{ ...exact, type: 'label_model' }, 'grader.type'],
];

const PYTHON = `
import json, sys
from pydantic import ValidationError
from weitiao_engine.graders.schema import parse_grader, error_param
out = []
for case in json.load(sys.stdin):
    try:
        parse_grader(case)
        out.append(None)
    except ValidationError as e:
        out.append(error_param(e.errors()[0]))
print(json.dumps(out))
`;

function typescriptParam(grader: unknown): string | null {
  try {
    parseGrader(grader);
    return null;
  } catch (err) {
    assert.ok(err instanceof WeitiaoError && err.code === 'invalid_request', String(err));
    return err.param ?? null;
  }
}

test('both sides accept the same graders and name the same field of a bad one', () => {
  const python = JSON.parse(
    execFileSync(enginePython(), ['-c', PYTHON], { cwd: ENGINE_DIR, input: JSON.stringify(CASES.map(([g]) => g)), encoding: 'utf8' }),
  ) as (string | null)[];
  CASES.forEach(([grader, expected], i) => {
    assert.equal(typescriptParam(grader), expected, `TypeScript, case ${i}: ${JSON.stringify(grader).slice(0, 120)}`);
    assert.equal(python[i], expected, `Python, case ${i}: ${JSON.stringify(grader).slice(0, 120)}`);
  });
});
