// Multi-node groups (src/workers/groups.ts) on the lease service itself, real store in a temp home, no engine:
// gang claims hand each rank out once and start the job when the group is complete; a group that does not fill
// in time is dissolved and the job stays queued; one member's lease expiring ends every member's lease and
// queues the job again. Plus the create-time checks of weitiao.nodes and the local worker's claim filter.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WeitiaoError } from '../errors.js';
import { cancelJob, createJob, listJobEvents, retrieveJob, type CreateJobParams } from '../jobs/index.js';
import { claimWaitingJob, jobNodes } from '../jobs/repository.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';
import { LeaseService } from './leases.js';
import { WORKER_PROTOCOL_VERSION, type ClaimRequest, type ClaimResponse } from './protocol.js';

let fx: Fixture;
let service: LeaseService;
const saved = { lease: process.env.WEITIAO_LEASE_SECONDS, form: process.env.WEITIAO_GROUP_FORM_SECONDS };

function claimBody(name: string, port = 29_500): ClaimRequest {
  return {
    protocol_version: WORKER_PROTOCOL_VERSION,
    worker: { name, host: `${name}-host`, advertise_host: `${name}.example`, devices: [], memory_bytes: null, methods: ['supervised'] },
    rendezvous_port: port,
  };
}

const params = (over: Partial<CreateJobParams['weitiao']> = {}, batch = 8): CreateJobParams => ({
  model: fx.model,
  training_file: fx.train,
  seed: 7,
  method: { type: 'supervised', supervised: { hyperparameters: { batch_size: batch, n_epochs: 1 } } },
  weitiao: { max_steps: 2, nodes: 2, ...over },
});

/** Creates a job and waits until the lease service's background validation queued it. */
async function queuedJob(over: Partial<CreateJobParams['weitiao']> = {}): Promise<string> {
  const id = createJob(fx.ctx, params(over)).id;
  const end = Date.now() + 300_000;
  while (retrieveJob(fx.ctx, id).status !== 'queued') {
    assert.equal(retrieveJob(fx.ctx, id).status, 'validating_files', JSON.stringify(retrieveJob(fx.ctx, id).error));
    assert.ok(Date.now() < end, 'timed out waiting for validation');
    // A claim for a method no job has starts the validation (and gets nothing).
    assert.equal(await service.claim({ ...claimBody('validator-nudge'), worker: { ...claimBody('validator-nudge').worker, methods: ['dpo'] } }), null);
    await new Promise((r) => setTimeout(r, 200));
  }
  return id;
}

const lost = (fn: () => unknown) => assert.throws(fn, (e: unknown) => e instanceof WeitiaoError && e.code === 'lease_lost');

before(async () => {
  process.env.WEITIAO_LEASE_SECONDS = '600';
  process.env.WEITIAO_GROUP_FORM_SECONDS = '600';
  fx = await setUpFixture('groups');
  service = new LeaseService(fx.ctx); // no reaper timer: the tests call reap() themselves
});

after(async () => {
  await service?.stop();
  fx?.close();
  for (const [key, value] of [['WEITIAO_LEASE_SECONDS', saved.lease], ['WEITIAO_GROUP_FORM_SECONDS', saved.form]] as const) {
    if (value === undefined) delete process.env[key];
    else process.env[key] = value;
  }
});

describe('multi-node groups', () => {
  test('weitiao.nodes: batch a multiple of nodes × nproc, DPO refuses it', () => {
    assert.throws(() => createJob(fx.ctx, params({ nproc: 2 }, 6)), (e: unknown) => e instanceof WeitiaoError && e.param === 'hyperparameters.batch_size' && /2 × 2/.test(e.message));
    assert.throws(
      () => createJob(fx.ctx, { ...params(), method: { type: 'dpo', dpo: { hyperparameters: {} } } }),
      (e: unknown) => e instanceof WeitiaoError && e.param === 'weitiao.nodes',
    );
  });

  test('ranks are handed out once; the job runs when the group is complete; a local worker never takes it', async () => {
    const id = await queuedJob();
    assert.equal(claimWaitingJob(fx.ctx.db, 'local-worker:1'), null, 'the local worker skips a queued multi-node job');
    // Two claims at once: each waits (long-poll) until the other joined, then both answer with their seat.
    const [a, b] = await Promise.all([service.claim(claimBody('node-a', 31_001)), service.claim(claimBody('node-b', 31_002))]);
    assert.ok(a && b);
    const seats = [a, b].map((c) => c.node!).sort((x, y) => x.rank - y.rank);
    assert.deepEqual(seats.map((s) => s.rank), [0, 1]);
    const host = [a, b].find((c) => c.node!.rank === 0)!;
    const hostName = host === a ? 'node-a' : 'node-b';
    for (const s of seats) assert.deepEqual([s.nodes, s.master_addr, s.master_port], [2, `${hostName}.example`, host === a ? 31_001 : 31_002]);
    assert.equal(a.lease.job_id, id);
    assert.equal(b.lease.job_id, id);
    assert.deepEqual(a.request, b.request, 'one prepared run for every node');
    assert.equal(retrieveJob(fx.ctx, id).status, 'running');
    assert.equal(jobNodes(fx.ctx.db, id).length, 2);
    // Every node downloads the inputs on its own lease.
    const member = host === a ? b : a;
    assert.equal((await service.input(member.lease.id, 'inputs/training.jsonl')).kind, 'file');
    // A third worker gets no seat (the group is full) and no job.
    assert.equal(await service.claim(claimBody('node-c')), null);

    // One member's lease expires: the attempt ends for every member, the job is queued again.
    await expireMember(id, host, host === a ? b : a);
    await cancelJob(fx.ctx, id); // out of the next tests' way
  });

  test('a group that does not fill in time is dissolved: the claim answers nothing, the job stays queued and free', async () => {
    const id = await queuedJob();
    process.env.WEITIAO_GROUP_FORM_SECONDS = '1';
    try {
      assert.equal(await service.claim(claimBody('lonely')), null);
    } finally {
      process.env.WEITIAO_GROUP_FORM_SECONDS = '600';
    }
    const job = retrieveJob(fx.ctx, id);
    assert.equal(job.status, 'queued');
    assert.equal(jobNodes(fx.ctx.db, id).length, 0);
    assert.ok(listJobEvents(fx.ctx, id, { limit: 100, order: 'asc' }).data.some((e) => e.level === 'warn' && /Only 1 of 2 workers/.test(e.message)));
    // Free again: a complete group takes it.
    const [a, b] = await Promise.all([service.claim(claimBody('again-a')), service.claim(claimBody('again-b'))]);
    assert.ok(a?.node && b?.node && a.lease.job_id === id && b.lease.job_id === id);
    await expireMember(id, a.node.rank === 0 ? a : b, a.node.rank === 0 ? b : a);
    await cancelJob(fx.ctx, id);
  });
});

/** Node 0 keeps beating, node 1 stops: the reaper ends the attempt; both leases are lost and the job is queued. */
async function expireMember(id: string, host: ClaimResponse, member: ClaimResponse): Promise<void> {
  assert.equal(service.heartbeat(member.lease.id), null, 'a member heartbeats its own lease');
  process.env.WEITIAO_LEASE_SECONDS = '1';
  try {
    const end = Date.now() + 120_000;
    while (retrieveJob(fx.ctx, id).status !== 'queued') {
      assert.ok(Date.now() < end, 'timed out waiting for the reaper');
      service.heartbeat(host.lease.id);
      service.reap();
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    process.env.WEITIAO_LEASE_SECONDS = '600';
  }
  lost(() => service.heartbeat(member.lease.id));
  lost(() => service.heartbeat(host.lease.id));
  await assert.rejects(service.finish(member.lease.id, { result: null, failure: null, engine_error: false, stop_reason: null }), (e: unknown) => e instanceof WeitiaoError && e.code === 'lease_lost');
  const events = listJobEvents(fx.ctx, id, { limit: 200, order: 'asc' }).data;
  assert.ok(events.some((e) => e.level === 'warn' && /node 1 \(/.test(e.message)), 'the silent node is named');
  assert.equal(retrieveJob(fx.ctx, id).status, 'queued');
  service.reap();
  assert.equal(jobNodes(fx.ctx.db, id).length, 0);
}
