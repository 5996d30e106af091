// Over-long examples in a job (issue 18): by default (`long_examples: 'truncate'`) the job succeeds and a
// warning event names each long line; `skip` trains without them; `error` fails at its first line. The
// real worker and engine on the tiny model, with max_seq_length 200 so two reviews are too long.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFile, fileContentPath } from '../files/index.js';
import { createJob, listJobEvents, retrieveJob, Worker } from './index.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';

let fx: Fixture;
let fileId: string;
const LONG_LINES = [3, 7];

before(async () => {
  fx = await setUpFixture('long-examples');
  const lines = readFileSync(fileContentPath(fx.ctx, fx.train), 'utf8').split('\n').filter(Boolean).slice(0, 12);
  const long = (i: number) => {
    const example = JSON.parse(lines[i]);
    example.messages[1].content = '房间很大，早餐一般，服务不错。'.repeat(30) + example.messages[1].content;
    return JSON.stringify(example);
  };
  const out = lines.map((l, i) => (LONG_LINES.includes(i + 1) ? long(i) : l));
  const file = path.join(fx.tmp, 'hotel-long.jsonl');
  writeFileSync(file, out.join('\n') + '\n');
  fileId = (await createFile(fx.ctx, { source: file, filename: 'hotel-long.jsonl', purpose: 'fine-tune' })).id;
});
after(() => fx?.close());

const job = (long_examples?: 'truncate' | 'skip' | 'error') =>
  createJob(fx.ctx, {
    model: fx.model,
    training_file: fileId,
    seed: 3,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 1, batch_size: 4 } } },
    weitiao: { lora: { r: 2, alpha: 4 }, max_steps: 2, max_seq_length: 200, label_set: null, ...(long_examples ? { long_examples } : {}) },
  });

const events = (id: string) => listJobEvents(fx.ctx, id, { limit: 1000, order: 'asc' }).data;

describe('long examples in a job', () => {
  test('default truncate: the job succeeds and a warning event names each long line', async () => {
    const worker = new Worker(fx.ctx, { threads: 1 });
    const created = job();
    assert.equal(await worker.runNext(), created.id);
    const done = retrieveJob(fx.ctx, created.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.equal(done.weitiao.n_examples, 12);
    const warned = events(created.id).filter((e) => e.level === 'warn' && /too_many_tokens|more than the maximum length/.test(e.message + JSON.stringify(e.data)));
    assert.deepEqual(
      warned.map((e) => (e.data as { line: number }).line),
      LONG_LINES,
    );
    for (const e of warned) assert.match(e.message, /^hotel-long\.jsonl:\d+: messages: example has \d+ tokens, more than the maximum length 200 .* truncated, keeping the answer/);
  });

  test('skip trains without them; error fails at the first long line', async () => {
    const worker = new Worker(fx.ctx, { threads: 1 });
    const skipped = job('skip');
    assert.equal(await worker.runNext(), skipped.id);
    const s = retrieveJob(fx.ctx, skipped.id);
    assert.equal(s.status, 'succeeded', JSON.stringify(s.error));
    assert.equal(s.weitiao.n_examples, 12 - LONG_LINES.length);

    const strict = job('error');
    assert.equal(await worker.runNext(), strict.id);
    const f = retrieveJob(fx.ctx, strict.id);
    assert.equal(f.status, 'failed');
    assert.equal(f.error?.code, 'invalid_training_file');
    assert.match(f.error!.message, new RegExp(`^hotel-long\\.jsonl:${LONG_LINES[0]}: messages: example has \\d+ tokens`));
    assert.match(f.error!.message, /\(\+1 more\)/);
  });
});
