/**
 * A job's history: its events (pages, or followed as they happen from the store) and its checkpoints.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { listPage, type ListPage } from '../store/index.js';
import { eventToWire } from './internal/records.js';
import { TERMINAL } from './internal/status.js';
import { requireJob } from './lifecycle.js';
import { eventSeq, eventsAfter, getJobState, selectCheckpointsPage, selectEventsPage } from './repository.js';
import {
  ListCheckpointsParams,
  ListEventsParams,
  parseParams,
  type FineTuningJobCheckpoint,
  type FineTuningJobEvent,
} from './schemas.js';
import { checkpointToWire } from './wire.js';

/** A job's events in OpenAI's cursor pages (newest first unless `order: 'asc'`). */
export function listJobEvents(ctx: Context, id: string, params: ListEventsParams = {}): ListPage<FineTuningJobEvent> {
  requireJob(ctx, id);
  const p = parseParams(ListEventsParams, params);
  const page = selectEventsPage(ctx.db, id, { after: p.after, limit: p.limit, order: p.order });
  if (!page) throw new WeitiaoError('not_found', `no such event: ${p.after} / 找不到该事件`, { param: 'after' });
  return listPage(page.rows.map(eventToWire), page.has_more);
}

export interface FollowOptions {
  /** Start after this event id (e.g. an SSE client's Last-Event-ID)… */
  after?: string;
  /** …or after this sequence number (0 = from the first event). */
  afterSeq?: number;
  signal?: AbortSignal;
  pollMs?: number;
}

/**
 * A job's events as they happen, oldest first, read from the store (so it follows a worker in another
 * process). Ends once the job is finished or paused and every event has been yielded, or on `signal`.
 */
export async function* followJobEvents(ctx: Context, id: string, options: FollowOptions = {}): AsyncGenerator<FineTuningJobEvent> {
  requireJob(ctx, id);
  let seq = options.afterSeq ?? 0;
  if (options.after !== undefined) {
    const after = eventSeq(ctx.db, id, options.after);
    if (after === undefined) throw new WeitiaoError('not_found', `no such event: ${options.after} / 找不到该事件`, { param: 'after' });
    seq = after;
  }
  while (!options.signal?.aborted) {
    // Status first: any event written before the job settled is visible to the read that follows.
    const current = getJobState(ctx.db, id)?.status;
    const rows = eventsAfter(ctx.db, id, seq, 500);
    for (const row of rows) {
      seq = row.seq;
      yield eventToWire(row);
      if (options.signal?.aborted) return;
    }
    if (rows.length === 500) continue;
    if (current === undefined || TERMINAL.includes(current) || current === 'paused') return;
    try {
      await delay(options.pollMs ?? 250, undefined, { signal: options.signal });
    } catch {
      return; // aborted
    }
  }
}

/** A job's checkpoints, newest step first, in OpenAI's cursor pages. */
export function listJobCheckpoints(ctx: Context, id: string, params: ListCheckpointsParams = {}): ListPage<FineTuningJobCheckpoint> {
  requireJob(ctx, id);
  const p = parseParams(ListCheckpointsParams, params);
  const page = selectCheckpointsPage(ctx.db, id, { after: p.after, limit: p.limit });
  if (!page) throw new WeitiaoError('not_found', `no such checkpoint: ${p.after} / 找不到该检查点`, { param: 'after' });
  return listPage(page.rows.map(checkpointToWire), page.has_more);
}
