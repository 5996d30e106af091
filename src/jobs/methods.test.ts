// Jobs of every training method with the real engine on a tiny model: full fine-tuning (a complete model
// that chats), DPO on preference pairs, continued fine-tuning of a fine-tuned model, and a bad preference line.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createFile, fileContentPath } from '../files/index.js';
import { resolveModel, retrieveModel } from '../models/index.js';
import { chatCompletion, closeChatEngine } from '../chat/index.js';
import { createJob, FineTuningJob, listJobEvents, retrieveJob, Worker } from './index.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';

let fx: Fixture;
let pairs: { train: string; validation: string; lines: string[] };

/** Each chat example as a preference pair: its answer preferred over the other label. */
function toPairs(chatFile: string): string[] {
  return readFileSync(chatFile, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const { messages } = JSON.parse(line) as { messages: { role: string; content: string }[] };
      const answer = messages.at(-1)!.content;
      return JSON.stringify({
        input: { messages: messages.slice(0, -1) },
        preferred_output: [{ role: 'assistant', content: answer }],
        non_preferred_output: [{ role: 'assistant', content: answer === '好评' ? '差评' : '好评' }],
      });
    });
}

async function upload(name: string, lines: string[]): Promise<string> {
  const file = path.join(fx.tmp, name);
  writeFileSync(file, lines.join('\n') + '\n');
  return (await createFile(fx.ctx, { source: file, filename: name, purpose: 'fine-tune' })).id;
}

before(async () => {
  fx = await setUpFixture('methods');
  const lines = toPairs(fileContentPath(fx.ctx, fx.train));
  pairs = {
    train: await upload('pairs.jsonl', lines),
    validation: await upload('pairs-valid.jsonl', toPairs(fileContentPath(fx.ctx, fx.validation))),
    lines,
  };
});
after(async () => {
  await closeChatEngine();
  fx?.close();
});

const worker = () => new Worker(fx.ctx, { threads: 1 });
const messages = (id: string) => listJobEvents(fx.ctx, id, { limit: 1000, order: 'asc' }).data.map((e) => e.message);

describe('training methods through jobs', () => {
  let dpoModel = '';

  test('full fine-tuning: a complete model registered as fine-tuned, frozen as asked, that chats', async () => {
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: fx.train,
      suffix: 'full',
      seed: 3,
      method: { type: 'supervised', supervised: { hyperparameters: { batch_size: 16, n_epochs: 1 } } },
      weitiao: { method: 'full', full: { freeze_embeddings: true, freeze_layers: 1 }, learning_rate: 3e-3, max_steps: 3 },
    });
    assert.equal(job.weitiao.method, 'full');
    assert.equal(await worker().runNext(), job.id);
    const done = FineTuningJob.parse(retrieveJob(fx.ctx, job.id));
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.deepEqual(done.weitiao.full, { freeze_embeddings: true, freeze_layers: 1 });
    assert.equal(done.weitiao.hyperparameters?.learning_rate, 3e-3);

    const model = retrieveModel(fx.ctx, done.fine_tuned_model!);
    assert.equal(model.weitiao.kind, 'fine-tuned');
    assert.equal(model.weitiao.metadata.method, 'full');
    assert.equal(model.weitiao.metadata.format, 'full');
    const resolved = resolveModel(fx.ctx, model.id);
    assert.equal(resolved.basePath, model.weitiao.path);
    assert.equal(resolved.adapterPath, null);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'weitiao.json']) assert.ok(existsSync(path.join(resolved.basePath, f)), f);
    assert.ok(messages(job.id).some((m) => m.includes('full fine-tuning')));

    // Its checkpoints are complete models too.
    const ckpt = resolveModel(fx.ctx, `${model.id}:ckpt-step-3`);
    assert.equal(ckpt.adapterPath, null);
    assert.ok(existsSync(path.join(ckpt.basePath, 'model.safetensors')));

    const reply = await chatCompletion(fx.ctx, { model: model.id, messages: [{ role: 'user', content: '味道不错' }], max_tokens: 4, temperature: 0 });
    assert.ok(reply.usage.completion_tokens >= 1 && reply.usage.completion_tokens <= 4);
  });

  test('DPO: OpenAI method dpo with beta trains an adapter and reports reward accuracy and margin', async () => {
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: pairs.train,
      validation_file: pairs.validation,
      suffix: 'dpo',
      seed: 3,
      method: { type: 'dpo', dpo: { hyperparameters: { beta: 0.5, batch_size: 16, n_epochs: 1 } } },
      weitiao: { learning_rate: 3e-3, max_steps: 3, label_set: null },
    });
    assert.equal(job.method.type, 'dpo');
    assert.equal(job.weitiao.method, 'dpo');
    assert.equal(await worker().runNext(), job.id);
    const done = FineTuningJob.parse(retrieveJob(fx.ctx, job.id));
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.deepEqual(done.method, { type: 'dpo', dpo: { hyperparameters: { n_epochs: 1, batch_size: 16, learning_rate_multiplier: 3e-3 / 5e-5, beta: 0.5 } } });
    assert.equal(done.weitiao.n_examples, 64);

    const events = listJobEvents(fx.ctx, job.id, { limit: 1000, order: 'asc' }).data;
    const steps = events.filter((e) => e.type === 'metrics' && (e.data as Record<string, number>).train_loss !== undefined);
    assert.equal(steps.length, 3);
    for (const e of steps) {
      const d = e.data as Record<string, number>;
      assert.ok(d['rewards/accuracy'] >= 0 && d['rewards/accuracy'] <= 1 && Number.isFinite(d['rewards/margin']));
    }
    const evaluation = events.find((e) => e.message.startsWith('Evaluation at step 3'));
    assert.ok(evaluation && evaluation.message.includes('reward accuracy='), evaluation?.message);
    assert.equal(typeof (evaluation.data as Record<string, number>)['rewards/accuracy'], 'number');

    dpoModel = done.fine_tuned_model!;
    const model = retrieveModel(fx.ctx, dpoModel);
    assert.equal(model.weitiao.metadata.method, 'dpo');
    assert.deepEqual(model.weitiao.metadata.dpo, { beta: 0.5 });
    const resolved = resolveModel(fx.ctx, dpoModel);
    assert.ok(resolved.adapterPath && existsSync(path.join(resolved.adapterPath, 'adapter_model.safetensors')));
    assert.equal(resolved.basePath, resolveModel(fx.ctx, fx.model).basePath);
  });

  test('continued fine-tuning: a fine-tuned model as the base of a new job; its result chats on the merged base', async () => {
    assert.ok(dpoModel, 'needs the DPO model of the previous test');
    const job = createJob(fx.ctx, {
      model: dpoModel,
      training_file: fx.train,
      suffix: 'again',
      seed: 3,
      method: { type: 'supervised', supervised: { hyperparameters: { batch_size: 16, n_epochs: 1 } } },
      weitiao: { lora: { r: 4, alpha: 8 }, learning_rate: 3e-3, max_steps: 2 },
    });
    assert.equal(job.model, dpoModel);
    assert.equal(await worker().runNext(), job.id);
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.ok(messages(job.id).some((m) => m.startsWith('merged the adapter')));

    const model = retrieveModel(fx.ctx, done.fine_tuned_model!);
    assert.equal(model.weitiao.base_model, dpoModel); // lineage: the parent fine-tune
    const merged = path.join(fx.ctx.home.jobs, job.id, 'base');
    assert.equal(model.weitiao.metadata.base_path, merged);
    const resolved = resolveModel(fx.ctx, model.id);
    assert.deepEqual([resolved.basePath, resolved.adapterPath, resolved.baseId], [merged, model.weitiao.path, fx.model]);
    const lineage = JSON.parse(readFileSync(path.join(model.weitiao.path, 'weitiao.json'), 'utf8')) as { continued_from: { adapter: string } };
    assert.equal(lineage.continued_from.adapter, resolveModel(fx.ctx, dpoModel).adapterPath);

    const reply = await chatCompletion(fx.ctx, { model: model.id, messages: [{ role: 'user', content: '送餐太慢了' }], max_tokens: 3, temperature: 0 });
    assert.ok(reply.usage.completion_tokens >= 1);
  });

  test('a bad preference line fails the job with the file, line and field', async () => {
    const broken = JSON.parse(pairs.lines[1]) as Record<string, unknown>;
    delete broken.non_preferred_output;
    const bad = await upload('bad-pairs.jsonl', [pairs.lines[0], JSON.stringify(broken), pairs.lines[2]]);
    const job = createJob(fx.ctx, { model: fx.model, training_file: bad, method: { type: 'dpo' } });
    assert.equal(await worker().runNext(), job.id);
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'failed');
    assert.equal(done.error?.code, 'invalid_training_file');
    assert.equal(done.error?.param, 'training_file:2:non_preferred_output');
    assert.match(done.error!.message, /^bad-pairs\.jsonl:2: non_preferred_output: missing 'non_preferred_output'/);
  });

  test('DPO and full fine-tuning do not mix, and reinforcement needs a grader', () => {
    assert.throws(
      () => createJob(fx.ctx, { model: fx.model, training_file: pairs.train, method: { type: 'dpo' }, weitiao: { method: 'full', label_set: 'auto' } }),
      (e: { param?: string }) => e.param === 'weitiao.method',
    );
    assert.throws(
      () => createJob(fx.ctx, { model: fx.model, training_file: pairs.train, method: { type: 'reinforcement' } }),
      (e: { param?: string }) => e.param === 'method.reinforcement.grader',
    );
  });
});
