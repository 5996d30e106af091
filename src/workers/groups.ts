/**
 * Multi-node runs (issue 19): a job with `weitiao.nodes` = N is handed to N different remote workers, which
 * train it together under torchrun (static rendezvous at rank 0's `advertise_host:rendezvous_port`; gloo or
 * nccl does the communication, nothing here does). The group lives in the store (table `job_nodes`), so a
 * restarted API keeps every member's fencing:
 *
 * - the first claimer opens the group (rank 0): the job stays `queued` but is held under rank 0's worker id, so
 *   no other claim and no local worker takes it; later claimers get ranks 1..N-1;
 * - the claim that completes the group starts the job (running, worker_id = rank 0's) and prepares its run once;
 *   every member's claim call waits (a bounded long-poll) until then and answers with its `node` assignment;
 * - a group not complete within `WEITIAO_GROUP_FORM_SECONDS` (default 120) is dissolved: the job stays queued;
 * - a member whose lease is not renewed ends the attempt for all (the job is queued again, resumes from its
 *   last checkpoint): rank 0's lease is the job's own (the lease reaper), the others' are checked here. A lease
 *   is a member's while its row's `leader` is the job's worker_id: once the attempt ends, every call is `lease_lost`.
 */
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { settleAbandoned, startRun, type JobJournal, type JobRow } from '../jobs/index.js';
// The group's SQL lives with the jobs' (the remote-leases section of the jobs repository).
import {
  beatJobNode,
  deleteEndedJobNodes,
  deleteJobNodes,
  expiredFormingGroups,
  formingGroups,
  holdQueuedJob,
  insertJobNode,
  jobNodeOfLease,
  jobNodes,
  jobsWithStaleNodes,
  releaseFormingJob,
  setJobNodeOutcome,
  setJobNodePlan,
  type JobNodeRow,
} from '../jobs/repository.js';
import { now } from '../store/index.js';
import type { ClaimRequest, LeaseInput, NodeAssignment } from './protocol.js';

/** `WEITIAO_GROUP_FORM_SECONDS` when a positive number, else 120: how long a multi-node group may take to fill. */
export function groupFormSeconds(): number {
  const n = Number(process.env.WEITIAO_GROUP_FORM_SECONDS);
  return Number.isFinite(n) && n > 0 ? n : 120;
}

/** Hosts a job trains on (`weitiao.nodes`, default 1). */
export function jobNodeCount(row: Pick<JobRow, 'extension'>): number {
  const settings = (JSON.parse(row.extension) as { settings?: { nodes?: number } }).settings;
  return settings?.nodes ?? 1;
}

/** A lease's place in a group, as the claim transaction decided it. */
export interface GroupSeat {
  jobId: string;
  leaseId: string;
  rank: number;
  nodes: number;
  /** The job's worker_id for this attempt (rank 0's). */
  leader: string;
  /** This claim completed the group (and started the job): it prepares the run for every member. */
  completes: boolean;
}

/** What the completing claim prepared for all members (rank 0's row, `plan`). */
export interface GroupPlan {
  request: object;
  inputs: LeaseInput[];
}

/** The lease id in a remote worker id `remote:<worker>:<lease>`. */
export const leaseOf = (workerId: string): string => workerId.slice(workerId.lastIndexOf(':') + 1);

export class NodeGroups {
  constructor(
    private readonly ctx: Context,
    private readonly journal: JobJournal,
  ) {}

  /**
   * Inside the claim's transaction: a seat in the oldest forming group this worker can run and is not in yet.
   * Workers that state no rendezvous port (older ones) never get multi-node jobs.
   */
  join(body: ClaimRequest, leaseId: string, canRun: (row: JobRow) => boolean): { row: JobRow; seat: GroupSeat } | null {
    if (!body.rendezvous_port) return null;
    const db = this.ctx.db;
    for (const { members: count, ...row } of formingGroups(db, body.worker.name)) {
      const members = Number(count); // COUNT(*) is a bigint on PostgreSQL
      const nodes = jobNodeCount(row);
      if (members >= nodes || !canRun(row)) continue;
      const leader = row.worker_id!;
      const host = jobNodes(db, row.id)[0];
      const t = now();
      insertJobNode(db, { lease_id: leaseId, job_id: row.id, leader, node_rank: members, nodes, worker: body.worker.name, master_addr: host.master_addr, master_port: host.master_port, joined_at: t, heartbeat_at: t });
      const completes = members + 1 === nodes;
      this.journal.event(row.id, { message: `Node ${members} of ${nodes}: remote worker ${body.worker.name} (${body.worker.host}) joined / 远程 worker ${body.worker.name} 作为第 ${members} 号节点加入` });
      if (completes && !startRun(db, row.id, leader)) {
        releaseFormingJob(db, row.id, leader); // cancelled or paused meanwhile
        return null;
      }
      return { row, seat: { jobId: row.id, leaseId, rank: members, nodes, leader, completes } };
    }
    return null;
  }

  /** Inside the claim's transaction: opens a group on queued job `row` with this worker as rank 0 (null when it cannot). */
  open(body: ClaimRequest, leaseId: string, workerId: string, row: JobRow): GroupSeat | null {
    if (!body.rendezvous_port) return null;
    const db = this.ctx.db;
    if (!holdQueuedJob(db, row.id, workerId)) return null;
    deleteJobNodes(db, row.id, workerId); // rows of an earlier attempt
    const nodes = jobNodeCount(row);
    const t = now();
    const addr = body.worker.advertise_host ?? body.worker.host;
    insertJobNode(db, { lease_id: leaseId, job_id: row.id, leader: workerId, node_rank: 0, nodes, worker: body.worker.name, master_addr: addr, master_port: body.rendezvous_port, joined_at: t, heartbeat_at: t });
    this.journal.event(row.id, {
      message: `Node 0 of ${nodes}: remote worker ${body.worker.name} hosts the rendezvous at ${addr}:${body.rendezvous_port}; waiting for ${nodes - 1} more worker(s) (${groupFormSeconds()} s) / 远程 worker ${body.worker.name} 作为 0 号节点，等待其余 ${nodes - 1} 个 worker`,
    });
    return { jobId: row.id, leaseId, rank: 0, nodes, leader: workerId, completes: false };
  }

  /** The completing claim hands its prepared run to every member (on rank 0's row). */
  publish(seat: GroupSeat, plan: GroupPlan): void {
    setJobNodePlan(this.ctx.db, leaseOf(seat.leader), JSON.stringify(plan));
  }

  /**
   * The long-poll of a seat's claim: the prepared run and this lease's node assignment once the group started;
   * null when the group was dissolved (incomplete in time), the job failed to start, or this seat's attempt ended.
   */
  async wait(seat: GroupSeat, pollMs = 200): Promise<{ plan: GroupPlan; node: NodeAssignment } | null> {
    const db = this.ctx.db;
    for (;;) {
      const me = jobNodeOfLease(db, seat.leaseId);
      if (!me || !['queued', 'running', 'pausing'].includes(me.status)) return null;
      const host = me.node_rank === 0 ? me : jobNodes(db, seat.jobId)[0];
      if (me.status !== 'queued' && host?.plan) {
        const plan = JSON.parse(host.plan) as GroupPlan;
        return { plan, node: { rank: me.node_rank, nodes: me.nodes, master_addr: me.master_addr, master_port: me.master_port } };
      }
      if (me.status === 'queued' && host && host.joined_at < now() - groupFormSeconds()) {
        this.dissolve(seat.jobId, seat.leader);
        return null;
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  /** The member row of a rank > 0 lease while its attempt holds the job; undefined for rank 0 and lost leases. */
  member(leaseId: string): (JobNodeRow & { status: string }) | undefined {
    const row = jobNodeOfLease(this.ctx.db, leaseId);
    return row && row.node_rank > 0 && (row.status === 'running' || row.status === 'pausing') ? row : undefined;
  }

  beat(leaseId: string): void {
    beatJobNode(this.ctx.db, leaseId);
  }

  /** A member's end: its engine's outcome, which rank 0's finish weighs (a node lost shows as an error on rank 0). */
  finishMember(leaseId: string, ok: boolean): void {
    setJobNodeOutcome(this.ctx.db, leaseId, ok ? 'ok' : 'failed');
  }

  /** Whether every member of the job's group but rank 0 ended well (true for one-node jobs). */
  membersEndedWell(jobId: string): boolean {
    return jobNodes(this.ctx.db, jobId).every((n) => n.node_rank === 0 || n.outcome === 'ok');
  }

  /** Ends attempts with a silent member, dissolves groups not complete in time, drops rows of ended attempts; the requeued jobs. */
  reap(leaseSeconds: number, maxCrashes: number): string[] {
    const db = this.ctx.db;
    const requeued: string[] = [];
    for (const row of jobsWithStaleNodes(db, now() - leaseSeconds)) {
      const silent = jobNodes(db, row.id).filter((n) => n.node_rank > 0 && n.outcome === null && n.heartbeat_at < now() - leaseSeconds);
      const who = silent.map((n) => `node ${n.node_rank} (${n.worker})`).join(', ');
      try {
        settleAbandoned(this.journal, row, maxCrashes, `the remote worker of ${who} stopped renewing its lease (${leaseSeconds} s): every node of the run stops / 多节点训练中有节点的租约已过期，整组停止`);
        requeued.push(row.id);
      } catch (err) {
        if (!(err instanceof WeitiaoError && err.code === 'conflict')) throw err; // settled meanwhile
      }
    }
    for (const g of expiredFormingGroups(db, now() - groupFormSeconds())) this.dissolve(g.job_id, g.leader);
    deleteEndedJobNodes(db);
    return requeued;
  }

  private dissolve(jobId: string, leader: string): void {
    const rows = jobNodes(this.ctx.db, jobId);
    if (!rows.length) return;
    releaseFormingJob(this.ctx.db, jobId, leader);
    this.journal.event(jobId, {
      level: 'warn',
      message: `Only ${rows.length} of ${rows[0].nodes} workers claimed this multi-node job within ${groupFormSeconds()} s: released, it waits in the queue (start \`weitiao worker\` on more hosts) / 多节点任务在规定时间内未凑齐 worker，已释放并继续排队`,
    });
  }
}
