// Checkpoints and fine-tuned models in object storage (s3rver), with the real engine: a job pauses (its
// checkpoint is uploaded), its local checkpoint goes, it resumes from the bucket's copy and succeeds (checkpoints
// and model uploaded); with the local folders gone, the fine-tuned model and a checkpoint still chat; a damaged
// object is refused naming its key; deleting the model deletes its objects. Two training runs, one chat engine.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chatCompletion, closeChatEngine } from '../chat/index.js';
import { WeitiaoError } from '../errors.js';
import { createJob, listJobCheckpoints, listJobEvents, pauseJob, resumeJob, retrieveJob, Worker } from '../jobs/index.js';
import { deleteDir, dirManifestKey, putDir, readDirManifest, storageFor } from '../storage/index.js';
import { checkIntegrity, repairIntegrity } from '../store/integrity.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';
import { startLocalS3, type LocalS3 } from '../testing/s3rver.js';
import { deleteModel, materializeModel, retrieveModel, settledStorage, storeUnstoredModels, type ObjectStorageMark } from './index.js';

let tmp: string;
let s3: LocalS3;
let fx: Fixture;
const saved = { ...process.env };

before(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-stored-models-'));
  s3 = await startLocalS3(path.join(tmp, 's3rver'));
  process.env.WEITIAO_STORAGE_URL = s3.url; // before the fixture: its files go to the bucket too
  fx = await setUpFixture('stored-models');
});
after(async () => {
  await closeChatEngine();
  fx?.close();
  await s3?.close();
  process.env = saved;
  rmSync(tmp, { recursive: true, force: true });
});

const mark = (id: string) => retrieveModel(fx.ctx, id).weitiao.metadata.object_storage as ObjectStorageMark | undefined;
const rel = (p: string) => path.relative(fx.ctx.home.root, p).split(path.sep).join('/');
const isNotFound = (e: unknown) => e instanceof WeitiaoError && e.code === 'not_found';

describe('checkpoints and fine-tuned models in object storage', () => {
  test('pause → checkpoint uploaded → local copy gone → resume from the bucket → model uploaded → chat from downloaded copies → delete', async () => {
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: fx.train,
      seed: 5,
      method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 1, batch_size: 2 } } }, // 32 short steps
    });
    const worker = new Worker(fx.ctx, {
      threads: 1,
      pollMs: 100,
      onEngineEvent: (id, e) => {
        if (e.type === 'metrics' && e.step === 2 && retrieveJob(fx.ctx, id).status === 'running') pauseJob(fx.ctx, id);
      },
    });
    assert.equal(await worker.runNext(), job.id);
    assert.equal(retrieveJob(fx.ctx, job.id).status, 'paused');
    await settledStorage(fx.ctx);
    const [paused] = listJobCheckpoints(fx.ctx, job.id).data;
    assert.ok(paused, 'the pause saved a checkpoint');
    const ckptDir = path.join(fx.ctx.home.jobs, job.id, 'checkpoints', `step-${String(paused.step_number).padStart(6, '0')}`);
    const ckptKey = rel(ckptDir);
    assert.deepEqual(mark(paused.fine_tuned_model_checkpoint)?.keys, [ckptKey]);
    const manifest = await readDirManifest(storageFor(fx.ctx), ckptKey);
    assert.ok(manifest && manifest.files.some((f) => f.path === 'adapter_model.safetensors'), JSON.stringify(manifest));

    // Another host (or this one, replaced) has no local copy: doctor finds nothing lost, and the resume downloads it.
    rmSync(ckptDir, { recursive: true });
    assert.deepEqual(checkIntegrity(fx.ctx).findings.filter((f) => f.kind === 'checkpoint_missing' || f.kind === 'model_missing'), []);
    assert.equal(resumeJob(fx.ctx, job.id).status, 'queued');
    assert.equal(await worker.runNext(), job.id);
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    const messages = listJobEvents(fx.ctx, job.id, { limit: 1000, order: 'asc' }).data.map((e) => e.message);
    assert.ok(messages.some((m) => m.startsWith(`Checkpoint ${path.basename(ckptDir)} downloaded from object storage`)), messages.join('\n'));
    assert.ok(messages.some((m) => m.startsWith(`Resuming fine-tuning from checkpoint ${path.basename(ckptDir)}`)));
    const steps = listJobEvents(fx.ctx, job.id, { limit: 1000, order: 'asc' })
      .data.filter((e) => e.type === 'metrics' && (e.data as { train_loss?: number }).train_loss !== undefined)
      .map((e) => (e.data as { step: number }).step);
    assert.deepEqual(steps, Array.from({ length: 32 }, (_, i) => i + 1), 'resumed after the downloaded checkpoint: every step once');

    await settledStorage(fx.ctx);
    const ft = done.fine_tuned_model!;
    const modelDir = retrieveModel(fx.ctx, ft).weitiao.path;
    assert.deepEqual(mark(ft)?.keys, [rel(modelDir)]);
    const checkpoints = listJobCheckpoints(fx.ctx, job.id).data;
    for (const c of checkpoints) assert.ok(mark(c.fine_tuned_model_checkpoint), `${c.fine_tuned_model_checkpoint} is marked stored`);

    // An upload the process never finished (it stopped meanwhile): the row is unmarked, the bucket has no manifest.
    // storeUnstoredModels (at start-up) uploads it again.
    const first = checkpoints.at(-1)!;
    const firstDir = retrieveModel(fx.ctx, first.fine_tuned_model_checkpoint).weitiao.path;
    const { object_storage: _dropped, ...unmarked } = retrieveModel(fx.ctx, first.fine_tuned_model_checkpoint).weitiao.metadata;
    fx.ctx.db.prepare('UPDATE models SET metadata = ? WHERE id = ?').run(JSON.stringify(unmarked), first.fine_tuned_model_checkpoint);
    await storageFor(fx.ctx).delete(dirManifestKey(rel(firstDir)));
    assert.deepEqual(storeUnstoredModels(fx.ctx), [first.fine_tuned_model_checkpoint]);
    await settledStorage(fx.ctx);
    assert.deepEqual(mark(first.fine_tuned_model_checkpoint)?.keys, [rel(firstDir)]);
    assert.ok(await readDirManifest(storageFor(fx.ctx), rel(firstDir)));
    assert.deepEqual(storeUnstoredModels(fx.ctx), [], 'nothing left to upload');

    // The local folders gone: the row still resolves, doctor (and --repair) keep it, and chat downloads the weights.
    const last = checkpoints[0]!;
    rmSync(modelDir, { recursive: true });
    rmSync(path.join(fx.ctx.home.jobs, job.id, 'checkpoints'), { recursive: true });
    assert.deepEqual(checkIntegrity(fx.ctx).findings.filter((f) => f.kind === 'checkpoint_missing' || f.kind === 'model_missing'), []);
    repairIntegrity(fx.ctx);
    assert.equal(retrieveModel(fx.ctx, last.fine_tuned_model_checkpoint).id, last.fine_tuned_model_checkpoint);
    for (const model of [ft, last.fine_tuned_model_checkpoint]) {
      const reply = await chatCompletion(fx.ctx, { model, messages: [{ role: 'user', content: '味道不错，送得也快' }], max_tokens: 3, temperature: 0 });
      assert.equal(typeof reply.text, 'string', model);
      assert.ok(reply.usage.completion_tokens > 0, `${model} answered`);
    }
    assert.equal((await materializeModel(fx.ctx, ft)).adapterPath, modelDir);

    // A damaged object is refused, naming it; nothing half-downloaded is left where the engine would read it.
    const older = checkpoints.find((c) => c.id !== last.id) ?? last;
    const olderDir = retrieveModel(fx.ctx, older.fine_tuned_model_checkpoint).weitiao.path;
    rmSync(olderDir, { recursive: true, force: true });
    const damagedKey = `${rel(olderDir)}/adapter_model.safetensors`;
    s3.corrupt(damagedKey);
    await assert.rejects(materializeModel(fx.ctx, older.fine_tuned_model_checkpoint), (e) => {
      assert.ok(e instanceof WeitiaoError && /checksum mismatch/.test(e.message) && e.message.includes(damagedKey), String(e));
      return true;
    });
    assert.throws(() => retrieveModel(fx.ctx, 'none'), isNotFound);

    // Deleting the model deletes its job's checkpoints and every object of theirs.
    deleteModel(fx.ctx, ft);
    await settledStorage(fx.ctx);
    assert.deepEqual((await storageFor(fx.ctx).list(`jobs/${job.id}/`)).map((o) => o.key), []);
    for (const c of checkpoints) assert.throws(() => retrieveModel(fx.ctx, c.fine_tuned_model_checkpoint), isNotFound);
  });

  test('a directory whose manifest was never written does not count as stored', async () => {
    const store = storageFor(fx.ctx);
    const dir = path.join(fx.ctx.home.root, 'models', 'tiny');
    await putDir(store, 'scratch/tiny', dir);
    assert.ok(await readDirManifest(store, 'scratch/tiny'));
    await store.delete(dirManifestKey('scratch/tiny')); // as if the upload stopped before its last object
    assert.equal(await readDirManifest(store, 'scratch/tiny'), null);
    assert.ok((await store.list('scratch/tiny/')).length > 0);
    await deleteDir(store, 'scratch/tiny');
    assert.deepEqual(await store.list('scratch/'), []);
  });
});
