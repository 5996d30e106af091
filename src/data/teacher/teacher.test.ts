// Teacher-made data against a stand-in OpenAI-compatible server on 127.0.0.1: labelling with logprob
// confidence, retries honouring retry-after, preference pairs, and a synthesis run SIGKILLed mid-way.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { validateChatFile, validatePreferenceFile } from '../index.js';
import { labelFile, mapToLabel, pairsFile, provenanceLines, rejectedUnits, TeacherClient } from './index.js';
import { startStandIn, type StandIn } from '../../testing/teacher-stand-in.js';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'cli', 'main.ts');
const jsonl = (file: string) => readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

let dir: string;
let server: StandIn;
before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'weitiao-teacher-'));
  server = await startStandIn();
});
after(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

const REVIEWS = [
  ['1', '送餐很快，味道不错', ''],
  ['2', '等了两个小时，凉了', ''],
  ['3', '香！下次还点', ''],
  ['4', '一般般吧', '差评'],
  ['5', '??? 看不懂', ''],
  ['6', '难吃', ''],
];

describe('data label', () => {
  test('fills the missing labels, confidence from logprobs, unknown answers dropped, a rerun asks nothing', async () => {
    const input = path.join(dir, 'reviews.csv');
    writeFileSync(input, 'id,review,label\n' + REVIEWS.map((r) => r.join(',')).join('\n') + '\n');
    const output = path.join(dir, 'labelled.jsonl');
    const teacher = { base_url: server.url, model: 'labeller', concurrency: 2 };
    let estimated = -1;
    const summary = await labelFile(
      { input, column: 'review', labels: ['好评', '差评'] },
      { output, teacher, onEstimate: (e) => ((estimated = e.requests), true) },
    );
    assert.equal(estimated, 5, 'the row that has a label costs no request');
    assert.equal(summary.requests_sent, 5);
    const rows = jsonl(output);
    assert.deepEqual(
      rows.map((r) => [r.id, r.label]),
      [['1', '好评'], ['2', '差评'], ['3', '好评'], ['4', '差评'], ['6', '差评']],
    );
    const prov = provenanceLines(summary.files);
    assert.equal(prov.length, rows.length);
    const first = prov.find((p) => p.input_line === 2)!;
    assert.equal(first.match, 'exact', "'好评。' is 好评 once punctuation is trimmed");
    assert.equal(first.confidence, Number((0.8 / 0.95).toFixed(4)), 'share of the label tokens among the top logprobs');
    assert.deepEqual((first.teacher as { model: string }).model, 'labeller');
    assert.ok(Array.isArray(first.prompt) && String(first.created_at).length > 10);
    assert.equal(prov.find((p) => p.input_line === 5)!.source, 'input');
    assert.deepEqual(rejectedUnits(summary.files).map((r) => r.key), ['line:6'], 'the "???" answer (不好说) matches no label');
    for (const [, text] of REVIEWS.filter((r) => r[2] === '').map((r) => [r[0], r[1]])) assert.equal(server.received.get(text), 1, text);

    const again = await labelFile({ input, column: 'review', labels: ['好评', '差评'] }, { output, teacher });
    assert.equal(again.requests_sent, 0);
    assert.equal(jsonl(output).length, rows.length);
  });

  test("a weitiao fine-tune trained on the label set is asked in its training prompt's shape", async () => {
    // What weitiao serve answers about a fine-tune: its job's training file, and that file's examples.
    const system = '你是一位外卖评论好评差评评论专家。';
    const example = (review: string, label: string) => JSON.stringify({ messages: [{ role: 'system', content: system }, { role: 'user', content: review }, { role: 'assistant', content: label }] });
    server.models.set('labeller', { id: 'labeller', object: 'model', weitiao: { kind: 'fine-tuned', metadata: { training_file: 'file-train1', label_set: 'auto' } } });
    server.files.set('file-train1', [example('好吃', '好评'), example('太慢', '差评')].join('\n') + '\n');
    try {
      const input = path.join(dir, 'trained.jsonl');
      writeFileSync(input, [{ review: '好吃又快，训练提示' }, { review: '太慢了，训练提示' }].map((r) => JSON.stringify(r)).join('\n'));
      const label = (output: string, labels: string[], prompt?: 'instruction') =>
        labelFile({ input, column: 'review', labels, instruction: '判断情感', ...(prompt ? { prompt } : {}) }, { output: path.join(dir, output), teacher: { base_url: server.url, model: 'labeller', concurrency: 1 } });
      const trained = provenanceLines((await label('trained-out.jsonl', ['好评', '差评'])).files);
      assert.deepEqual(trained.map((p) => p.prompt), [
        [{ role: 'system', content: system }, { role: 'user', content: '好吃又快，训练提示' }],
        [{ role: 'system', content: system }, { role: 'user', content: '太慢了，训练提示' }],
      ]);
      assert.deepEqual(trained.map((p) => [p.label, p.prompt_from]), [['好评', { training_file: 'file-train1' }], ['差评', { training_file: 'file-train1' }]]);
      // Labels it was not trained on, or --prompt instruction: the generic prompt listing the labels.
      for (const [out, labels, prompt] of [['other-labels.jsonl', ['好评', '一般']], ['forced.jsonl', ['好评', '差评'], 'instruction']] as const) {
        const p = provenanceLines((await label(out, [...labels], prompt)).files)[0];
        const messages = p.prompt as { role: string; content: string }[];
        assert.ok(messages[0].content.startsWith('判断情感\n') && messages[0].content.includes(labels.join('、')), `${out}: ${messages[0].content}`);
        assert.equal(p.prompt_from, undefined);
      }
    } finally {
      server.models.clear();
      server.files.clear();
    }
  });

  test('an endpoint that refuses logprobs still labels, without confidence', async () => {
    server.refuseLogprobs = true;
    try {
      const input = path.join(dir, 'two.jsonl');
      writeFileSync(input, [{ review: '好吃又快，无logprob' }, { review: '太慢了，无logprob' }].map((r) => JSON.stringify(r)).join('\n'));
      const output = path.join(dir, 'two-labelled.jsonl');
      const s = await labelFile({ input, column: 'review', labels: ['好评', '差评'] }, { output, teacher: { base_url: server.url, model: 'labeller', concurrency: 1 } });
      assert.deepEqual(jsonl(output).map((r) => r.label), ['好评', '差评']);
      assert.deepEqual(provenanceLines(s.files).map((p) => p.confidence), [null, null]);
    } finally {
      server.refuseLogprobs = false;
    }
  });

  test('mapToLabel: exact, contained, closest and unknown', () => {
    assert.deepEqual(mapToLabel(' 好评 ', ['好评', '差评']), { label: '好评', match: 'exact' });
    assert.deepEqual(mapToLabel('这是差评。', ['好评', '差评']), { label: '差评', match: 'contained' });
    assert.deepEqual(mapToLabel('positiv', ['positive', 'negative']), { label: 'positive', match: 'closest' });
    assert.equal(mapToLabel('我不确定', ['好评', '差评']).match, 'unknown');
  });
});

describe('teacher client', () => {
  test('429 with retry-after: waits as told, then succeeds', async () => {
    const client = new TeacherClient({ base_url: server.url, model: 'mentor', retries: 3 });
    server.failNext = { status: 429, retryAfter: '1', count: 1 };
    const answer = await client.chat({ messages: [{ role: 'user', content: 'retry-after 测试' }] });
    assert.match(answer.content, /老师的回答/);
    const times = server.arrivals.get('retry-after 测试@mentor')!;
    assert.equal(times.length, 2);
    assert.ok(times[1] - times[0] >= 950, `second attempt ${times[1] - times[0]} ms after the first`);
    assert.equal(client.retriesDone, 1);
  });

  test('5xx until the retries run out: unavailable; a 400 is not retried', async () => {
    const client = new TeacherClient({ base_url: server.url, model: 'mentor', retries: 2 });
    server.failNext = { status: 503, retryAfter: '0', count: 3 };
    await assert.rejects(client.chat({ messages: [{ role: 'user', content: '503 测试' }] }), (e: { code: string }) => e.code === 'unavailable');
    assert.equal(server.received.get('503 测试@mentor'), 3);
    server.failNext = { status: 400, count: 1, body: 'bad field' };
    await assert.rejects(client.chat({ messages: [{ role: 'user', content: '400 测试' }] }), (e: { code: string; message: string }) => e.code === 'invalid_request' && /bad field/.test(e.message));
    assert.equal(server.received.get('400 测试@mentor'), 1);
    server.failNext = null;
  });
  test('--rps spaces request starts; --concurrency caps requests in flight', async () => {
    const client = new TeacherClient({ base_url: server.url, model: 'mentor', rps: 5, concurrency: 2 });
    server.delayMs = 300;
    const t0 = Date.now();
    try {
      await Promise.all([0, 1, 2, 3].map((i) => client.chat({ messages: [{ role: 'user', content: `rps 测试 ${i}` }] })));
    } finally {
      server.delayMs = 0;
    }
    // Lower bounds only (a loaded machine makes everything later, never earlier; arrival gaps between two
    // requests can shrink in transit, so they are not compared): 5 rps puts the 4th start ≥ 600 ms after
    // the 1st, answered 300 ms later; without the limit, 2 in flight × 300 ms would finish in ~600 ms.
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 880, `4 requests at 5 rps, each held 300 ms, took only ${elapsed} ms`);
    const starts = [0, 1, 2, 3].map((i) => server.arrivals.get(`rps 测试 ${i}@mentor`)![0]).sort((a, b) => a - b);
    // Two in flight, each held 300 ms: the third cannot start before the first has answered.
    assert.ok(starts[2] - starts[0] >= 290, `third start ${starts[2] - starts[0]} ms after the first`);
  });
});

describe('data pairs', () => {
  test("teacher's answer preferred over the student's, in OpenAI's preference format", async () => {
    const input = path.join(dir, 'prompts.jsonl');
    const prompts = ['这家店怎么样？', '配送要多久？', '能开发票吗？'];
    writeFileSync(input, prompts.map((p) => JSON.stringify({ messages: [{ role: 'system', content: '客服' }, { role: 'user', content: p }] })).join('\n'));
    const output = path.join(dir, 'pairs.jsonl');
    const s = await pairsFile({ input, student: { model: 'student' } }, { output, teacher: { base_url: server.url, model: 'mentor' } });
    assert.equal(s.requests_sent, 6);
    const pairs = jsonl(output);
    assert.equal(pairs.length, 3);
    assert.deepEqual(pairs[1].input.messages, [{ role: 'system', content: '客服' }, { role: 'user', content: '配送要多久？' }]);
    assert.match(pairs[1].preferred_output[0].content, /老师的回答/);
    assert.equal(pairs[1].non_preferred_output[0].content, '我不知道。');
    const report = await validatePreferenceFile(output);
    assert.equal(report.errors.length, 0);
    assert.equal(provenanceLines(s.files).length, 3);
    for (const p of prompts) assert.deepEqual([server.received.get(`${p}@mentor`), server.received.get(`${p}@student`)], [1, 1]);
  });
});

describe('data synthesize', () => {
  const runCli = (args: string[]) => spawn(process.execPath, ['--import', 'tsx', MAIN, 'data', 'synthesize', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });

  test('SIGKILL mid-run, restart: every prompt answered once, each example once, near-duplicates dropped', { timeout: 180_000 }, async () => {
    const seeds = path.join(dir, 'seeds.jsonl');
    writeFileSync(
      seeds,
      ['送餐快吗？', '味道怎么样？'].map((q) => JSON.stringify({ messages: [{ role: 'system', content: '外卖助手' }, { role: 'user', content: q }, { role: 'assistant', content: '很好' }] })).join('\n'),
    );
    const output = path.join(dir, 'synth.jsonl');
    const state = `${output}.state.jsonl`;
    const args = ['--task', '外卖客服问答', '--seeds', seeds, '-n', '16', '--teacher', server.url, '--model', 'writer', '-o', output, '--concurrency', '2'];
    const before = new Map(server.answered);
    const answersBefore = [...server.answered.values()].reduce((a, b) => a + b, 0);
    server.holdAfter = answersBefore + 7; // the 8th request onwards hangs: the kill finds requests in flight
    const first = runCli(args);
    let stderr = '';
    first.stderr.on('data', (d) => (stderr += d));
    const journaled = () => (existsSync(state) ? jsonl(state).filter((l) => l.t === 'answer').length : 0);
    const deadline = Date.now() + 120_000;
    while (journaled() < 7) {
      if (Date.now() > deadline || first.exitCode !== null) assert.fail(`first run did not journal 7 answers: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 300)); // let the held requests arrive
    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    const answeredBeforeKill = new Set([...server.answered.keys()].filter((k) => !before.has(k)));
    assert.equal(answeredBeforeKill.size, 7);
    assert.match(stderr, /plan 计划: 16 request/);

    server.holdAfter = null;
    const receivedAtKill = new Map(server.received);
    const second = runCli(args);
    let out = '';
    second.stdout.on('data', (d) => (out += d));
    second.stderr.on('data', (d) => (out += d));
    const code = await new Promise((r) => second.once('exit', r));
    assert.equal(code, 0, out);
    // 7 answers were journaled, so 9 requests remain; units are committed in input order, so the 7th
    // answer may belong to a unit still waiting on an earlier one (6 or 7 units done).
    assert.match(out, /plan 计划: 9 request\(s\) to send 个请求 \([67]\/16 already done/);

    for (const k of answeredBeforeKill) assert.equal(server.received.get(k), receivedAtKill.get(k), `answered before the kill, asked again: ${k}`);
    const mine = [...server.answered.entries()].filter(([k]) => !before.has(k));
    for (const [k, n] of mine) assert.equal(n, 1, `answered ${n} times: ${k}`);

    const examples = jsonl(output);
    assert.equal(examples.length, 16);
    const users = examples.map((e) => e.messages[1].content);
    assert.equal(new Set(users).size, 16, 'each example once');
    assert.equal(users.filter((u) => u.startsWith('同一个问题')).length, 1, 'the repeated question kept once');
    const rejected = rejectedUnits({ output, provenance: `${output}.provenance.jsonl`, state });
    assert.ok(rejected.length >= 3 && rejected.every((r) => /near duplicate/.test(r.reason)), JSON.stringify(rejected));
    assert.equal(mine.length, 16 + rejected.length, 'one answer per numbered request, replacements included');
    const report = await validateChatFile(output);
    assert.equal(report.errors.length, 0);
    assert.equal(report.examples, 16);
    const prov = jsonl(`${output}.provenance.jsonl`);
    assert.deepEqual(prov.map((p) => p.line), Array.from({ length: 16 }, (_, i) => i + 1));
    assert.ok(prov.every((p) => p.teacher.model === 'writer' && p.prompt.length === 2 && p.created_at));
  });
});
