// `weitiao graders run|validate` as the real command in a subprocess (through the engine's grade command):
// the reward with each named grader's score, a data file checked line by line, a bad grader named by field.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.ts');
let dir: string;

function weitiao(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', MAIN, '--home', path.join(dir, 'home'), ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const exact = { type: 'string_check', name: 'exact', input: '{{sample.output_text}}', reference: '{{item.label}}', operation: 'eq' };
const overlap = { type: 'text_similarity', name: 'overlap', input: '{{sample.output_text}}', reference: '{{item.label}}', evaluation_metric: 'rouge_1' };

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-graders-cli-'));
  writeFileSync(path.join(dir, 'multi.json'), JSON.stringify({ type: 'multi', name: 'reward', graders: { exact, overlap }, calculate_output: '0.5 * exact + 0.5 * overlap' }));
  writeFileSync(path.join(dir, 'bad.json'), JSON.stringify({ ...exact, operation: 'equals' }));
  writeFileSync(path.join(dir, 'answer.txt'), '差评');
  writeFileSync(path.join(dir, 'items.jsonl'), ['{"label": "好评"}', '{"lable": "差评"}', '{"label": "差评"}'].join('\n') + '\n');
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('graders run prints the reward and each named score; --json prints the full response', () => {
  const text = weitiao('graders', 'run', '--grader', path.join(dir, 'multi.json'), '--sample-file', path.join(dir, 'answer.txt'), '--item', '{"label": "好评"}');
  assert.equal(text.status, 0, text.stderr);
  // exact 0; rouge_1 by character: 评 shared → 1/2; reward 0.25
  assert.match(text.stdout, /reward 得分 +0\.25\n/);
  assert.match(text.stdout, /overlap +0\.5/);
  assert.match(text.stdout, /scored by character/);
  const json = weitiao('graders', 'run', '--grader', path.join(dir, 'multi.json'), '--sample', '好评', '--item', '{"label": "好评"}', '--json');
  assert.equal(json.status, 0, json.stderr);
  const result = JSON.parse(json.stdout);
  assert.equal(result.reward, 1);
  assert.deepEqual(result.sub_rewards, { exact: 1, overlap: 1 });
});

test('graders validate checks the grader and every line of a data file', () => {
  const ok = weitiao('graders', 'validate', '--grader', path.join(dir, 'multi.json'));
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /ok: multi grader 'reward' is valid/);
  const lines = weitiao('graders', 'validate', '--grader', path.join(dir, 'multi.json'), '--data', path.join(dir, 'items.jsonl'));
  assert.equal(lines.status, 3, lines.stderr); // invalid_file
  assert.match(lines.stderr, /items\.jsonl:2: item\.label/);
  const bad = weitiao('graders', 'validate', '--grader', path.join(dir, 'bad.json'));
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /grader\.operation/);
  const both = weitiao('graders', 'run', '--grader', path.join(dir, 'multi.json'), '--sample', 'x', '--sample-file', path.join(dir, 'answer.txt'));
  assert.equal(both.status, 2);
  assert.match(both.stderr, /exactly one of --sample and --sample-file/);
});
