// `weitiao train --dry-run` and the training-control flags, run as the real command in a subprocess
// against a home with a real tiny model: the plan and the engine's estimate are printed, nothing is
// stored, and `jobs show` names the controls a job trains with.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fileContentPath, listFiles } from '../files/index.js';
import { createJob, JobPlan, listJobs } from '../jobs/index.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.ts');
let fx: Fixture;

before(async () => {
  fx = await setUpFixture('cli-train');
});
after(() => fx?.close());

/** The command, from the sources (not a possibly stale build). */
function weitiao(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', MAIN, '--home', fx.ctx.home.root, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('weitiao train: controls and --dry-run', () => {
  test('--dry-run prints the resolved settings, the controls and the estimate; stores no job and no file', () => {
    const files = listFiles(fx.ctx, { limit: 1000 }).data.length;
    const jobs = listJobs(fx.ctx, { limit: 1000 }).data.length;
    const common = ['train', '--model', fx.model, '--train', fileContentPath(fx.ctx, fx.train), '--batch-size', '8', '--grad-accum', '2'];
    const text = weitiao(...common, '--early-stopping', '2', '--bf16', 'off', '--nproc', '2', '--gradient-checkpointing', '--dry-run');
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /dry run 试运行/);
    assert.match(text.stdout, /64 training examples; labels: /);
    assert.match(text.stdout, /epochs 3, batch 8, .* 24 steps \(auto: n_epochs, learning_rate_multiplier\)/);
    assert.match(text.stdout, /gradient accumulation 2, gradient checkpointing true, early stopping patience 2, min delta 0, bf16 off, group by length false, processes 2/);
    assert.match(text.stdout, /peak memory 峰值内存 +\d+ MB/);
    assert.match(text.stdout, /time per epoch 每轮时间/);

    const json = weitiao(...common, '--method', 'qlora', '--dry-run', '--json');
    assert.equal(json.status, 0, json.stderr);
    const plan = JobPlan.parse(JSON.parse(json.stdout));
    assert.equal(plan.weitiao.method, 'qlora');
    assert.equal(plan.estimate?.method, 'qlora');
    assert.equal(plan.estimate?.steps_per_epoch, 8);
    assert.equal(plan.weitiao.controls.gradient_accumulation_steps, 2);

    assert.equal(listFiles(fx.ctx, { limit: 1000 }).data.length, files, 'the scratch uploads are removed');
    assert.equal(listJobs(fx.ctx, { limit: 1000 }).data.length, jobs, 'no job');
  });

  test('a bad control value is refused by name with the usage exit code; jobs show names the controls', () => {
    const bad = weitiao('train', '--model', fx.model, '--train', fileContentPath(fx.ctx, fx.train), '--gradient-checkpointing', 'maybe', '--dry-run');
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /gradient_checkpointing must be on, off or auto/);

    const job = createJob(fx.ctx, { model: fx.model, training_file: fx.train, weitiao: { gradient_accumulation_steps: 4, group_by_length: true } });
    const shown = weitiao('jobs', 'show', job.id);
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /controls: gradient accumulation 4, .*group by length true, processes 1/);
  });
});
