/**
 * The jobs domain's tables — `jobs`, `job_events`, `checkpoints` — and every SQL statement that touches
 * them: typed functions over the store handle, rows cast to their types here once. Nothing else in src/
 * writes SQL about these tables; the service (index.ts and its modules) and the worker call these, and so do
 * the modules below the jobs service that must ask about jobs (src/files, the store's integrity check and
 * backup): they import this module, which depends only on the store, never the service.
 */
import { jsonNumber, newId, now, selectPage, skipLocked, type DB } from '../store/index.js';
import type { JobStatus } from './internal/status.js';

// ----------------------------------------------------------------------------------------------- rows

export interface JobRow {
  id: string;
  model: string;
  training_file: string;
  validation_file: string | null;
  status: JobStatus;
  /** OpenAI's method object (JSON). */
  method: string;
  /** weitiao's settings and what the worker learned (JSON: records.ts's JobExtension). */
  extension: string;
  suffix: string | null;
  seed: number;
  metadata: string | null;
  fine_tuned_model: string | null;
  trained_tokens: number | null;
  error: string | null;
  result_files: string;
  estimated_finish: number | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  attempts: number;
  worker_id: string | null;
  worker_pid: number | null;
  heartbeat_at: number | null;
  requested_action: 'cancel' | 'pause' | null;
}

/** The columns a new job is inserted with (the rest take their defaults). */
export type NewJobRow = Pick<
  JobRow,
  'id' | 'model' | 'training_file' | 'validation_file' | 'status' | 'method' | 'extension' | 'suffix' | 'seed' | 'metadata' | 'created_at'
>;

export type EventLevel = 'info' | 'warn' | 'error';

export interface EventRow {
  seq: number;
  id: string;
  job_id: string;
  created_at: number;
  level: EventLevel;
  type: 'message' | 'metrics';
  message: string;
  data: string | null;
}

export interface CheckpointRow {
  id: string;
  job_id: string;
  step: number;
  epoch: number;
  metrics: string;
  path: string;
  fine_tuned_model_checkpoint: string;
  created_at: number;
}

// ----------------------------------------------------------------------------------------------- jobs

export function insertJob(db: DB, row: NewJobRow): void {
  db.prepare(
    `INSERT INTO jobs (id, model, training_file, validation_file, status, method, extension, suffix, seed, metadata, created_at)
     VALUES (@id, @model, @training_file, @validation_file, @status, @method, @extension, @suffix, @seed, @metadata, @created_at)`,
  ).run(row);
}

export function getJobRow(db: DB, id: string): JobRow | undefined {
  return db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
}

/** A job's status and pending request, or undefined when there is no such job. */
export function getJobState(db: DB, id: string): Pick<JobRow, 'status' | 'requested_action'> | undefined {
  return db.prepare('SELECT status, requested_action FROM jobs WHERE id = ?').get(id) as Pick<JobRow, 'status' | 'requested_action'> | undefined;
}

/** Whether job `id` exists and is not finished (succeeded, failed or cancelled). */
export function isJobUnfinished(db: DB, id: string): boolean {
  const status = getJobState(db, id)?.status;
  return status !== undefined && !['succeeded', 'failed', 'cancelled'].includes(status);
}

/** Jobs in OpenAI's cursor pages, newest first; `metadata` keeps jobs holding every pair. Null when `after` names no job. */
export function selectJobsPage(db: DB, q: { metadata?: Record<string, string>; after?: string; limit: number }): { rows: JobRow[]; has_more: boolean } | null {
  const where: string[] = [];
  const args: unknown[] = [];
  for (const [key, value] of Object.entries(q.metadata ?? {})) {
    where.push(
      db.dialect === 'postgres'
        ? `jsonb_typeof(jobs.metadata::jsonb) = 'object' AND (jobs.metadata::jsonb ->> ?) = ?`
        : `EXISTS (SELECT 1 FROM json_each(jobs.metadata) WHERE json_each.key = ? AND json_each.value = ?)`,
    );
    args.push(key, value);
  }
  return selectPage<JobRow>(db, { table: 'jobs', where, params: args, after: q.after, limit: q.limit });
}

/** Sets columns of a job (names are code constants, never user input). */
export function updateJob(db: DB, id: string, fields: Record<string, unknown>): void {
  const names = Object.keys(fields);
  if (!names.length) return;
  db.prepare(`UPDATE jobs SET ${names.map((n) => `${n} = @${n}`).join(', ')} WHERE id = @__id`).run({ ...fields, __id: id });
}

/** Sets `status = to` and `fields` only if the status is still `from`; whether the row changed. */
export function updateJobIfStatus(db: DB, id: string, from: JobStatus, to: JobStatus, fields: Record<string, unknown>): boolean {
  const names = Object.keys(fields);
  const set = ['status = @__to', ...names.map((n) => `${n} = @${n}`)].join(', ');
  return db.prepare(`UPDATE jobs SET ${set} WHERE id = @__id AND status = @__from`).run({ ...fields, __to: to, __id: id, __from: from }).changes > 0;
}

/** The extension JSON of a job, read-modify-written in one transaction with `fields`; nothing when the job is gone. */
export function updateJobExtension(db: DB, id: string, change: (ext: string) => string, fields: Record<string, unknown> = {}): void {
  db.transaction(() => {
    const row = db.prepare('SELECT extension FROM jobs WHERE id = ?').get(id) as { extension: string } | undefined;
    if (!row) return;
    updateJob(db, id, { extension: change(row.extension), ...fields });
  })();
}

export function requestJobCancel(db: DB, id: string): void {
  db.prepare(`UPDATE jobs SET requested_action = 'cancel' WHERE id = ?`).run(id);
}

// ------------------------------------------------------------------------------------ worker's claims

/** Worker ids of remote workers' leases (src/workers) start with this; the local worker's recovery leaves them alone. */
export const REMOTE_WORKER_PREFIX = 'remote:';

/** Jobs claimed by a local worker other than `workerId` and not settled (candidates for recovery; remote leases have their reaper). */
export function jobsClaimedByOthers(db: DB, workerId: string): JobRow[] {
  return db
    .prepare(
      `SELECT * FROM jobs WHERE worker_id IS NOT NULL AND worker_id != ? AND worker_id NOT LIKE '${REMOTE_WORKER_PREFIX}%'
       AND status IN ('validating_files', 'queued', 'running', 'pausing')`,
    )
    .all(workerId) as JobRow[];
}

/**
 * Claims the oldest waiting job (or job `id` if it waits) in one of `statuses` for `workerId`, atomically across
 * processes; the claimed row, or null when none waits.
 */
export function claimWaitingJob(db: DB, workerId: string, id?: string, statuses: readonly ('validating_files' | 'queued')[] = ['validating_files', 'queued']): JobRow | null {
  return db
    .transaction((): JobRow | null => {
      // A multi-node job (weitiao.nodes > 1) trains only on remote workers (src/workers/groups.ts): validated here, never run.
      const statusIn = statuses.map((s) => (s === 'queued' ? `(status = 'queued' AND ${jobNodesSql(db)} <= 1)` : `status = '${s}'`));
      const waiting = `worker_id IS NULL AND (${statusIn.join(' OR ')})`;
      const row = (
        id === undefined
          ? db.prepare(`SELECT * FROM jobs WHERE ${waiting} ORDER BY rowid LIMIT 1${skipLocked(db)}`).get()
          : db.prepare(`SELECT * FROM jobs WHERE id = ? AND ${waiting}${skipLocked(db)}`).get(id)
      ) as JobRow | undefined;
      if (!row) return null;
      db.prepare('UPDATE jobs SET worker_id = ?, heartbeat_at = ? WHERE id = ?').run(workerId, now(), row.id);
      return { ...row, worker_id: workerId };
    })
    .immediate();
}

/** Unclaims a job if `workerId` still holds it. */
export function releaseJob(db: DB, id: string, workerId: string): void {
  db.prepare('UPDATE jobs SET worker_id = NULL, worker_pid = NULL WHERE id = ? AND worker_id = ?').run(id, workerId);
}

export function beatHeart(db: DB, id: string, workerId: string): void {
  db.prepare('UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND worker_id = ?').run(now(), id, workerId);
}

/** The engine process (group leader) running the job, or null. */
export function setEnginePid(db: DB, id: string, pid: number | null): void {
  db.prepare('UPDATE jobs SET worker_pid = ? WHERE id = ?').run(pid, id);
}

// ------------------------------------------------------------------------------------------- events

/** Appends one event to a job's log; its `seq`. */
export function insertEvent(db: DB, row: Omit<EventRow, 'seq'>): number {
  const inserted = db
    .prepare(
      `INSERT INTO job_events (id, job_id, created_at, level, type, message, data)
       VALUES (@id, @job_id, @created_at, @level, @type, @message, @data) RETURNING seq`,
    )
    .get(row) as { seq: number };
  return inserted.seq;
}

/** A job's events in cursor pages by `seq`; null when `after` names no event. */
export function selectEventsPage(db: DB, jobId: string, q: { after?: string; limit: number; order: 'asc' | 'desc' }): { rows: EventRow[]; has_more: boolean } | null {
  return selectPage<EventRow>(db, { table: 'job_events', where: ['job_id = ?'], params: [jobId], after: q.after, limit: q.limit, order: q.order, orderBy: 'seq' });
}

/** The `seq` of event `eventId` of job `jobId`, or undefined. */
export function eventSeq(db: DB, jobId: string, eventId: string): number | undefined {
  return (db.prepare('SELECT seq FROM job_events WHERE id = ? AND job_id = ?').get(eventId, jobId) as { seq: number } | undefined)?.seq;
}

/** Up to `limit` events of a job after `seq`, oldest first. */
export function eventsAfter(db: DB, jobId: string, seq: number, limit: number): EventRow[] {
  return db.prepare('SELECT * FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?').all(jobId, seq, limit) as EventRow[];
}

/** The highest step a metrics event of the job reports, or null. */
export function lastMetricsStep(db: DB, jobId: string): number | null {
  const row = db.prepare(`SELECT MAX(${jsonNumber(db, 'data', 'step')}) AS step FROM job_events WHERE job_id = ? AND type = 'metrics'`).get(jobId) as { step: number | null };
  return row.step;
}

/** The data of every metrics event of a job, in order. */
export function metricsEventData(db: DB, jobId: string): string[] {
  return (db.prepare(`SELECT data FROM job_events WHERE job_id = ? AND type = 'metrics' ORDER BY seq`).all(jobId) as { data: string }[]).map((r) => r.data);
}

/** The newest metrics event for `step` of one kind: training figures (`train_loss` set) or validation figures. */
export function findMetricsEvent(db: DB, jobId: string, step: number, training: boolean): EventRow | undefined {
  return db
    .prepare(
      `SELECT * FROM job_events WHERE job_id = ? AND type = 'metrics' AND ${jsonNumber(db, 'data', 'step')} = ?
       AND (CASE WHEN ${jsonNumber(db, 'data', 'train_loss')} IS NOT NULL THEN 1 ELSE 0 END) = ? ORDER BY seq DESC LIMIT 1`,
    )
    .get(jobId, step, training ? 1 : 0) as EventRow | undefined;
}

export function updateEvent(db: DB, seq: number, e: Pick<EventRow, 'message' | 'data' | 'created_at'>): void {
  db.prepare('UPDATE job_events SET message = ?, data = ?, created_at = ? WHERE seq = ?').run(e.message, e.data, e.created_at, seq);
}

// -------------------------------------------------------------------------------------- checkpoints

/** Records a checkpoint; a repeated step (a resumed run saving again) replaces the old record but keeps its id. */
export function upsertCheckpointRow(db: DB, c: Omit<CheckpointRow, 'id' | 'created_at'>): CheckpointRow {
  db.prepare(
    `INSERT INTO checkpoints (id, job_id, step, epoch, metrics, path, fine_tuned_model_checkpoint, created_at)
     VALUES (@id, @job_id, @step, @epoch, @metrics, @path, @fine_tuned_model_checkpoint, @created_at)
     ON CONFLICT(job_id, step) DO UPDATE SET epoch = excluded.epoch, metrics = excluded.metrics, path = excluded.path,
       fine_tuned_model_checkpoint = excluded.fine_tuned_model_checkpoint, created_at = excluded.created_at`,
  ).run({ ...c, id: newId('ftckpt'), created_at: now() });
  return db.prepare('SELECT * FROM checkpoints WHERE job_id = ? AND step = ?').get(c.job_id, c.step) as CheckpointRow;
}

/** A job's checkpoints in cursor pages, newest step first; null when `after` names no checkpoint. */
export function selectCheckpointsPage(db: DB, jobId: string, q: { after?: string; limit: number }): { rows: CheckpointRow[]; has_more: boolean } | null {
  return selectPage<CheckpointRow>(db, { table: 'checkpoints', where: ['job_id = ?'], params: [jobId], after: q.after, limit: q.limit, orderBy: 'step' });
}

/** A job's checkpoints' steps, directories and checkpoint model names, newest first. */
export function checkpointLocations(db: DB, jobId: string): { step: number; path: string; model: string }[] {
  return db
    .prepare('SELECT step, path, fine_tuned_model_checkpoint AS model FROM checkpoints WHERE job_id = ? ORDER BY step DESC')
    .all(jobId) as { step: number; path: string; model: string }[];
}

/** The newest step a checkpoint of the job was recorded at, or null. */
export function lastCheckpointStep(db: DB, jobId: string): number | null {
  return (db.prepare('SELECT MAX(step) AS last FROM checkpoints WHERE job_id = ?').get(jobId) as { last: number | null }).last;
}

export function countCheckpoints(db: DB, jobId: string): number {
  return (db.prepare('SELECT COUNT(*) AS n FROM checkpoints WHERE job_id = ?').get(jobId) as { n: number }).n;
}

/** The project of the job that saved the checkpoint named `checkpointModel`, or undefined. */
export function checkpointProject(db: DB, checkpointModel: string): string | undefined {
  const row = db
    .prepare('SELECT j.project FROM checkpoints c JOIN jobs j ON j.id = c.job_id WHERE c.fine_tuned_model_checkpoint = ?')
    .get(checkpointModel) as { project: string } | undefined;
  return row?.project;
}

// ------------------------------------------------------------- for other domains and the store's tools

/** An unfinished job training on file `fileId` (as training or validation file), or undefined. */
export function unfinishedJobUsingFile(db: DB, fileId: string): string | undefined {
  const row = db
    .prepare(
      `SELECT id FROM jobs WHERE (training_file = ? OR validation_file = ?)
       AND status NOT IN ('succeeded', 'failed', 'cancelled') LIMIT 1`,
    )
    .get(fileId, fileId) as { id: string } | undefined;
  return row?.id;
}

/** The oldest unfinished job using `id` as its training file, validation file or model, or undefined. */
export function unfinishedJobUsingFileOrModel(db: DB, id: string): string | undefined {
  const row = db
    .prepare(
      `SELECT id FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')
       AND (training_file = @id OR validation_file = @id OR model = @id) ORDER BY created_at LIMIT 1`,
    )
    .get({ id }) as { id: string } | undefined;
  return row?.id;
}

/** Every job's status by id. */
export function jobStatuses(db: DB): Map<string, JobStatus> {
  return new Map((db.prepare('SELECT id, status FROM jobs').all() as { id: string; status: JobStatus }[]).map((j) => [j.id, j.status]));
}

/** Every checkpoint row's place: its job, step, directory and model name, by job then step. */
export function allCheckpoints(db: DB): { id: string; job_id: string; step: number; path: string; model: string }[] {
  return db.prepare('SELECT id, job_id, step, path, fine_tuned_model_checkpoint AS model FROM checkpoints ORDER BY job_id, step').all() as {
    id: string;
    job_id: string;
    step: number;
    path: string;
    model: string;
  }[];
}

export function deleteCheckpointRow(db: DB, id: string): void {
  db.prepare('DELETE FROM checkpoints WHERE id = ?').run(id);
}

/** The ids of every job and the number of checkpoints (a backup's summary of a snapshot). */
export function jobsSummary(db: DB): { jobs: { id: string }[]; checkpoints: number } {
  return {
    jobs: db.prepare('SELECT id FROM jobs').all() as { id: string }[],
    checkpoints: (db.prepare('SELECT COUNT(*) AS n FROM checkpoints').get() as { n: number }).n,
  };
}

/** The oldest unfinished job training from one of `modelIds`, or job `jobId` itself if unfinished; undefined when none. */
export function unfinishedJobUsingModels(db: DB, modelIds: string[], jobId: string | null): Pick<JobRow, 'id' | 'status'> | undefined {
  const marks = modelIds.map(() => '?').join(', ');
  return db
    .prepare(
      `SELECT id, status FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')
       AND (model IN (${marks}) OR id = ?) ORDER BY created_at LIMIT 1`,
    )
    .get(...modelIds, jobId ?? '') as Pick<JobRow, 'id' | 'status'> | undefined;
}

/** Removes the checkpoint row behind checkpoint model `checkpointModel` (its model was deleted). */
export function deleteCheckpointOfModel(db: DB, checkpointModel: string): void {
  db.prepare('DELETE FROM checkpoints WHERE fine_tuned_model_checkpoint = ?').run(checkpointModel);
}

// ------------------------------------------------------------------------------------ remote leases

/**
 * Queued jobs no worker holds, oldest first, read a page at a time (a remote claim picks the first whose method
 * the worker runs, usually on the first page).
 */
export function* unclaimedQueuedJobs(db: DB, pageSize = 16): Generator<JobRow> {
  const page = db.prepare(`SELECT rowid AS row_number, * FROM jobs WHERE status = 'queued' AND worker_id IS NULL AND rowid > ? ORDER BY rowid LIMIT ?`);
  for (let after = 0; ; ) {
    const rows = page.all(after, pageSize) as (JobRow & { row_number: number })[];
    for (const { row_number: _n, ...row } of rows) yield row as JobRow;
    if (rows.length < pageSize) return;
    after = rows[rows.length - 1].row_number;
  }
}

/** The running or pausing job a remote lease holds (`worker_id` ends in `:<lease>`), or undefined. */
export function jobOfLease(db: DB, leaseId: string): JobRow | undefined {
  return db
    .prepare(`SELECT * FROM jobs WHERE worker_id LIKE ? AND status IN ('running', 'pausing')`)
    .get(`${REMOTE_WORKER_PREFIX}%:${leaseId}`) as JobRow | undefined;
}

/** Running or pausing jobs held by remote leases whose heartbeat is older than `cutoff` (epoch seconds). */
export function staleRemoteJobs(db: DB, cutoff: number): JobRow[] {
  return db
    .prepare(`SELECT * FROM jobs WHERE worker_id LIKE ? AND status IN ('running', 'pausing') AND (heartbeat_at IS NULL OR heartbeat_at < ?)`)
    .all(`${REMOTE_WORKER_PREFIX}%`, cutoff) as JobRow[];
}

// ------------------------------------------------------------------------- multi-node groups (job_nodes)

/** SQL for a job row's `weitiao.nodes` (hosts of a multi-node run; absent = 1). */
export function jobNodesSql(db: DB): string {
  return `COALESCE(${jsonNumber(db, 'extension', 'settings.nodes')}, 1)`;
}

/** One member of a multi-node run: a remote lease's rank in its job's group (table job_nodes, migration 7). */
export interface JobNodeRow {
  lease_id: string;
  job_id: string;
  /** The job's worker_id while this attempt holds it (rank 0's `remote:<worker>:<lease>`). */
  leader: string;
  node_rank: number;
  nodes: number;
  worker: string;
  master_addr: string;
  master_port: number;
  joined_at: number;
  heartbeat_at: number;
  outcome: 'ok' | 'failed' | null;
  plan: string | null;
}

export function insertJobNode(db: DB, row: Omit<JobNodeRow, 'outcome' | 'plan'>): void {
  db.prepare(
    `INSERT INTO job_nodes (lease_id, job_id, leader, node_rank, nodes, worker, master_addr, master_port, joined_at, heartbeat_at)
     VALUES (@lease_id, @job_id, @leader, @node_rank, @nodes, @worker, @master_addr, @master_port, @joined_at, @heartbeat_at)`,
  ).run(row);
}

/** A job's members of its current attempt (leader = the job's worker_id), by rank. */
export function jobNodes(db: DB, jobId: string): JobNodeRow[] {
  return db
    .prepare('SELECT n.* FROM job_nodes n JOIN jobs j ON j.id = n.job_id AND j.worker_id = n.leader WHERE n.job_id = ? ORDER BY n.node_rank')
    .all(jobId) as JobNodeRow[];
}

/** The member row of lease `leaseId` while its attempt holds the job, with the job's status; undefined once it ended. */
export function jobNodeOfLease(db: DB, leaseId: string): (JobNodeRow & { status: JobStatus }) | undefined {
  return db
    .prepare('SELECT n.*, j.status FROM job_nodes n JOIN jobs j ON j.id = n.job_id AND j.worker_id = n.leader WHERE n.lease_id = ?')
    .get(leaseId) as (JobNodeRow & { status: JobStatus }) | undefined;
}

/** Groups still forming (job queued, held by its rank 0) that `worker` is not in yet, oldest first, with their member count. */
export function formingGroups(db: DB, worker: string): (JobRow & { members: number })[] {
  return db
    .prepare(
      `SELECT j.*, (SELECT COUNT(*) FROM job_nodes m WHERE m.job_id = j.id AND m.leader = j.worker_id) AS members
       FROM jobs j WHERE j.status = 'queued' AND j.worker_id LIKE ?
       AND EXISTS (SELECT 1 FROM job_nodes n WHERE n.job_id = j.id AND n.leader = j.worker_id AND n.node_rank = 0)
       AND NOT EXISTS (SELECT 1 FROM job_nodes n WHERE n.job_id = j.id AND n.leader = j.worker_id AND n.worker = ?)
       ORDER BY j.rowid`,
    )
    .all(`${REMOTE_WORKER_PREFIX}%`, worker) as (JobRow & { members: number })[];
}

/** Groups whose job is still queued but whose rank 0 opened them before `cutoff` (epoch seconds): incomplete in time. */
export function expiredFormingGroups(db: DB, cutoff: number): { job_id: string; leader: string }[] {
  return db
    .prepare(
      `SELECT n.job_id, n.leader FROM job_nodes n JOIN jobs j ON j.id = n.job_id AND j.worker_id = n.leader
       WHERE j.status = 'queued' AND n.node_rank = 0 AND n.joined_at < ?`,
    )
    .all(cutoff) as { job_id: string; leader: string }[];
}

/** Running or pausing jobs with a member (rank > 0, not finished) whose heartbeat is older than `cutoff`. */
export function jobsWithStaleNodes(db: DB, cutoff: number): JobRow[] {
  return db
    .prepare(
      `SELECT * FROM jobs j WHERE j.status IN ('running', 'pausing') AND EXISTS (SELECT 1 FROM job_nodes n WHERE n.job_id = j.id
       AND n.leader = j.worker_id AND n.node_rank > 0 AND n.outcome IS NULL AND n.heartbeat_at < ?)`,
    )
    .all(cutoff) as JobRow[];
}

export function beatJobNode(db: DB, leaseId: string): void {
  db.prepare('UPDATE job_nodes SET heartbeat_at = ? WHERE lease_id = ?').run(now(), leaseId);
}

export function setJobNodeOutcome(db: DB, leaseId: string, outcome: 'ok' | 'failed'): void {
  db.prepare('UPDATE job_nodes SET outcome = ? WHERE lease_id = ?').run(outcome, leaseId);
}

export function setJobNodePlan(db: DB, leaseId: string, plan: string): void {
  db.prepare('UPDATE job_nodes SET plan = ? WHERE lease_id = ?').run(plan, leaseId);
}

/** Removes the rows of every attempt of a job but the one `keepLeader` leads (null: all). */
export function deleteJobNodes(db: DB, jobId: string, keepLeader: string | null = null): void {
  db.prepare('DELETE FROM job_nodes WHERE job_id = ? AND leader != ?').run(jobId, keepLeader ?? '');
}

/** Rows of attempts that no longer hold their job (requeued, settled): their leases are lost already. */
export function deleteEndedJobNodes(db: DB): void {
  db.prepare(
    `DELETE FROM job_nodes WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = job_nodes.job_id AND j.worker_id = job_nodes.leader)`,
  ).run();
}

/** Holds queued job `id` for a forming group under `workerId` (it stays queued); whether it was free. */
export function holdQueuedJob(db: DB, id: string, workerId: string): boolean {
  const free = db.prepare(`SELECT id FROM jobs WHERE id = ? AND status = 'queued' AND worker_id IS NULL${skipLocked(db)}`).get(id);
  if (!free) return false;
  return db.prepare(`UPDATE jobs SET worker_id = ?, heartbeat_at = ? WHERE id = ? AND status = 'queued' AND worker_id IS NULL`).run(workerId, now(), id).changes > 0;
}

/** Releases a queued job its forming group held (if `leader` still holds it). */
export function releaseFormingJob(db: DB, jobId: string, leader: string): void {
  db.prepare(`UPDATE jobs SET worker_id = NULL WHERE id = ? AND worker_id = ? AND status = 'queued'`).run(jobId, leader);
  deleteJobNodes(db, jobId);
}
