// estimateJob with the real engine on the tiny model: the job rules pick batch size and epochs, the
// engine's figures add up, QLoRA's base is smaller than LoRA's, and bad names are reported by param.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WeitiaoError } from '../errors.js';
import { fileContentPath } from '../files/index.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';
import { autoBatchSize, autoEpochs } from './index.js';
import { estimateJob } from './estimate.js';

let fx: Fixture;

before(async () => {
  fx = await setUpFixture('estimate');
});
after(() => fx?.close());

describe('estimateJob', () => {
  test('lora and qlora on a stored file: auto rules, a consistent breakdown, a smaller NF4 base', async () => {
    const lora = await estimateJob(fx.ctx, { model: fx.model, training_file: fx.train, threads: 1 });
    assert.equal(lora.object, 'weitiao.estimate');
    assert.equal(lora.method, 'lora');
    assert.equal(lora.n_examples, 64);
    assert.equal(lora.batch_size, autoBatchSize(64));
    assert.equal(lora.n_epochs, autoEpochs(64));
    assert.equal(lora.steps_per_epoch, Math.ceil(64 / lora.batch_size));
    const m = lora.memory;
    const training =
      m.base_weights_bytes + m.trainable_bytes + m.gradient_bytes + m.optimizer_bytes + m.activation_bytes + m.lm_head_bytes;
    assert.equal(lora.peak_memory_bytes, m.runtime_bytes + Math.max(m.load_bytes, training));
    assert.equal(m.optimizer_bytes, 2 * m.gradient_bytes);
    assert.ok(m.runtime_bytes > 100 * 2 ** 20, 'the runtime of Python + torch is measured, not zero');
    assert.ok(lora.time_per_epoch_seconds > 0);
    assert.equal(lora.total_seconds, lora.time_per_epoch_seconds * lora.n_epochs);

    // The same data by path, QLoRA, an explicit batch: the base weights shrink while training (4.5 bits per linear weight).
    const qlora = await estimateJob(fx.ctx, {
      model: fx.model,
      training_file: fileContentPath(fx.ctx, fx.train),
      method: 'qlora',
      hyperparameters: { batch_size: lora.batch_size, n_epochs: 2 },
      threads: 1,
    });
    assert.equal(qlora.method, 'qlora');
    assert.equal(qlora.n_epochs, 2);
    assert.ok(qlora.memory.base_weights_bytes < lora.memory.base_weights_bytes);
    assert.equal(qlora.trainable_parameters, lora.trainable_parameters);
    // Quantizing happens after an fp32 load, so loading briefly holds the NF4 codes on top of it.
    assert.ok(qlora.memory.load_bytes > lora.memory.load_bytes);
  });

  test('unknown model and missing file name their param', async () => {
    await assert.rejects(
      estimateJob(fx.ctx, { model: 'no-such-model', training_file: fx.train }),
      (e: unknown) => e instanceof WeitiaoError && e.code === 'not_found' && e.param === 'model',
    );
    await assert.rejects(
      estimateJob(fx.ctx, { model: fx.model, training_file: path.join(fx.tmp, 'missing.jsonl') }),
      (e: unknown) => e instanceof WeitiaoError && e.code === 'not_found' && e.param === 'training_file',
    );
    await assert.rejects(
      estimateJob(fx.ctx, { model: fx.model, training_file: fx.train, method: 'full' as never }),
      (e: unknown) => e instanceof WeitiaoError && e.code === 'invalid_request' && e.param === 'method',
    );
  });
});
