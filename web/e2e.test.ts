/**
 * The web console end to end, in headless Debian Chromium: sign in with a key, upload a slice of the
 * waimai reviews, map its columns, validate, split and save, launch a fine-tune of a tiny model and watch
 * the loss chart grow while it runs, chat with the fine-tuned model, evaluate it against its base with a
 * confusion matrix. Also: server errors show a readable message (no trace, no endless spinner), and the
 * pages fit a 390 px phone screen.
 *
 * Screenshots of every page go to test-results/screenshots/ (gitignored); regenerate them with
 *   node scripts/run-node-tests.mjs web/e2e
 * The console is rebuilt into dist/web first (vite), so the test always runs the current source.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startServer, type RunningServer } from '../src/api/index.js';
import { openContext, type Context } from '../src/context.js';
import { createFile } from '../src/files/index.js';
import { createKey } from '../src/keys/index.js';
import { createTinyModel } from '../src/models/index.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WAIMAI = path.resolve(REPO, '..', 'shared', 'data', 'waimai_10k.csv');
const SHOTS = path.join(REPO, 'test-results', 'screenshots');
const CHROMIUM = '/usr/bin/chromium';

let tmp: string;
let ctx: Context;
let key: string;
let baseUrl: string;
let server: RunningServer;
let browser: Browser;

/** A page that fails the test on any uncaught page error (a React crash would otherwise pass silently). */
async function newPage(width = 1280, height = 900): Promise<Page> {
  const page = await browser.newPage({ viewport: { width, height }, locale: 'en-US' });
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.setDefaultTimeout(30_000);
  return page;
}
const pageErrors: string[] = [];

const shot = (page: Page, name: string) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });

/** Numbers a chart reports about itself (`data-points`), for watching it grow. */
const chartPoints = async (page: Page, testId: string): Promise<number> =>
  Number((await page.getAttribute(`[data-testid=${testId}]`, 'data-points')) ?? '0');

/** 100 positive and 100 negative reviews (the file is sorted by label): a small, balanced CSV. */
function writeSlice(file: string): void {
  const lines = readFileSync(WAIMAI, 'utf8').split(/\r?\n/).filter(Boolean);
  const [header, ...rows] = lines;
  writeFileSync(file, [header, ...rows.slice(0, 100), ...rows.slice(-100)].join('\n') + '\n');
}

before(async () => {
  const t0 = Date.now();
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
  assert.ok(existsSync(WAIMAI), `${WAIMAI} is missing`);
  const build = spawnSync(process.execPath, [path.join(REPO, 'node_modules', 'vite', 'bin', 'vite.js'), 'build', '--config', 'web/vite.config.ts', '--logLevel', 'warn'], {
    cwd: REPO,
    encoding: 'utf8',
  });
  assert.equal(build.status, 0, `vite build failed:\n${build.stdout}\n${build.stderr}`);
  mkdirSync(SHOTS, { recursive: true });

  tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-e2e-'));
  ctx = openContext({ home: path.join(tmp, 'home') });
  key = createKey(ctx, { name: 'e2e' }).key;
  await createTinyModel(ctx, { name: 'tiny', corpusFiles: [WAIMAI], hiddenSize: 64, layers: 2, vocabSize: 1024, seed: 0 });
  writeSlice(path.join(tmp, 'waimai-200.csv'));

  // The real server (API and worker): it mounts the console's extension routes and serves dist/web at `/`.
  server = await startServer(ctx, {
    port: 0,
    auth: true,
    worker: true,
    handleSignals: false,
    log: () => {},
  });
  baseUrl = server.url;
  console.log(`# set-up (build, tiny model, server): ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await server?.close();
  ctx?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('from a CSV to an evaluated fine-tune, through the console', { timeout: 170_000 }, async () => {
  const started = Date.now();
  const mark = (what: string) => console.log(`# ${((Date.now() - started) / 1000).toFixed(1)} s: ${what}`);
  const page = await newPage();

  // Sign in: a wrong key is refused with the server's message, the right one gets in.
  await page.goto(baseUrl + '/');
  await page.fill('input[name=api-key]', 'wt-wrong');
  await page.click('button[type=submit]');
  await page.waitForSelector('[data-testid=error]');
  assert.match(await page.textContent('[data-testid=error]') ?? '', /invalid or revoked API key/);
  await page.fill('input[name=api-key]', key);
  await shot(page, '01-sign-in');
  await page.click('button[type=submit]');
  await page.waitForSelector('[data-testid=upload-input]', { state: 'attached' });
  // The header says which project the key works in (an admin key of an old home: `default`).
  await page.waitForSelector('[data-testid=project]');
  assert.match((await page.textContent('[data-testid=project]')) ?? '', /default/);

  // Datasets: upload, map columns (the suggestion maps review → user, label → assistant), label map, preview.
  await page.setInputFiles('[data-testid=upload-input]', path.join(tmp, 'waimai-200.csv'));
  await page.waitForSelector('[data-testid=preview] .example');
  assert.equal(await page.inputValue('textarea[name=user]'), '{review}');
  assert.equal(await page.inputValue('textarea[name=assistant]'), '{label}');
  await page.fill('textarea[name=system]', '你是一位外卖评论好评差评评论专家。');
  await page.fill('textarea[name=label-map]', '1=好评\n0=差评');
  await page.waitForFunction(() => document.querySelector('[data-testid=preview]')?.textContent?.includes('好评'));
  const preview = (await page.textContent('[data-testid=preview]')) ?? '';
  assert.ok(preview.includes('你是一位外卖评论好评差评评论专家。'), 'the system prompt shows in the preview');
  assert.ok(preview.includes('很快，好吃，味道足，量大'), 'the first review shows in the preview');

  // A label map that misses a label: the report lists each bad row with its line and field.
  await page.fill('textarea[name=label-map]', '1=好评');
  mark('preview shown');
  await page.click('[data-testid=validate]');
  // Validation counts tokens with the model's tokenizer: an engine process, slow on a busy machine.
  await page.waitForSelector('[data-testid=validation-report]', { timeout: 60_000 });
  mark('first report');
  const badReport = (await page.textContent('[data-testid=validation-report]')) ?? '';
  assert.match(badReport, /100 errors/);
  assert.match(badReport, /line 102/);
  assert.match(badReport, /field label/);
  assert.match(badReport, /not in the label map/);
  // An issue opens the record at its line.
  await page.click('[data-testid=validation-report] .issue-link');
  await page.waitForSelector('[data-testid=record-at-line] pre.raw');
  assert.match((await page.textContent('[data-testid=record-at-line]')) ?? '', /label: 0/);

  await page.fill('textarea[name=label-map]', '1=好评\n0=差评');
  await page.click('[data-testid=validate]');
  await page.waitForSelector('[data-testid=stats]', { timeout: 60_000 });
  mark('second report');
  const report = (await page.textContent('[data-testid=validation-report]')) ?? '';
  assert.match(report, /0 errors/);
  const stats = (await page.textContent('[data-testid=stats]')) ?? '';
  assert.match(stats, /tokens per example/, 'counted with the tiny model’s tokenizer');
  assert.match(stats, /好评100 \(50\.0%\)/);
  assert.ok((await page.locator('[data-testid=token-histogram] svg rect').count()) > 3, 'the token histogram has bars');

  await page.fill('input[name=validation-share]', '0.2');
  await page.fill('input[name=seed]', '100');
  await page.click('[data-testid=save-dataset]');
  await page.waitForSelector('[data-testid=saved]', { timeout: 60_000 });
  await shot(page, '02-datasets');
  mark('dataset saved');
  const saved = (await page.textContent('[data-testid=saved]')) ?? '';
  assert.match(saved, /waimai-200-train\.jsonl/);
  assert.match(saved, /waimai-200-validation\.jsonl/);
  const validationFile = /waimai-200-validation\.jsonl \((file-[a-z0-9]+)\)/.exec(saved)?.[1];
  assert.ok(validationFile);

  // New fine-tune: files prefilled from the saved dataset, 1 epoch, the estimate before launching.
  await page.click('[data-testid=fine-tune-this]');
  await page.waitForSelector('select[name=model] option[value=tiny]', { state: 'attached' });
  await page.fill('input[name=n_epochs]', '1');
  await page.fill('input[name=batch_size]', '8');
  await page.fill('input[name=suffix]', 'waimai');
  await page.waitForFunction(() => /Trained tokens/.test(document.querySelector('[data-testid=estimate]')?.textContent ?? ''));
  await page.waitForFunction(() => /set by you: 1 pass over/.test(document.querySelector('[data-testid=explain-n_epochs]')?.textContent ?? ''));
  assert.match((await page.textContent('[data-testid=explain-batch_size]')) ?? '', /set by you/);
  assert.match((await page.textContent('[data-testid=explain-learning_rate_multiplier]')) ?? '', /auto/);
  await shot(page, '03-new-fine-tune');
  mark('estimate shown');
  await page.click('[data-testid=launch]');

  // The job page: the loss chart grows while the job runs, without a reload.
  await page.waitForSelector('[data-testid=job-page]');
  const seen = new Set<number>();
  const deadline = Date.now() + 120_000;
  let status = '';
  let runningShot = false;
  while (Date.now() < deadline) {
    status = (await page.textContent('[data-testid=job-page] .badge')) ?? '';
    const points = await chartPoints(page, 'loss-chart');
    if (status === 'running' && points > 0) seen.add(points);
    if (seen.size > 0 && !runningShot) {
      runningShot = true;
      await shot(page, '04-job-running');
    }
    if (status === 'succeeded' || status === 'failed' || status === 'cancelled') break;
    await page.waitForTimeout(150);
  }
  assert.equal(status, 'succeeded', `the job ended ${status}: ${(await page.textContent('[data-testid=events]'))?.slice(0, 600)}`);
  await page.waitForFunction(() => document.querySelector('[data-testid=fine-tuned-model]')?.textContent?.startsWith('ft:'));
  await page.waitForSelector('[data-testid=checkpoints]');
  // Drawn while running, and more points by the end: the chart followed the job without a reload.
  const finalPoints = await chartPoints(page, 'loss-chart');
  assert.ok(seen.size > 0 && Math.min(...seen) < finalPoints, `the loss chart grew while running (seen ${[...seen].join(', ')}, final ${finalPoints})`);
  assert.ok(await page.isVisible('[data-testid=accuracy-chart] svg'), 'label-set data gets an accuracy chart');
  await shot(page, '05-job-finished');
  mark('job succeeded');
  const fineTuned = ((await page.textContent('[data-testid=fine-tuned-model]')) ?? '').split(/\s/)[0];
  assert.match(fineTuned, /^ft:tiny:waimai:/);

  // Playground: the fine-tuned model and its base answer the same prompt, streamed, side by side.
  await page.click(`a[href^="#/playground/"]`);
  await page.waitForSelector('[data-testid=chat-column] >> nth=1');
  await page.fill('input[name=system]', '你是一位外卖评论好评差评评论专家。');
  await page.fill('textarea[name=prompt]', '送餐很快，味道也很好');
  // Sampling (temperature 1): a barely trained tiny model's greedy choice can be the end token at once.
  await page.fill('input[name=temperature]', '1');
  await page.fill('input[name=max_tokens]', '8');
  await page.click('[data-testid=send]');
  await page.waitForSelector(`[data-testid=chat-column][data-model="${fineTuned}"] [data-testid=answer]`, { timeout: 60_000 });
  await page.waitForSelector('[data-testid=chat-column] >> nth=1 >> [data-testid=answer]', { timeout: 60_000 });
  const answer = (await page.textContent(`[data-testid=chat-column][data-model="${fineTuned}"] [data-testid=answer] .content`)) ?? '';
  await shot(page, '06-playground');
  assert.ok(answer.trim().length > 0, `the fine-tuned model answered: ${JSON.stringify(await page.textContent('.chat-columns'))}`);
  mark('playground answered');

  // Evaluation of the fine-tune on the validation file (comparing two models is in src/api/routes/console.test.ts:
  // each model is one more engine run).
  await page.goto(`${baseUrl}/#/evaluation/${encodeURIComponent(fineTuned)}/${validationFile}`);
  await page.waitForSelector(`select[name=file] option[value=${validationFile}]`, { state: 'attached' });
  await page.click('[data-testid=run-eval]');
  await page.waitForSelector('[data-testid=confusion-matrix]', { timeout: 90_000 });
  const matrices = await page.$$eval('[data-testid=confusion-matrix]', (tables) =>
    tables.map((t) => [...t.querySelectorAll('tbody td')].reduce((s, td) => s + Number(td.textContent), 0)),
  );
  assert.deepEqual(matrices, [40], 'the confusion matrix counts the 40 validation examples');
  assert.match((await page.textContent('[data-testid=eval-report]')) ?? '', /Misclassified examples \(\d+\)/);
  await shot(page, '07-evaluation');
  mark('evaluation shown');

  // Models, with lineage; jobs list.
  await page.click('a[data-nav=models]');
  await page.waitForSelector('[data-testid=fine-tuned-models]');
  const lineage = (await page.textContent('[data-testid=fine-tuned-models]')) ?? '';
  assert.ok(lineage.includes(fineTuned) && lineage.includes('tiny') && /ftjob-/.test(lineage));
  await shot(page, '08-models');
  await page.click('a[data-nav=jobs]');
  await page.waitForSelector('[data-testid=job-list]');
  assert.match((await page.textContent('[data-testid=job-list]')) ?? '', /succeeded/);
  await shot(page, '09-jobs');

  // 中文: the switch changes every label and is remembered.
  await page.click('[data-testid=lang-switch]');
  await page.waitForSelector('text=任务');
  await page.reload();
  await page.waitForSelector('[data-testid=job-list]');
  assert.match((await page.textContent('header')) ?? '', /数据集/);
  await shot(page, '10-jobs-zh');

  // Phone width: the job page fits 390 px without sideways scrolling.
  const phone = await newPage(390, 844);
  await phone.addInitScript((k) => localStorage.setItem('weitiao.apiKey', k), key);
  await phone.goto(`${baseUrl}/#/jobs`);
  await phone.click('[data-testid=job-list] a');
  await phone.waitForSelector('[data-testid=loss-chart] svg');
  await shot(phone, '11-phone-job');
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the job page scrolls sideways by ${overflow}px at 390px`);
  await phone.goto(`${baseUrl}/#/datasets`);
  await phone.waitForSelector('[data-testid=file-list]');
  assert.ok((await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)) <= 1);
  await shot(phone, '12-phone-datasets');

  assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
});

test('server errors show a readable message, never a trace or an endless spinner', { timeout: 60_000 }, async () => {
  const page = await newPage();
  await page.addInitScript((k) => localStorage.setItem('weitiao.apiKey', k), key);

  // A real 404 from the API.
  await page.goto(`${baseUrl}/#/jobs/ftjob-doesnotexist`);
  await page.waitForSelector('[data-testid=error]');
  assert.match((await page.textContent('[data-testid=error]')) ?? '', /ftjob-doesnotexist/);
  assert.equal(await page.locator('[data-testid=loading]').count(), 0, 'the spinner is gone');

  // A 500 whose body is a stack trace (a crashed proxy or server): the page says HTTP 500, not the trace.
  await page.route('**/v1/models', (route) =>
    route.fulfill({ status: 500, contentType: 'text/plain', body: 'TypeError: boom\n    at Object.<anonymous> (/srv/app.js:1:1)' }),
  );
  await page.goto(`${baseUrl}/#/models`);
  await page.waitForSelector('[data-testid=error]');
  const text = (await page.textContent('[data-testid=error]')) ?? '';
  assert.match(text, /HTTP 500/);
  assert.doesNotMatch(text, /TypeError|app\.js| at /);
  assert.equal(await page.locator('[data-testid=loading]').count(), 0);
  await shot(page, '13-error');

  // An OpenAI-shaped 500: its message is shown as is.
  await page.unroute('**/v1/models');
  await page.route('**/v1/models', (route) =>
    route.fulfill({
      status: 500,
      contentType: 'application/json',
      body: JSON.stringify({ error: { message: 'internal server error / 服务器内部错误', type: 'server_error', param: null, code: 'internal_error' } }),
    }),
  );
  await page.click('[data-testid=error] button');
  await page.waitForFunction(() => document.querySelector('[data-testid=error]')?.textContent?.includes('internal server error'));
  assert.equal(await page.locator('[data-testid=loading]').count(), 0);

  // A 400 from an extension route: the message names the problem.
  await page.unroute('**/v1/models');
  await page.route('**/v1/weitiao/datasets/preview', (route) =>
    route.fulfill({ status: 400, contentType: 'application/json', body: JSON.stringify({ error: { message: 'user template uses column \u0027x\u0027 / 列不存在', type: 'invalid_request_error', param: 'user', code: 'invalid_request' } }) }),
  );
  const file = await createFile(ctx, { source: path.join(tmp, 'waimai-200.csv'), filename: 'errors.csv', purpose: 'fine-tune' });
  await page.goto(`${baseUrl}/#/datasets/${file.id}`);
  await page.waitForSelector('[data-testid=error]');
  assert.match((await page.textContent('[data-testid=error]')) ?? '', /user template uses column 'x'/);

  // The reinforcement grader editor: the server's 400 names the field; a good grader is tried on a sample.
  await page.unroute('**/v1/weitiao/datasets/preview');
  await page.goto(`${baseUrl}/#/new`);
  await page.selectOption('select[name=method]', 'reinforcement');
  await page.fill('[data-testid=grader-json]', JSON.stringify({ type: 'string_check', name: 'label', input: '{{sample.output_text}}', reference: '{{item.label}}', operation: 'equals' }));
  await page.click('[data-testid=grader-validate]');
  await page.waitForSelector('[data-testid=grader-status]');
  assert.match((await page.textContent('[data-testid=grader-status]')) ?? '', /operation/);
  await page.fill('[data-testid=grader-json]', JSON.stringify({ type: 'string_check', name: 'label', input: '{{sample.output_text}}', reference: '{{item.label}}', operation: 'eq' }));
  await page.click('[data-testid=grader-try]');
  await page.waitForSelector('[data-testid=grader-reward]');
  assert.match((await page.textContent('[data-testid=grader-reward]')) ?? '', /1/);
  assert.deepEqual(pageErrors, []);
});
