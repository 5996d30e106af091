// "Was it worth it?", the forgetting check and the HTML report, on a tiny model really fine-tuned by a job
// (real engine, real SQLite home): also the job's stored forgetting check, the leaderboard and --mix-general;
// the few-shot construction and the general set's determinism on their own.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createApp } from '../api/index.js';
import { formatBaselines, formatForgetting, formatLeaderboard, parseBaseline } from '../cli/commands/eval.js';
import { createJob, retrieveJob, Worker } from '../jobs/index.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';
import { fileContentPath } from '../files/index.js';
import { WeitiaoError } from '../errors.js';
import { compareWithBaselines, readChatExamples, type BaselineComparison } from './baseline.js';
import { readGeneralSet, spreadSubset, type ForgettingReport } from './forgetting.js';
import { buildGeneralSet, GENERAL_SET_FILE, generalSetText } from './general/build.js';
import { chooseShots, fewShotTurns } from './internal/few-shot.js';
import { renderHtmlReport } from './report.js';
import { EvalJobSettings, mixGeneralData, mixGeneralMetadata, runForgettingCheck } from './job-checks.js';
import { datasetKey, jobForgettingCheck, leaderboard, listEvalResults, saveEvalResult } from './results.js';
import { retrieveModel } from '../models/index.js';

describe('few-shot prompt construction', () => {
  const ex = (user: string, answer: string) => ({
    messages: [
      { role: 'system' as const, content: '你是外卖评论专家。' },
      { role: 'user' as const, content: user },
      { role: 'assistant' as const, content: answer },
    ],
  });
  const examples = [
    ...Array.from({ length: 9 }, (_, i) => ex(`好吃${i}`, '好评')),
    ...Array.from({ length: 3 }, (_, i) => ex(`难吃${i}`, '差评')),
  ];

  test('seeded, stratified by label, system messages left to the evaluated prompt', () => {
    const picked = chooseShots(examples, 4, 7, ['好评', '差评']);
    assert.deepEqual(picked, chooseShots(examples, 4, 7, ['好评', '差评']), 'same seed, same shots');
    assert.notDeepEqual(chooseShots(examples, 4, 8, ['好评', '差评']).sort(), [...picked].sort());
    // 9:3 in the file, 2:2 in the prompt: the labels take turns.
    assert.deepEqual(picked.map((i) => examples[i].messages[2].content).sort(), ['好评', '好评', '差评', '差评']);
    assert.equal(new Set(picked).size, 4);
    const turns = fewShotTurns(examples, 4, 7, ['好评', '差评']);
    assert.equal(turns.length, 8);
    assert.deepEqual(turns.map((t) => t.role), ['user', 'assistant', 'user', 'assistant', 'user', 'assistant', 'user', 'assistant']);
    assert.deepEqual(turns[1], { role: 'assistant', content: examples[picked[0]].messages[2].content });
    // A label that runs out drops out of the rotation: 8 shots = all 3 差评 + 5 好评.
    const eight = chooseShots(examples, 8, 1, ['好评', '差评']).map((i) => examples[i].messages[2].content);
    assert.equal(eight.filter((l) => l === '差评').length, 3);
    // Without labels: a seeded sample of distinct examples.
    const free = chooseShots(examples, 5, 3, null);
    assert.equal(new Set(free).size, 5);
    assert.deepEqual(free, chooseShots(examples, 5, 3, null));
  });

  test('--baseline parsing', () => {
    assert.equal(parseBaseline('few-shot'), 4);
    assert.equal(parseBaseline('few-shot:8'), 8);
    for (const bad of ['few-shot:0', 'zero-shot', 'few-shot:x']) {
      assert.throws(() => parseBaseline(bad), (e: unknown) => e instanceof WeitiaoError && e.param === 'baseline');
    }
  });
});

describe('general-ability set', () => {
  test('the shipped file is what the script writes; 300 items over 3 categories x 2 languages', async () => {
    assert.equal(readFileSync(GENERAL_SET_FILE, 'utf8'), generalSetText());
    const items = await readGeneralSet();
    assert.equal(items.length, 300);
    const groups = new Map<string, number>();
    for (const x of items) groups.set(`${x.category}/${x.language}`, (groups.get(`${x.category}/${x.language}`) ?? 0) + 1);
    assert.deepEqual(Object.fromEntries(groups), { 'arithmetic/zh': 60, 'facts/zh': 40, 'instructions/zh': 50, 'arithmetic/en': 60, 'facts/en': 40, 'instructions/en': 50 });
    // The arithmetic answers are right.
    for (const x of items.filter((i) => i.category === 'arithmetic')) {
      const [, a, op, b] = /(\d+) ([+\-×]) (\d+)/.exec(x.messages[0].content)!;
      const want = op === '+' ? +a + +b : op === '-' ? +a - +b : +a * +b;
      assert.equal(x.messages[1].content, String(want));
    }
    assert.notDeepEqual(buildGeneralSet(17), buildGeneralSet(16));
    const subset = spreadSubset(items, 12);
    assert.equal(subset.length, 12);
    assert.equal(new Set(subset.map((x) => `${x.category}/${x.language}`)).size, 6);
  });
});

describe('baselines and forgetting on a fine-tuned tiny model', () => {
  let fx: Fixture;
  let model: string;
  before(async () => {
    fx = await setUpFixture('baseline');
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: fx.train,
      validation_file: fx.validation,
      suffix: 'waimai',
      seed: 7,
      // Two steps: the comparison, the forgetting check and the leaderboard need a fine-tuned model, not a good one.
      method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 1, batch_size: 8, learning_rate_multiplier: 10 } } },
      weitiao: { lora: { r: 8, alpha: 16 }, max_steps: 2 },
    });
    await new Worker(fx.ctx, { threads: 1 }).runNext();
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    model = done.fine_tuned_model!;
  });
  after(() => fx?.close());

  test('zero-shot, few-shot and fine-tuned on the same validation data, with cost and paired tests', async () => {
    const seen = new Set<string>();
    const c = await compareWithBaselines(fx.ctx, { model, file: fx.validation, shots: 2, maxExamples: 16, batchSize: 8, onProgress: (p) => seen.add(p.system) });
    await saveEvalResult(fx.ctx, c); // for the leaderboard test
    assert.deepEqual(c.rows.map((r) => r.system), ['zero-shot', 'few-shot', 'fine-tuned']);
    assert.deepEqual(c.rows.map((r) => r.model), [fx.model, fx.model, model]);
    assert.deepEqual([...seen].sort(), ['few-shot', 'fine-tuned', 'zero-shot']);
    assert.equal(c.mode, 'labels');
    assert.equal(c.training_file, fileContentPath(fx.ctx, fx.train), 'shots come from the job’s training file');
    assert.equal(c.n, 16);
    // Shots: 2 examples, one per label, each a user turn and its answer, all from the training file.
    assert.equal(c.shot_messages.length, 4);
    assert.deepEqual(c.shot_messages.filter((m) => m.role === 'assistant').map((m) => m.content).sort(), ['好评', '差评']);
    const training = await readChatExamples(c.training_file);
    for (const m of c.shot_messages.filter((x) => x.role === 'user')) assert.ok(training.some((e) => e.messages.some((x) => x.content === m.content)));
    // Cost: the few-shot prompt is longer by the shots; zero-shot and the fine-tune read the same prompt.
    const [zero, few, tuned] = c.rows;
    assert.ok(few.prompt_tokens > zero.prompt_tokens + 4, `${few.prompt_tokens} vs ${zero.prompt_tokens}`);
    assert.equal(tuned.prompt_tokens, zero.prompt_tokens);
    for (const r of c.rows) {
      assert.ok(r.seconds_per_example > 0);
      const accuracy = r.metrics.exact_match;
      assert.ok(accuracy.ci_low <= accuracy.value && accuracy.value <= accuracy.ci_high);
      assert.equal(accuracy.value, r.label_metrics!.accuracy, 'exact match on labels is the accuracy');
    }
    // The fine-tune is tested against both baselines; the deltas are the accuracy differences.
    assert.deepEqual(c.comparisons.map((t) => [t.system, t.baseline, t.metric]), [['fine-tuned', 'zero-shot', 'exact_match'], ['fine-tuned', 'few-shot', 'exact_match']]);
    assert.ok(Math.abs(c.comparisons[0].delta - (tuned.metrics.exact_match.value - zero.metrics.exact_match.value)) < 1e-9);
    for (const t of c.comparisons) assert.ok(t.p_value > 0 && t.p_value <= 1);
    const text = formatBaselines(c);
    assert.match(text, /few-shot \(k=2\)/);
    assert.match(text, /accuracy 准确率/);
    const html = renderHtmlReport(c);
    assert.match(html, /<svg[^>]+aria-label="metrics with 95% intervals"/);
    assert.match(html, /confusion matrix/);
    assert.doesNotMatch(html, /<script|(?:href|src)=["']?https?:/, 'offline: no scripts, nothing fetched');
  });

  test('the same comparison over HTTP names files by id, never by server path', async () => {
    const app = createApp(fx.ctx, { auth: false });
    const post = (body: unknown) => app.request('/v1/weitiao/evaluations/baselines', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const res = await post({ model, file_id: fx.validation, shots: 2, max_examples: 6 });
    assert.equal(res.status, 200);
    const c = (await res.json()) as { object: string; file: string; rows: { system: string }[]; n: number; training_file: unknown };
    assert.equal(c.object, 'weitiao.baseline_comparison');
    assert.deepEqual([c.file, c.n, c.training_file], [fx.validation, 6, null]);
    assert.deepEqual(c.rows.map((r) => r.system), ['zero-shot', 'few-shot', 'fine-tuned']);
    assert.ok(!JSON.stringify(c).includes(fx.tmp), 'no server path in the answer');
    const bad = await post({ model, file_id: fx.validation, shots: 0 });
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { error: { param: string } }).error.param, 'shots');
    const base = await post({ model: fx.model, file_id: fx.validation });
    assert.equal(base.status, 400, 'a base model has no fine-tune to compare');
  });

  test('a job’s forgetting check: base and fine-tune on a spread of the general set, stored with the job, read by API and CLI', async () => {
    const job = retrieveJob(fx.ctx, retrieveModel(fx.ctx, model).weitiao.job_id!);
    const events: string[] = [];
    const stored = await runForgettingCheck(fx.ctx, job, { request: { max_examples: 12 }, onEvent: (e) => events.push(`${e.level ?? 'info'}: ${e.message}`) });
    assert.ok(stored, events.join('\n'));
    assert.deepEqual([stored.kind, stored.model, stored.job_id, stored.dataset], ['forgetting', model, job.id, 'general']);
    assert.match(events.at(-1)!, /^info: Forgetting check: general ability/);
    const r = stored.report as ForgettingReport;
    assert.equal(r.n, 12);
    assert.equal(r.base_model, fx.model);
    assert.equal(r.groups.length, 6, 'a delta per category and language');
    assert.equal(r.groups.reduce((s, g) => s + g.n, 0), 12);
    assert.ok(Math.abs(r.overall.delta - (r.overall.tuned.value - r.overall.base.value)) < 1e-9);
    const mean = (k: 'base' | 'tuned') => r.groups.reduce((s, g) => s + g[k] * g.n, 0) / r.n;
    assert.ok(Math.abs(mean('base') - r.overall.base.value) < 1e-9 && Math.abs(mean('tuned') - r.overall.tuned.value) < 1e-9);
    assert.ok(r.exact_match.base.value <= r.overall.base.value, 'an exact answer also contains the answer');
    assert.match(formatForgetting(r), /forgetting check 遗忘检查/);
    const html = renderHtmlReport(r);
    writeFileSync(path.join(fx.tmp, 'forgetting.html'), html);
    assert.match(html, /general ability/);

    assert.deepEqual(jobForgettingCheck(fx.ctx, job.id), r);
    const app = createApp(fx.ctx, { auth: false });
    const res = await app.request(`/v1/weitiao/jobs/${job.id}/forgetting_check`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), JSON.parse(JSON.stringify(r)));
    const other = createJob(fx.ctx, { model: fx.model, training_file: fx.train, weitiao: { max_steps: 1 } });
    assert.equal((await app.request(`/v1/weitiao/jobs/${other.id}/forgetting_check`)).status, 404, 'a job without a check');
    await assert.rejects(runForgettingCheck(fx.ctx, retrieveJob(fx.ctx, other.id)), { code: 'conflict' });
    assert.equal(await runForgettingCheck(fx.ctx, job, { request: false }), null, 'not asked, not run');
    assert.deepEqual(EvalJobSettings.parse({ forgetting_check: { max_examples: 30 } }), { forgetting_check: { max_examples: 30 } });
    assert.throws(() => EvalJobSettings.parse({ forgetting_check: { max_examples: 3 } }));
  });

  test('the leaderboard ranks every system stored for the file, newest result each, whichever way the file was named', async () => {
    // Stored by the tests above: the service's comparison (16 examples, keyed by the stored copy's path),
    // then the HTTP one (6 examples); both named by the file id. The same bytes under another path: one dataset.
    const copy = path.join(fx.tmp, '验证集副本.jsonl');
    writeFileSync(copy, readFileSync(fileContentPath(fx.ctx, fx.validation)));
    const stored = listEvalResults(fx.ctx, { dataset: await datasetKey(fx.ctx, copy) });
    assert.deepEqual(stored.map((x) => [x.kind, x.dataset_name]), [['baseline', fx.validation], ['baseline', fx.validation]]);
    const newest = stored[0].report as BaselineComparison;
    assert.equal(newest.n, 6);

    const board = await leaderboard(fx.ctx, copy);
    assert.equal(board.metric, 'accuracy');
    assert.deepEqual(board.rows.map((r) => r.system).sort(), [fx.model, `${fx.model} (few-shot k=2)`, model].sort());
    for (const row of newest.rows) {
      const name = row.system === 'few-shot' ? `${fx.model} (few-shot k=2)` : row.model;
      const entry = board.rows.find((r) => r.system === name)!;
      assert.equal(entry.value, row.label_metrics!.accuracy, `${name}: the newest result's accuracy`);
      assert.equal(entry.result_id, stored[0].id);
    }
    assert.deepEqual(board.rows.map((r) => r.rank), [1, 2, 3]);
    for (let i = 1; i < board.rows.length; i++) assert.ok(board.rows[i - 1].value >= board.rows[i].value);
    assert.match(formatLeaderboard(board), /leaderboard 排行榜/);

    const app = createApp(fx.ctx, { auth: false });
    const res = await app.request(`/v1/weitiao/leaderboard?file_id=${fx.validation}`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), JSON.parse(JSON.stringify(board)));
    const one = await app.request(`/v1/weitiao/eval_results/${stored[1].id}`);
    const text = await one.text();
    assert.equal(one.status, 200);
    assert.ok(!text.includes(fx.tmp), 'no server path in a stored report');
    assert.equal((JSON.parse(text) as { report: { rows: unknown[] } }).report.rows.length, 3);
    assert.equal((await app.request('/v1/weitiao/leaderboard?file_id=/etc/passwd')).status, 400, 'over HTTP only a file id');
    // Rendered by the one report code the console imports: the latency chart included.
    assert.match(renderHtmlReport(newest), /aria-label="seconds per request"/);
  });

  test('--mix-general: seeded, the asked share, none of the forgetting check’s questions', async () => {
    const train = fileContentPath(fx.ctx, fx.train);
    const a = await mixGeneralData(fx.ctx, { trainingFile: train, ratio: 0.25, seed: 3, outputDir: path.join(fx.tmp, 'mix') });
    const again = await mixGeneralData(fx.ctx, { trainingFile: train, ratio: 0.25, seed: 3, outputDir: path.join(fx.tmp, 'mix2') });
    assert.equal(readFileSync(a.file, 'utf8'), readFileSync(again.file, 'utf8'), 'same seed, same file');
    const lines = readFileSync(a.file, 'utf8').trim().split('\n');
    assert.deepEqual([a.training_examples, a.added, lines.length], [64, 16, 80]);
    const original = readFileSync(train, 'utf8').trim().split('\n');
    assert.deepEqual(lines.filter((l) => original.includes(l)), original, 'the training examples, in their order');
    const tested = new Set((await readGeneralSet()).map((x) => x.messages[0].content));
    const added = lines.filter((l) => !original.includes(l)).map((l) => JSON.parse(l).messages[0].content as string);
    assert.equal(added.length, 16);
    assert.ok(added.every((q) => !tested.has(q)));
    const b = await mixGeneralData(fx.ctx, { trainingFile: train, ratio: 0.25, seed: 4, outputDir: path.join(fx.tmp, 'mix3') });
    assert.notEqual(readFileSync(b.file, 'utf8'), readFileSync(a.file, 'utf8'));
    assert.deepEqual(JSON.parse(mixGeneralMetadata(a)['weitiao.mix_general']), { ratio: 0.25, seed: 3, added: 16, training_examples: 64 });
    await assert.rejects(mixGeneralData(fx.ctx, { trainingFile: train, ratio: 0, seed: 1 }), { param: 'mix_general' });
  });
});
