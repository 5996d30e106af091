/**
 * The store and the home directory must agree: every row's files exist, every folder weitiao made has a
 * row. `checkIntegrity` finds where they do not (the API server logs a line at start-up, `weitiao doctor`
 * prints a table); `repairIntegrity` fixes what is safe to fix — rows whose files are gone are deleted
 * (never while an unfinished job needs them), folders without rows are moved to `<home>/lost+found/`, never
 * deleted.
 *
 * ```ts
 * const report = checkIntegrity(ctx);          // { ok, findings: [{ kind, id, path, message, repair }] }
 * if (!report.ok) console.log(integritySummary(report));
 * repairIntegrity(ctx);                         // the same findings, each with what was done
 * ```
 * A store that looks rolled back (a lost SQLite WAL: job folders or checkpoints newer than any row) is
 * reported as such; its folders go to lost+found like any other, so a backup can still be restored over it.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { storageFor } from '../storage/index.js';
import { storedInBucket } from '../models/stored.js';
import { allCheckpoints, deleteCheckpointRow, isJobUnfinished, jobStatuses, unfinishedJobUsingFileOrModel } from '../jobs/repository.js';

export type FindingKind =
  | 'file_missing'
  | 'model_missing'
  | 'checkpoint_missing'
  | 'orphan_file'
  | 'orphan_job'
  | 'orphan_checkpoint'
  | 'orphan_model'
  | 'rolled_back';

export interface Finding {
  kind: FindingKind;
  /** The row's id (file, model, checkpoint's model, job), or null for a folder without a row. */
  id: string | null;
  /** Where, relative to the home directory. */
  path: string;
  message: string;
  /** What `--repair` does (before a repair) or did (after), or why it leaves this alone. */
  repair: string;
  /** Whether `--repair` fixes it. */
  repairable: boolean;
  /** Set by repairIntegrity: it was fixed. */
  repaired?: boolean;
}

export interface IntegrityReport {
  object: 'weitiao.integrity_report';
  /** No findings (after a repair: none left unrepaired). */
  ok: boolean;
  findings: Finding[];
}

export interface IntegrityOptions {
  /** Folders without rows younger than this are left alone: an upload, pull or tiny model being written. Default 120 s. */
  graceSeconds?: number;
}

/** A running job writes checkpoint folders before the worker records them. */
const WRITING = ['running', 'pausing'];

interface Planned extends Finding {
  fix?: () => void;
}

/** Every disagreement between the store and the home directory; nothing is changed. */
export function checkIntegrity(ctx: Context, options: IntegrityOptions = {}): IntegrityReport {
  const findings = plan(ctx, options).map(({ fix: _fix, ...f }) => f);
  return { object: 'weitiao.integrity_report', ok: findings.length === 0, findings };
}

/** Fixes what is safe (rows without files deleted in one transaction, folders without rows moved to lost+found). */
export function repairIntegrity(ctx: Context, options: IntegrityOptions = {}): IntegrityReport {
  const planned = plan(ctx, options);
  const rowFixes = planned.filter((f) => f.fix && !f.kind.startsWith('orphan_'));
  ctx.db.transaction(() => rowFixes.forEach((f) => f.fix!()))();
  for (const f of planned) {
    if (!f.fix) continue;
    if (f.kind.startsWith('orphan_')) f.fix();
    f.repaired = true;
  }
  const findings = planned.map(({ fix: _fix, ...f }) => f);
  return { object: 'weitiao.integrity_report', ok: findings.every((f) => f.repaired || f.kind === 'rolled_back'), findings };
}

/** One line for a log: counts by kind and what to run. */
export function integritySummary(report: IntegrityReport): string {
  if (report.ok && !report.findings.length) return 'integrity: the store and the home directory agree / 存储与数据目录一致';
  const counts = new Map<string, number>();
  for (const f of report.findings) counts.set(f.kind, (counts.get(f.kind) ?? 0) + 1);
  const parts = [...counts].map(([k, n]) => `${n} ${k}`).join(', ');
  const rolled = report.findings.some((f) => f.kind === 'rolled_back') ? ' The store looks rolled back (lost WAL?).' : '';
  return `integrity: ${parts}.${rolled} Run \`weitiao doctor\` for details, \`weitiao doctor --repair\` to fix / 存储与数据目录不一致，请运行 weitiao doctor`;
}

// ---------------------------------------------------------------------------------------------- checks

function plan(ctx: Context, options: IntegrityOptions): Planned[] {
  const grace = options.graceSeconds ?? 120;
  const out: Planned[] = [];
  const rel = (p: string) => path.relative(ctx.home.root, p) || '.';
  const lostFound = (p: string) => () => moveToLostFound(ctx.home.root, p);
  const db = ctx.db;

  // Rows whose files are gone. With object storage (WEITIAO_STORAGE_URL=s3://…) the bucket holds the bytes and
  // this host only a cache of them: a missing local copy is not a lost file, and --repair must never delete its row.
  const remoteFiles = storageFor(ctx).kind === 's3';
  for (const f of db.prepare('SELECT id, path FROM files ORDER BY rowid').all() as { id: string; path: string }[]) {
    if (remoteFiles || existsSync(f.path)) continue;
    const job = unfinishedJobUsingFileOrModel(db, f.id);
    out.push({
      kind: 'file_missing',
      id: f.id,
      path: rel(f.path),
      message: `file ${f.id} has a row but its bytes are missing / 文件记录存在但内容已丢失`,
      repair: job ? `kept: unfinished job ${job} uses it (cancel the job first)` : 'delete the row',
      repairable: !job,
      ...(job ? {} : { fix: () => db.prepare('DELETE FROM files WHERE id = ?').run(f.id) }),
    });
  }

  const checkpointModels = new Set(allCheckpoints(db).map((c) => c.model));
  const models = db.prepare('SELECT id, kind, path, job_id, metadata FROM models ORDER BY rowid').all() as {
    id: string;
    kind: string;
    path: string;
    job_id: string | null;
    metadata: string;
  }[];
  // Likewise a trained model or checkpoint whose row says its directory is complete in the bucket: a cache miss here.
  const modelRows = new Map(models.map((m) => [m.id, m]));
  const stored = (id: string, dir: string) => modelRows.has(id) && storedInBucket(ctx, modelRows.get(id)!, dir);
  for (const m of models) {
    if (isDir(m.path) || (m.kind === 'checkpoint' && checkpointModels.has(m.id)) || stored(m.id, m.path)) continue; // checkpoints: below
    const job = unfinishedJobUsingFileOrModel(db, m.id) ?? (m.job_id && isJobUnfinished(db, m.job_id) ? m.job_id : undefined);
    const dependent = db.prepare('SELECT id FROM models WHERE base_model = ? LIMIT 1').get(m.id) as { id: string } | undefined;
    const why = job ? `unfinished job ${job} uses it` : dependent ? `model '${dependent.id}' was trained from it` : null;
    out.push({
      kind: 'model_missing',
      id: m.id,
      path: rel(m.path),
      message: `model '${m.id}' has a row but its folder is missing / 模型记录存在但目录已丢失`,
      repair: why ? `kept: ${why}` : 'delete the row',
      repairable: !why,
      ...(why ? {} : { fix: () => db.prepare('DELETE FROM models WHERE id = ?').run(m.id) }),
    });
  }

  const checkpoints = allCheckpoints(db);
  for (const c of checkpoints) {
    if (isDir(c.path) || stored(c.model, c.path)) continue;
    out.push({
      kind: 'checkpoint_missing',
      id: c.model,
      path: rel(c.path),
      message: `checkpoint at step ${c.step} of job ${c.job_id} has a row but its folder is missing / 检查点记录存在但目录已丢失`,
      repair: 'delete the row and its checkpoint model (a resume takes the newest one left)',
      repairable: true,
      fix: () => {
        deleteCheckpointRow(db, c.id);
        db.prepare("DELETE FROM models WHERE id = ? AND kind = 'checkpoint'").run(c.model);
      },
    });
  }

  // Folders without rows.
  const fileDirs = new Set((db.prepare('SELECT path FROM files').all() as { path: string }[]).map((r) => path.dirname(r.path)));
  for (const name of list(ctx.home.files)) {
    const dir = path.join(ctx.home.files, name);
    if (fileDirs.has(dir) || young(dir, grace)) continue;
    out.push({
      kind: 'orphan_file',
      id: null,
      path: rel(dir),
      message: `${name}: a stored file with no row${name.startsWith('.tmp-') ? ' (an upload that never finished)' : ''} / 文件目录没有对应记录`,
      repair: 'move to lost+found/',
      repairable: true,
      fix: lostFound(dir),
    });
  }

  const jobs: Map<string, string> = jobStatuses(db);
  const modelPaths = new Set(models.map((m) => m.path));
  const recorded = new Map<string, Set<number>>();
  for (const c of checkpoints) (recorded.get(c.job_id) ?? recorded.set(c.job_id, new Set()).get(c.job_id)!).add(c.step);
  let newer = 0;
  for (const name of list(ctx.home.jobs)) {
    const dir = path.join(ctx.home.jobs, name);
    const status = jobs.get(name);
    if (status === undefined) {
      if (young(dir, grace)) continue;
      newer++;
      out.push({
        kind: 'orphan_job',
        id: null,
        path: rel(dir),
        message: `${name}: a job folder with no job row / 任务目录没有对应记录`,
        repair: 'move to lost+found/',
        repairable: true,
        fix: lostFound(dir),
      });
      continue;
    }
    if (WRITING.includes(status)) continue;
    const steps = recorded.get(name) ?? new Set<number>();
    const last = Math.max(0, ...steps);
    const ckptDir = path.join(dir, 'checkpoints');
    for (const step of list(ckptDir).filter((n) => /^step-\d+$/.test(n))) {
      const n = Number(step.slice(5));
      if (steps.has(n)) continue;
      if (n > last) newer++;
      const at = path.join(ckptDir, step);
      out.push({
        kind: 'orphan_checkpoint',
        id: null,
        path: rel(at),
        message: `${name}/${step}: a checkpoint folder with no row${n > last ? ', newer than any recorded' : ''} / 检查点目录没有对应记录`,
        repair: 'move to lost+found/',
        repairable: true,
        fix: lostFound(at),
      });
    }
    const modelDir = path.join(dir, 'model');
    if (isDir(modelDir) && !modelPaths.has(modelDir)) {
      if (status !== 'succeeded') newer++;
      out.push({
        kind: 'orphan_model',
        id: null,
        path: rel(modelDir),
        message: `${name}/model: a trained model with no model row (job status '${status}') / 训练结果没有对应的模型记录`,
        repair: 'move to lost+found/',
        repairable: true,
        fix: lostFound(modelDir),
      });
    }
  }

  for (const dir of modelDirs(ctx.home.models)) {
    if (modelPaths.has(dir) || young(dir, grace)) continue;
    out.push({
      kind: 'orphan_model',
      id: null,
      path: rel(dir),
      message: `${path.relative(ctx.home.models, dir)}: a model folder with no model row / 模型目录没有对应记录`,
      repair: 'move to lost+found/',
      repairable: true,
      fix: lostFound(dir),
    });
  }

  if (newer) {
    out.push({
      kind: 'rolled_back',
      id: null,
      path: '.',
      message: `the store looks rolled back (e.g. a lost SQLite WAL): ${newer} job folder(s), checkpoint(s) or model(s) are newer than its rows / 存储似乎被回滚（例如 WAL 丢失）`,
      repair: 'nothing by itself: the folders above go to lost+found/; `weitiao restore` a backup to get the rows back',
      repairable: false,
    });
  }
  return out;
}

/** Moves `p` (inside `root`) to `root/lost+found/<same relative path>`, with a suffix when that is taken. */
function moveToLostFound(root: string, p: string): void {
  let target = path.join(root, 'lost+found', path.relative(root, p));
  if (existsSync(target)) target = `${target}.${Date.now()}`;
  mkdirSync(path.dirname(target), { recursive: true });
  renameSync(p, target);
}

/** Folders under models/ that hold a model: `name/` or `org/name/` (an org folder holds no config.json). */
function modelDirs(root: string): string[] {
  const out: string[] = [];
  for (const name of list(root)) {
    const dir = path.join(root, name);
    if (existsSync(path.join(dir, 'config.json'))) out.push(dir);
    else {
      const inner = list(dir).map((n) => path.join(dir, n));
      const models = inner.filter((d) => existsSync(path.join(d, 'config.json')));
      // An org folder: its models; anything else (a pull that broke off, stray files): the folder itself.
      out.push(...(models.length ? models : [dir]));
    }
  }
  return out;
}

/** Sub-folder names of `dir` (none when it does not exist); `.tmp-*` upload folders included, other dot-folders not. */
function list(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory() && (!e.name.startsWith('.') || e.name.startsWith('.tmp-')))
      .map((e) => e.name)
      .sort();
  } catch {
    return [];
  }
}

function young(p: string, graceSeconds: number): boolean {
  try {
    return Date.now() - statSync(p).mtimeMs < graceSeconds * 1000;
  } catch {
    return false;
  }
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
