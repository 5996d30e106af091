import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { TrainRequest } from '../engine/protocol.js';
import { autoBatchSize, autoEpochs, buildTrainRequest, resolveHyperparameters } from './index.js';

describe('auto hyperparameters', () => {
  // n_examples → [n_epochs, batch_size on CPU], the edge cases of the table in index.ts.
  const cases: Array<[number, number, number, string]> = [
    [1, 25, 1, '⌈100/1⌉ = 100, capped at 25'],
    [4, 25, 1, '⌈100/4⌉ = 25 exactly'],
    [5, 20, 1, '⌈100/5⌉'],
    [20, 5, 1, '⌈100/20⌉'],
    [33, 4, 1, '3 × 33 = 99 < 100 → ⌈100/33⌉ = 4'],
    [34, 3, 1, '3 × 34 = 102: the default stands'],
    [64, 3, 1, '0.2 % of 64 < 1 → batch 1'],
    [750, 3, 2, '0.2 % = 1.5 → 2 (nearest power of two in log scale)'],
    [1000, 3, 2, '0.2 % = 2'],
    [8333, 3, 16, '3 × 8333 = 24999 ≤ 25000; 16.7 → 16'],
    [8334, 2, 16, '3 × 8334 = 25002 > 25000 → ⌊25000/8334⌋ = 2'],
    [8390, 2, 16, "waimai's 70 % split"],
    [12500, 2, 32, '⌊25000/12500⌋ = 2; 25 → 32'],
    [25001, 1, 64, '⌊25000/25001⌋ = 0 → raised to 1; 50 → 64'],
    [100000, 1, 64, '200 → 256, capped at 64 on CPU'],
  ];
  for (const [n, epochs, batch, why] of cases) {
    test(`${n} examples → ${epochs} epochs, batch ${batch} (${why})`, () => {
      assert.equal(autoEpochs(n), epochs);
      assert.equal(autoBatchSize(n), batch);
      const r = resolveHyperparameters({ n_examples: n });
      assert.equal(r.n_epochs, epochs);
      assert.equal(r.batch_size, batch);
      assert.deepEqual(r.auto, ['n_epochs', 'batch_size', 'learning_rate_multiplier']);
      assert.equal(r.estimated_total_steps, Math.ceil(n / batch) * epochs);
      // The invariant the epoch rule exists for, wherever the 1…25 clamp allows it.
      if (epochs > 1 && epochs < 25) assert.ok(n * epochs >= 100 && n * epochs <= 25000);
    });
  }

  test('on a GPU the batch cap is 256', () => {
    assert.equal(autoBatchSize(100000, 'cuda'), 256);
    assert.equal(autoBatchSize(1_000_000, 'cuda'), 256);
    assert.equal(resolveHyperparameters({ n_examples: 100000, device: 'cuda' }).batch_size, 256);
  });

  test('learning rate: LoRA base 2e-4 × multiplier; auto multiplier is 1', () => {
    const a = resolveHyperparameters({ n_examples: 100 });
    assert.equal(a.learning_rate, 2e-4);
    assert.equal(a.learning_rate_multiplier, 1);
    const b = resolveHyperparameters({ n_examples: 100, requested: { learning_rate_multiplier: 0.5 } });
    assert.equal(b.learning_rate, 1e-4);
    assert.deepEqual(b.auto, ['n_epochs', 'batch_size']);
    const c = resolveHyperparameters({ n_examples: 100, requested: { learning_rate: 1e-3, learning_rate_multiplier: 'auto' } });
    assert.equal(c.learning_rate, 1e-3);
    assert.equal(c.learning_rate_multiplier, 5);
    assert.ok(!c.auto.includes('learning_rate_multiplier'));
  });

  test('explicit values win; a batch larger than the data is cut to it', () => {
    const r = resolveHyperparameters({
      n_examples: 10,
      requested: { n_epochs: 2, batch_size: 32, weight_decay: 0.01, warmup_ratio: 0.1, lr_scheduler: 'cosine', max_grad_norm: 0.5 },
    });
    assert.equal(r.n_epochs, 2);
    assert.equal(r.batch_size, 10);
    assert.equal(r.weight_decay, 0.01);
    assert.equal(r.warmup_ratio, 0.1);
    assert.equal(r.lr_scheduler, 'cosine');
    assert.equal(r.max_grad_norm, 0.5);
    assert.deepEqual(r.auto, ['learning_rate_multiplier']);
    assert.equal(r.estimated_total_steps, 2);
  });

  test('out-of-range values and contradictions are invalid_request naming the field', () => {
    assert.throws(() => resolveHyperparameters({ n_examples: 0 }), { code: 'invalid_request', param: 'training_file' });
    assert.throws(() => resolveHyperparameters({ n_examples: 10, requested: { n_epochs: 0 } }), {
      code: 'invalid_request',
      param: 'hyperparameters.n_epochs',
    });
    assert.throws(() => resolveHyperparameters({ n_examples: 10, requested: { batch_size: 1.5 } }), { param: 'hyperparameters.batch_size' });
    assert.throws(() => resolveHyperparameters({ n_examples: 10, requested: { learning_rate_multiplier: -1 } }), {
      param: 'hyperparameters.learning_rate_multiplier',
    });
    assert.throws(() => resolveHyperparameters({ n_examples: 10, requested: { learning_rate: 1e-4, learning_rate_multiplier: 2 } }), {
      code: 'invalid_request',
      param: 'weitiao.learning_rate',
    });
  });
});

describe('buildTrainRequest', () => {
  test('produces a request the engine protocol accepts, with every resolved setting', () => {
    const hp = resolveHyperparameters({ n_examples: 64, requested: { n_epochs: 2, lr_scheduler: 'cosine' } });
    const req = buildTrainRequest({
      basePath: '/models/tiny',
      outputDir: '/jobs/ftjob-1',
      trainingFile: '/files/train.jsonl',
      validationFile: '/files/valid.jsonl',
      hyperparameters: hp,
      seed: 7,
      lora: { r: 4, alpha: 8 },
      labelSet: ['好评', '差评'],
      evalEverySteps: 5,
      saveEverySteps: 10,
      maxSteps: 3,
      resume: true,
    });
    const parsed = TrainRequest.parse(req);
    assert.equal(parsed.hyperparameters.n_epochs, 2);
    assert.equal(parsed.hyperparameters.batch_size, 1);
    assert.equal(parsed.hyperparameters.learning_rate, 2e-4);
    assert.equal(parsed.hyperparameters.lr_scheduler, 'cosine');
    assert.equal(parsed.hyperparameters.seed, 7);
    assert.equal(parsed.lora.r, 4);
    assert.equal(parsed.lora.dropout, 0); // protocol default filled in
    assert.deepEqual(parsed.label_set, ['好评', '差评']);
    assert.equal(parsed.eval_every_steps, 5);
    assert.equal(parsed.save_every_steps, 10);
    assert.equal(parsed.max_steps, 3);
    assert.equal(parsed.resume, true);
    assert.equal(parsed.validation_file, '/files/valid.jsonl');
  });

  test('rejects settings the protocol forbids, naming the field', () => {
    const hp = resolveHyperparameters({ n_examples: 64 });
    assert.throws(
      () => buildTrainRequest({ basePath: 'b', outputDir: 'o', trainingFile: 't', hyperparameters: hp, seed: 1, lora: { dropout: 2 } }),
      { code: 'invalid_request', param: 'lora.dropout' },
    );
  });
});
