// Training controls and dry runs, with the real engine on a tiny model: the controls a job is created
// with reach the engine (its checkpoint's state.json holds the request it ran), early stopping ends a
// real job, and a dry run checks and estimates exactly what a job would, storing nothing.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WeitiaoError } from '../errors.js';
import { createFile, listFiles } from '../files/index.js';
import { deleteModel } from '../models/index.js';
import { buildTrainRequest, resolveHyperparameters, resolveTrainingControls, TrainingControls } from '../hyperparameters/index.js';
import { createJob, FineTuningJob, JobPlan, listJobCheckpoints, listJobEvents, listJobs, planJob, retrieveJob, Worker } from './index.js';
import { resolveJob } from './internal/plan.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';

let fx: Fixture;

before(async () => {
  fx = await setUpFixture('controls');
});
after(() => fx?.close());

// One real job for both describes (one engine spawn): its controls reach the engine and stop it early, and a dry run
// of the same body must resolve what the worker resolved for it. Started by whichever test needs it first.
const earlyStopBody = () => ({
  model: fx.model,
  training_file: fx.train,
  validation_file: fx.validation,
  seed: 3,
  method: { type: 'supervised' as const, supervised: { hyperparameters: { batch_size: 8 } } }, // auto epochs; max_steps ends it anyway
  // Any validation loss that does not fall by 100 is "no improvement": the second evaluation stops the run.
  weitiao: { gradient_accumulation_steps: 2, early_stopping_patience: 1, early_stopping_min_delta: 100, eval_every_steps: 1, max_steps: 6, lora: { r: 4, alpha: 8 } },
});
let earlyStopRun: Promise<FineTuningJob> | undefined;
const earlyStopJob = () => (earlyStopRun ??= new Worker(fx.ctx, { threads: 1 }).runJob(createJob(fx.ctx, earlyStopBody()).id));

const rejectsWith = (fn: () => unknown, code: string, param: string) =>
  assert.throws(fn, (e: unknown) => e instanceof WeitiaoError && e.code === code && e.param === param, `${code} at ${param}`);

describe('training controls', () => {
  test('the settings schema is the engine protocol’s: defaults filled in on the wire, bad values refused by field', () => {
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: fx.train,
      weitiao: { gradient_accumulation_steps: 4, early_stopping_patience: 2, bf16: 'off', nproc: 2 },
    });
    FineTuningJob.parse(job);
    assert.deepEqual(job.weitiao.controls, {
      gradient_accumulation_steps: 4,
      gradient_checkpointing: resolveTrainingControls().gradient_checkpointing, // the engine's default
      early_stopping_patience: 2,
      early_stopping_min_delta: 0,
      bf16: 'off',
      group_by_length: false,
      long_examples: 'truncate', // over-long examples: cut the prompt, keep the answer (issue 18)
      nproc: 2,
    });
    const base = { model: fx.model, training_file: fx.train };
    rejectsWith(() => createJob(fx.ctx, { ...base, weitiao: { gradient_accumulation_steps: 0 } }), 'invalid_request', 'weitiao.gradient_accumulation_steps');
    rejectsWith(() => createJob(fx.ctx, { ...base, weitiao: { nproc: 0 } }), 'invalid_request', 'weitiao.nproc');
    rejectsWith(() => createJob(fx.ctx, { ...base, weitiao: { bf16: 'maybe' as never } }), 'invalid_request', 'weitiao.bf16');
    rejectsWith(() => createJob(fx.ctx, { ...base, weitiao: { early_stopping_min_delta: -1 } }), 'invalid_request', 'weitiao.early_stopping_min_delta');
    assert.equal(TrainingControls.safeParse({ gradient_accumulation_step: 2 }).success, false, 'a misspelt control is refused, not ignored');
    // Under torchrun each process takes an equal share of every batch, and DPO runs in one process.
    rejectsWith(() => createJob(fx.ctx, { ...base, method: { type: 'dpo' }, weitiao: { nproc: 2 } }), 'invalid_request', 'weitiao.nproc');
    const batch3 = { type: 'supervised' as const, supervised: { hyperparameters: { batch_size: 3 } } };
    rejectsWith(() => createJob(fx.ctx, { ...base, method: batch3, weitiao: { nproc: 2 } }), 'invalid_request', 'hyperparameters.batch_size');
    const train = { valid_examples: 100, label_set: null } as unknown as Parameters<typeof resolveJob>[0]['train'];
    const auto = resolveJob({ method: 'lora', settings: { label_set: 'auto', nproc: 3 }, requested: {}, train });
    assert.equal(auto.resolved.batch_size % 3, 0, `an auto batch rounds up to a multiple of nproc: ${auto.resolved.batch_size}`);
    assert.equal(auto.resolved.estimated_total_steps, Math.ceil(100 / auto.resolved.batch_size) * auto.resolved.n_epochs);
  });

  test('buildTrainRequest: controls go into the engine hyperparameters, nproc to the request only above 1', () => {
    const hp = resolveHyperparameters({ n_examples: 10, requested: { batch_size: 4 } });
    const common = { basePath: '/b', outputDir: '/o', trainingFile: '/t', hyperparameters: hp, seed: 1 };
    const one = buildTrainRequest({ ...common, controls: { gradient_accumulation_steps: 2, group_by_length: true, nproc: 1 } });
    assert.equal(one.hyperparameters.gradient_accumulation_steps, 2);
    assert.equal(one.hyperparameters.group_by_length, true);
    assert.equal('nproc' in one, false, 'one process: the request stays what engines without scale-out accept');
    assert.equal('nproc' in one.hyperparameters, false);
    const two = buildTrainRequest({ ...common, controls: { nproc: 2 } });
    assert.equal(two.nproc, 2);
  });

  test('a real job: accumulation and early stopping reach the engine, which stops early; events and the model say so', async () => {
    const done = await earlyStopJob();
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.equal(done.weitiao.progress?.step, 2, 'stopped at the second evaluation, not at max_steps 6');
    assert.equal(done.weitiao.controls.gradient_accumulation_steps, 2);

    // What the engine ran with, from its own checkpoint.
    const newest = listJobCheckpoints(fx.ctx, done.id).data[0];
    assert.equal(newest.step_number, 2);
    const dir = path.join(fx.ctx.home.jobs, done.id, 'checkpoints');
    const state = JSON.parse(readFileSync(path.join(dir, 'step-000002', 'state.json'), 'utf8')) as { config: { hyperparameters: Record<string, unknown> } };
    assert.equal(state.config.hyperparameters.gradient_accumulation_steps, 2);
    assert.equal(state.config.hyperparameters.early_stopping_patience, 1);
    assert.equal(state.config.hyperparameters.early_stopping_min_delta, 100);

    const events = listJobEvents(fx.ctx, done.id, { limit: 1000, order: 'asc' }).data;
    const started = events.find((e) => /Fine-tuning started/.test(e.message))!;
    assert.match(started.message, /gradient accumulation 2, .*early stopping patience 1, min delta 100/);
    const { precision_choice: choice, ...controls } = done.weitiao.controls;
    assert.deepEqual((started.data as { controls: unknown }).controls, controls);
    // How `bf16: auto` was decided on this machine: the precision probe's figures, in the controls and the log.
    assert.equal(choice?.source, 'probe');
    assert.ok(choice?.figures && choice.figures.gflops.fp32 > 0 && choice.figures.gflops.bf16 > 0, JSON.stringify(choice));
    assert.ok(events.some((e) => e.message.startsWith(`precision ${choice.precision} (probe`)), 'the choice is in the job log');
    assert.ok(readdirSync(fx.ctx.home.cache).includes('precision-probe.json'), 'cached in the home');
    assert.ok(events.some((e) => /early stopping at step 2/.test(e.message)), 'the engine’s own log line is a job event');
    const stopped = events.find((e) => /Stopped early at step 2/.test(e.message));
    assert.deepEqual(stopped?.data, { early_stopped: true, steps: 2, total_steps: 6 });

    // Deleting the fine-tuned model takes its checkpoints along: folders, models, and the job's checkpoint rows.
    assert.ok(existsSync(path.join(dir, 'step-000002')));
    deleteModel(fx.ctx, done.fine_tuned_model!);
    assert.equal(existsSync(path.join(dir, 'step-000002')), false);
    assert.deepEqual(listJobCheckpoints(fx.ctx, done.id).data, [], 'no checkpoint row points to a deleted folder');
    assert.equal(retrieveJob(fx.ctx, done.id).status, 'succeeded', 'the job and its history stay');
    assert.ok(listJobEvents(fx.ctx, done.id, { limit: 1000 }).data.length >= events.length);
  });
});

describe('dry run (planJob)', () => {
  test('resolves what the worker would, estimates, and stores nothing', async () => {
    const jobsBefore = listJobs(fx.ctx, { limit: 1000 }).data.length;
    const filesBefore = listFiles(fx.ctx, { limit: 1000 }).data.length;
    const body = earlyStopBody();
    const params = { ...body, weitiao: { ...body.weitiao, dry_run: true } };
    const plan = await planJob(fx.ctx, params);
    JobPlan.parse(plan);
    assert.equal(plan.object, 'weitiao.job_plan');
    assert.equal(listJobs(fx.ctx, { limit: 1000 }).data.length, jobsBefore, 'no job');
    assert.equal(listFiles(fx.ctx, { limit: 1000 }).data.length, filesBefore, 'no file');

    // The worker's rules on the same files: 64 valid examples, auto epochs, the label set of the answers.
    const expected = resolveHyperparameters({ n_examples: 64, requested: { batch_size: 8 } });
    assert.deepEqual(plan.weitiao.hyperparameters, expected);
    assert.deepEqual(plan.method, { type: 'supervised', supervised: { hyperparameters: { n_epochs: expected.n_epochs, batch_size: 8, learning_rate_multiplier: 1 } } });
    assert.equal(plan.weitiao.n_examples, 64);
    assert.equal(plan.weitiao.n_validation_examples, 32);
    assert.deepEqual([...(plan.weitiao.label_set as string[])].sort(), ['好评', '差评'].sort());
    assert.equal(plan.weitiao.controls.gradient_accumulation_steps, 2);

    const e = plan.estimate!;
    assert.equal(e.object, 'weitiao.estimate');
    assert.equal(e.batch_size, 8);
    assert.equal(e.n_epochs, expected.n_epochs);
    assert.equal(e.steps_per_epoch, 8);
    assert.ok(e.peak_memory_bytes > e.memory.runtime_bytes && e.time_per_epoch_seconds > 0);

    // The real job created with the same body (dry_run left out) resolved to the same hyperparameters once validated.
    rejectsWith(() => createJob(fx.ctx, params), 'invalid_request', 'weitiao.dry_run');
    const job = await earlyStopJob();
    assert.deepEqual(retrieveJob(fx.ctx, job.id).weitiao.hyperparameters, plan.weitiao.hyperparameters);
  });

  test('the same errors as a create, and the file errors a job would fail with, by file:line and field', async () => {
    await assert.rejects(planJob(fx.ctx, { model: 'nope', training_file: fx.train, weitiao: { dry_run: true } }), (e: unknown) => e instanceof WeitiaoError && e.code === 'not_found' && e.param === 'model');
    const badPath = path.join(fx.tmp, 'bad.jsonl');
    const good = JSON.stringify({ messages: [{ role: 'user', content: '好吃' }, { role: 'assistant', content: '好评' }] });
    writeFileSync(badPath, [good, JSON.stringify({ messages: [{ role: 'user', content: '难吃' }, { role: 'bot', content: '差评' }] })].join('\n') + '\n');
    const bad = await createFile(fx.ctx, { source: badPath, filename: 'bad.jsonl', purpose: 'fine-tune' });
    await assert.rejects(planJob(fx.ctx, { model: fx.model, training_file: bad.id, weitiao: { dry_run: true } }), (e: unknown) => {
      assert.ok(e instanceof WeitiaoError);
      assert.equal(e.code, 'invalid_file');
      assert.match(e.param!, /^training_file:2:messages\[1\]\.role$/);
      assert.match(e.message, /bad\.jsonl:2/);
      return true;
    });
    // Full fine-tuning: everything resolved, the estimate (LoRA/QLoRA only) left out with a note.
    const full = await planJob(fx.ctx, { model: fx.model, training_file: fx.train, weitiao: { method: 'full', dry_run: true } });
    assert.equal(full.estimate, null);
    assert.match(full.notes[0], /lora and qlora, not full/);
    assert.equal(full.weitiao.method, 'full');
  });
});
