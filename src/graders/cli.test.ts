// `weitiao graders run|validate` as the real command in a subprocess (through the engine's grade command):
// the reward with each named grader's score, a data file checked line by line, a bad grader named by field,
// and a score_model judged by one of weitiao's own models with no server running.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createTestModel } from '../testing/waimai.js';
import { openContext } from '../context.js';

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

test('graders run judges with a weitiao model when no judge endpoint is configured', { timeout: 300_000 }, async () => {
  const ctx = openContext({ home: path.join(dir, 'home') });
  try {
    await createTestModel(ctx, 'tiny-judge');
  } finally {
    ctx.close();
  }
  const judge = {
    type: 'score_model', name: 'judge', model: 'tiny-judge', range: [0, 10],
    input: [{ role: 'system', content: '给回答打分（0-10）。' }, { role: 'user', content: '评论：{{item.review}} 回答：{{sample.output_text}}' }],
    sampling_params: { temperature: 0, max_completions_tokens: 8 },
  };
  writeFileSync(path.join(dir, 'judge.json'), JSON.stringify(judge));
  const env = { ...process.env };
  delete env.WEITIAO_JUDGE_BASE_URL;
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', MAIN, '--home', path.join(dir, 'home'), 'graders', 'run', '--grader', path.join(dir, 'judge.json'), '--sample', '好评', '--item', '{"review": "送餐很快"}', '--json'],
    { encoding: 'utf8', timeout: 240_000, env },
  );
  assert.equal(r.status, 0, r.stderr);
  const result = JSON.parse(r.stdout);
  // The tiny random model answered (its tokens are counted); whether its text holds a score in range is chance.
  assert.equal(result.metadata.sampled_model_name, 'tiny-judge');
  assert.ok(result.metadata.token_usage > 0);
  assert.equal(result.metadata.errors.model_grader_server_error, false, result.metadata.errors.model_grader_server_error_details);
  const parsed = !result.metadata.errors.model_grader_parse_error;
  assert.ok(parsed ? result.reward >= 0 && result.reward <= 10 : result.reward === 0);
});
