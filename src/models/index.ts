/**
 * The model registry: every model weitiao can train from or chat with, by id.
 *
 * ```ts
 * await createTinyModel(ctx, { name: 'tiny-qwen2', corpusFiles: ['reviews.csv'] });
 * await pullModel(ctx, { repo: 'Qwen/Qwen2.5-0.5B-Instruct', source: 'huggingface' });
 * resolveModel(ctx, 'ft:tiny-qwen2:waimai:abc123'); // -> { basePath, adapterPath, … }
 * ```
 * Base models are Hugging Face directories (`models/<name>` for tiny and pulled ones, anywhere for local
 * ones); fine-tuned models and checkpoints are LoRA adapter directories that name their base model.
 * The wire object is OpenAI's model object plus one extension field, `weitiao`.
 */
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import type { Context } from '../context.js';
import { runEngine, type CreateTinyRequest } from '../engine/index.js';
import { hideServerPaths, WeitiaoError } from '../errors.js';
import { now } from '../store/index.js';

import { downloadRepo, type DownloadRepoOptions, type HubSource, type PullProgress } from './internal/hub.js';

export type { HubSource, PullProgress };

// ------------------------------------------------------------------------------------------ wire objects

export const ModelKind = z.enum(['base', 'fine-tuned', 'checkpoint']);
export type ModelKind = z.infer<typeof ModelKind>;

export const ModelSource = z.enum(['tiny', 'huggingface', 'modelscope', 'local', 'training']);
export type ModelSource = z.infer<typeof ModelSource>;

/** OpenAI's model object; weitiao's own fields sit in `weitiao`. */
export const ModelObject = z.object({
  id: z.string(),
  object: z.literal('model'),
  created: z.number().int(),
  owned_by: z.string(),
  weitiao: z.object({
    kind: ModelKind,
    source: ModelSource,
    /** The base model's id (fine-tuned models and checkpoints), else null. */
    base_model: z.string().nullable(),
    job_id: z.string().nullable(),
    /** Base: the Hugging Face model directory; fine-tuned/checkpoint: the adapter directory (a complete model when `metadata.format` is `full`). Over the API: relative to the home directory (a folder outside it: its name only). */
    path: z.string(),
    metadata: z.record(z.string(), z.unknown()),
  }),
});
export type ModelObject = z.infer<typeof ModelObject>;

export const ModelList = z.object({ object: z.literal('list'), data: z.array(ModelObject) });
export type ModelList = z.infer<typeof ModelList>;

export const ModelDeleted = z.object({ id: z.string(), object: z.literal('model'), deleted: z.boolean() });
export type ModelDeleted = z.infer<typeof ModelDeleted>;

/** What the engine needs to load a model: the base directory plus, for fine-tunes, the adapter. */
export interface ResolvedModel {
  /** The registered id. */
  id: string;
  kind: ModelKind;
  basePath: string;
  adapterPath: string | null;
  /** The base model's id (itself for a base model; a path only for a job trained on a then-unregistered directory). */
  baseId: string;
}

interface ModelRow {
  id: string;
  kind: ModelKind;
  path: string;
  base_model: string | null;
  job_id: string | null;
  source: ModelSource;
  owned_by: string;
  created_at: number;
  metadata: string;
}

function toObject(row: ModelRow): ModelObject {
  let metadata: Record<string, unknown> = {};
  try {
    metadata = JSON.parse(row.metadata) as Record<string, unknown>;
  } catch {
    /* a hand-edited row must not make the whole list unreadable */
  }
  return {
    id: row.id,
    object: 'model',
    created: row.created_at,
    owned_by: row.owned_by,
    weitiao: {
      kind: row.kind,
      source: row.source,
      base_model: row.base_model,
      job_id: row.job_id,
      path: row.path,
      metadata,
    },
  };
}

/**
 * The model as an API client sees it: `weitiao.path` relative to the home directory and every path in the
 * metadata hidden the same way (src/errors.ts hideServerPaths): a client names models, never server folders.
 */
export function publicModel(model: ModelObject, root: string): ModelObject {
  const hide = (value: unknown): unknown => {
    if (typeof value === 'string') return hideServerPaths(value, root);
    if (Array.isArray(value)) return value.map(hide);
    if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, hide(v)]));
    return value;
  };
  return {
    ...model,
    weitiao: { ...model.weitiao, path: hideServerPaths(model.weitiao.path, root), metadata: hide(model.weitiao.metadata) as Record<string, unknown> },
  };
}

function getRow(ctx: Context, id: string): ModelRow | undefined {
  return ctx.db.prepare('SELECT * FROM models WHERE id = ?').get(id) as ModelRow | undefined;
}

// -------------------------------------------------------------------------------------------- registry

export interface RegisterModelInput {
  id: string;
  kind: ModelKind;
  /** Base: the model directory; fine-tuned/checkpoint: the adapter directory. Stored absolute. */
  path: string;
  base_model?: string | null;
  job_id?: string | null;
  source: ModelSource;
  owned_by?: string;
  metadata?: Record<string, unknown>;
}

/** Adds a model to the registry, or updates it (keeping its creation time) when the id exists. */
export function registerModel(ctx: Context, input: RegisterModelInput): ModelObject {
  if (!input.id.trim()) throw new WeitiaoError('invalid_request', 'a model id cannot be empty / 模型 id 不能为空', { param: 'id' });
  const kind = ModelKind.parse(input.kind);
  const source = ModelSource.parse(input.source);
  if (kind !== 'base' && !input.base_model) {
    throw new WeitiaoError('invalid_request', `a ${kind} model needs base_model / ${kind} 模型须指明基础模型`, { param: 'base_model' });
  }
  ctx.db
    .prepare(
      `INSERT INTO models (id, kind, path, base_model, job_id, source, owned_by, created_at, metadata)
       VALUES (@id, @kind, @path, @base_model, @job_id, @source, @owned_by, @created_at, @metadata)
       ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, path = excluded.path, base_model = excluded.base_model,
         job_id = excluded.job_id, source = excluded.source, owned_by = excluded.owned_by, metadata = excluded.metadata`,
    )
    .run({
      id: input.id,
      kind,
      path: path.resolve(input.path),
      base_model: input.base_model ?? null,
      job_id: input.job_id ?? null,
      source,
      owned_by: input.owned_by ?? 'weitiao',
      created_at: now(),
      metadata: JSON.stringify(input.metadata ?? {}),
    });
  return toObject(getRow(ctx, input.id)!);
}

/** Every registered model, oldest first (OpenAI's list envelope); `kind` filters. */
export function listModels(ctx: Context, options: { kind?: ModelKind } = {}): ModelList {
  const rows = (
    options.kind
      ? ctx.db.prepare('SELECT * FROM models WHERE kind = ? ORDER BY created_at, rowid').all(ModelKind.parse(options.kind))
      : ctx.db.prepare('SELECT * FROM models ORDER BY created_at, rowid').all()
  ) as ModelRow[];
  return { object: 'list', data: rows.map(toObject) };
}

/** One model by id; `not_found` (param `model`) with close names when there is none. */
export function retrieveModel(ctx: Context, id: string): ModelObject {
  const row = getRow(ctx, id);
  if (!row) throw notFound(ctx, id);
  return toObject(row);
}

/**
 * Deletes a fine-tuned model (with its job's checkpoint models) or a checkpoint, removing their adapter
 * directories. Base models need `force`; their files go only when weitiao downloaded or built them.
 */
export function deleteModel(ctx: Context, id: string, options: { force?: boolean } = {}): ModelDeleted {
  const row = getRow(ctx, id);
  if (!row) throw notFound(ctx, id);
  requireNotInUse(ctx, row);

  let rows: ModelRow[] = [row];
  if (row.kind === 'base') {
    if (!options.force) {
      throw new WeitiaoError(
        'permission_denied',
        `'${id}' is a base model; delete it with force (\`weitiao models delete ${id} --force\`) / '${id}' 是基础模型，须加 --force 才能删除`,
        { param: 'model' },
      );
    }
    const dependents = ctx.db.prepare('SELECT id FROM models WHERE base_model = ? ORDER BY created_at').all(id) as { id: string }[];
    if (dependents.length) {
      throw new WeitiaoError(
        'conflict',
        `base model '${id}' is used by ${dependents.map((d) => `'${d.id}'`).join(', ')}; delete those first / 仍有模型基于 '${id}'，请先删除它们`,
        { param: 'model' },
      );
    }
  } else if (row.kind === 'fine-tuned' && row.job_id) {
    const checkpoints = ctx.db
      .prepare("SELECT * FROM models WHERE job_id = ? AND kind = 'checkpoint' AND id != ?")
      .all(row.job_id, id) as ModelRow[];
    rows = rows.concat(checkpoints);
  }

  const del = ctx.db.prepare('DELETE FROM models WHERE id = ?');
  // A job's checkpoint list must not offer a model whose folder is gone: its row goes with the model.
  const delCheckpoint = ctx.db.prepare('DELETE FROM checkpoints WHERE fine_tuned_model_checkpoint = ?');
  ctx.db.transaction(() =>
    rows.forEach((r) => {
      del.run(r.id);
      if (r.kind === 'checkpoint') delCheckpoint.run(r.id);
    }),
  )();
  // Rows first, files after: a crash in between leaves stray files, never a model whose files are gone.
  for (const r of rows) {
    if (r.source === 'local') continue; // the user's own directory, only registered here
    if (!isOwnedPath(ctx, r.path)) continue;
    rmSync(r.path, { recursive: true, force: true });
    // `models/org/name`: drop `org/` too once its last model is gone.
    const parent = path.dirname(r.path);
    if (path.dirname(parent) === ctx.home.models && isDir(parent) && readdirSync(parent).length === 0) rmSync(parent, { recursive: true });
  }
  return { id, object: 'model', deleted: true };
}

/** Statuses of a job that has not finished: what it trains from and what it saved must stay. */
const UNFINISHED = `('validating_files', 'queued', 'running', 'pausing', 'paused')`;

/**
 * `conflict` naming the job when an unfinished job trains from this model (its `model`, or the model
 * the job's base was fine-tuned from) or, for a fine-tuned model or checkpoint, when the job it came
 * from has not finished (a paused job resumes from its checkpoints).
 */
function requireNotInUse(ctx: Context, row: ModelRow): void {
  // The models deleted with this one (a fine-tune takes its job's checkpoints along) count too.
  const ids = [row.id];
  if (row.kind === 'fine-tuned' && row.job_id) {
    for (const c of ctx.db.prepare("SELECT id FROM models WHERE job_id = ? AND kind = 'checkpoint'").all(row.job_id) as { id: string }[]) ids.push(c.id);
  }
  const marks = ids.map(() => '?').join(', ');
  const user = ctx.db
    .prepare(`SELECT id, status FROM jobs WHERE status IN ${UNFINISHED} AND (model IN (${marks}) OR id = ?) ORDER BY created_at LIMIT 1`)
    .get(...ids, row.job_id ?? '') as { id: string; status: string } | undefined;
  if (!user) return;
  const how = user.id === row.job_id ? 'was saved by' : 'is the base of';
  throw new WeitiaoError(
    'conflict',
    `model '${row.id}' ${how} job ${user.id}, which has not finished (status '${user.status}'); cancel the job or let it finish first / 模型 '${row.id}' 正被未结束的任务 ${user.id} 使用，请先取消或等待任务结束`,
    { param: 'model' },
  );
}

/** True for a directory weitiao made inside its home (never the home's top-level folders themselves). */
function isOwnedPath(ctx: Context, p: string): boolean {
  const rel = path.relative(ctx.home.root, path.resolve(p));
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) && rel.split(path.sep).length >= 2;
}

/**
 * Turns a registered model id into the paths the engine loads. Only names: a path is never looked up on the
 * server's disk (a client could otherwise load or probe any directory); directories are registered first
 * with `weitiao models add`. Fine-tuned models and checkpoints follow `base_model` to their base's directory.
 */
export function resolveModel(ctx: Context, name: string): ResolvedModel {
  const row = getRow(ctx, name);
  if (!row) {
    throw notFound(ctx, name);
  }
  if (row.kind === 'base') {
    requireDir(row.path, row.id);
    return { id: row.id, kind: 'base', basePath: row.path, adapterPath: null, baseId: row.id };
  }

  requireDir(row.path, row.id);
  // Where the weights live, from the training metadata: `format: 'full'` = the directory is a complete
  // model (full fine-tuning); `base_path` = a continued fine-tune's adapter sits on that merged base.
  const meta = toObject(row).weitiao.metadata;
  const own = (resolved: ResolvedModel): ResolvedModel => {
    if (meta.format === 'full') return { ...resolved, basePath: row.path, adapterPath: null };
    if (typeof meta.base_path === 'string') {
      requireDir(meta.base_path, row.id);
      return { ...resolved, basePath: meta.base_path };
    }
    return resolved;
  };
  // Follow the lineage down to a base model (continued fine-tuning makes fine-tunes of fine-tunes).
  const seen = new Set([row.id]);
  let baseRef = row.base_model!;
  for (;;) {
    const base = getRow(ctx, baseRef);
    if (!base) {
      // A job may have trained on an unregistered local directory: its path is the base's name.
      const dir = expandHome(baseRef);
      if (isDir(dir) && existsSync(path.join(dir, 'config.json'))) {
        const abs = path.resolve(dir);
        return own({ id: row.id, kind: row.kind, basePath: abs, adapterPath: row.path, baseId: abs });
      }
      throw new WeitiaoError(
        'not_found',
        `the base model '${baseRef}' of '${row.id}' is no longer registered / '${row.id}' 的基础模型 '${baseRef}' 已不存在`,
        { param: 'model' },
      );
    }
    if (base.kind === 'base') {
      if (meta.format !== 'full' && typeof meta.base_path !== 'string') requireDir(base.path, base.id);
      return own({ id: row.id, kind: row.kind, basePath: base.path, adapterPath: row.path, baseId: base.id });
    }
    if (seen.has(base.id) || !base.base_model) {
      throw new WeitiaoError('internal_error', `the lineage of '${row.id}' does not lead to a base model / '${row.id}' 的来源链有误`);
    }
    seen.add(base.id);
    baseRef = base.base_model;
  }
}

function requireDir(dir: string, id: string): void {
  if (!isDir(dir)) {
    throw new WeitiaoError(
      'not_found',
      `the files of model '${id}' are missing at ${dir}; pull or create it again, or delete it / 模型 '${id}' 的文件不存在：${dir}`,
      { param: 'model' },
    );
  }
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

function looksLikePath(p: string): boolean {
  return p.startsWith('/') || p.startsWith('./') || p.startsWith('../') || p.startsWith('~') || p === '.' || p === '..';
}

/** `not_found` naming up to three registered ids close to what was asked for. */
function notFound(ctx: Context, id: string): WeitiaoError {
  if (looksLikePath(id)) return pathGiven();
  const ids = (ctx.db.prepare('SELECT id FROM models').all() as { id: string }[]).map((r) => r.id);
  const q = id.toLowerCase();
  const close = ids
    .map((candidate) => {
      const c = candidate.toLowerCase();
      return { candidate, d: levenshtein(q, c), contains: c.includes(q) || q.includes(c) };
    })
    .filter(({ d, candidate, contains }) => contains || d <= Math.max(2, Math.floor(candidate.length / 3)))
    .sort((a, b) => a.d - b.d)
    .slice(0, 3)
    .map(({ candidate }) => `'${candidate}'`);
  const hint = close.length ? ` Did you mean ${close.join(', ')}?` : ids.length ? '' : ' No models are registered yet.';
  return new WeitiaoError(
    'not_found',
    `model '${id}' not found.${hint} See \`weitiao models list\`. / 找不到模型 '${id}'${close.length ? `，是否指 ${close.join('、')}？` : ''}`,
    { param: 'model' },
  );
}

/** A path where a model id belongs. The value is not echoed: cut to its last segment (as every path in an API answer), it would read as a model name. */
function pathGiven(): WeitiaoError {
  return new WeitiaoError(
    'not_found',
    'models are named by their registered id, not a path: see `weitiao models list`, or register a model directory with `weitiao models add <dir> --name <id>` / 模型须使用已注册的名称而非路径，请先用 weitiao models add 注册',
    { param: 'model' },
  );
}

function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

// ------------------------------------------------------------------------------------------ base models

// `name` or `org/name`: each part starts with a letter or digit; no `..`, no `:` (fine-tuned ids use it).
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)?$/;

/** Checks a name a base model will be stored under (`models/<name>`). */
export function validateModelName(name: string, param = 'name'): void {
  if (!NAME.test(name) || name.split('/').some((part) => part.includes('..'))) {
    throw new WeitiaoError(
      'invalid_request',
      `invalid model name '${name}': use letters, digits, '.', '_', '-' (and one '/' as in org/name) / 模型名称无效`,
      { param },
    );
  }
}

function requireNewName(ctx: Context, name: string, overwrite: boolean): void {
  if (overwrite) {
    // Fine-tunes of the old weights would silently load onto new ones.
    const dependents = ctx.db.prepare('SELECT id FROM models WHERE base_model = ?').all(name) as { id: string }[];
    if (dependents.length) {
      throw new WeitiaoError(
        'conflict',
        `cannot replace '${name}': ${dependents.map((d) => `'${d.id}'`).join(', ')} were trained on it / 无法替换 '${name}'，已有模型基于它训练`,
        { param: 'name' },
      );
    }
    return;
  }
  if (getRow(ctx, name)) {
    throw new WeitiaoError(
      'conflict',
      `model '${name}' already exists; pick another name or delete it first / 模型 '${name}' 已存在，请换一个名称或先删除`,
      { param: 'name' },
    );
  }
}

export interface CreateTinyModelOptions {
  name: string;
  /** Text files whose lines train the tokenizer (a CSV of the task's data is ideal). */
  corpusFiles: string[];
  architecture?: 'qwen2' | 'llama';
  hiddenSize?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  /** Default: 4 × hiddenSize, the usual ratio. */
  intermediateSize?: number;
  vocabSize?: number;
  maxPositionEmbeddings?: number;
  chatTemplate?: CreateTinyRequest['chat_template'];
  /** A real model's config.json (or its directory) whose shapes to copy. */
  configFrom?: string | null;
  seed?: number;
  /** Replace a model of the same name. */
  overwrite?: boolean;
  onProgress?: (progress: { phase: string; current: number; total: number; message?: string }) => void;
  signal?: AbortSignal;
}

/** Builds a random-weight model with a tokenizer trained on the corpus into `models/<name>` and registers it. */
export async function createTinyModel(ctx: Context, options: CreateTinyModelOptions): Promise<ModelObject> {
  validateModelName(options.name);
  requireNewName(ctx, options.name, options.overwrite ?? false);
  if (!options.corpusFiles.length) {
    throw new WeitiaoError('invalid_request', 'at least one corpus file is needed to train the tokenizer / 至少需要一个语料文件', {
      param: 'corpus_files',
    });
  }
  const corpus = options.corpusFiles.map((f) => path.resolve(f));
  for (const f of corpus) {
    if (!existsSync(f)) throw new WeitiaoError('invalid_file', `corpus file not found: ${f} / 找不到语料文件`, { param: 'corpus_files', file: f });
  }
  const dir = path.join(ctx.home.models, options.name);
  const hidden = options.hiddenSize ?? 128;
  const request = {
    output_dir: dir,
    architecture: options.architecture ?? 'qwen2',
    hidden_size: hidden,
    num_hidden_layers: options.layers ?? 2,
    num_attention_heads: options.heads ?? 4,
    num_key_value_heads: options.kvHeads ?? 2,
    intermediate_size: options.intermediateSize ?? hidden * 4,
    vocab_size: options.vocabSize ?? 4096,
    max_position_embeddings: options.maxPositionEmbeddings ?? 1024,
    corpus_files: corpus,
    chat_template: options.chatTemplate ?? (options.architecture === 'llama' ? 'llama3' : 'chatml'),
    config_from: options.configFrom ? path.resolve(options.configFrom) : null,
    seed: options.seed ?? 0,
  } as const;
  const result = await runEngine('create-tiny', request, {
    signal: options.signal,
    onEvent: (e) => {
      if (e.type === 'progress') {
        const { type: _, ...progress } = e;
        options.onProgress?.(progress);
      }
    },
  });
  const config = readJson(path.join(dir, 'config.json'));
  return registerModel(ctx, {
    id: options.name,
    kind: 'base',
    path: dir,
    source: 'tiny',
    metadata: {
      architecture: config?.model_type ?? request.architecture,
      hidden_size: config?.hidden_size ?? request.hidden_size,
      num_hidden_layers: config?.num_hidden_layers ?? request.num_hidden_layers,
      vocab_size: result.vocab_size,
      parameters: result.parameters,
      chat_template: request.chat_template,
      corpus_files: corpus,
      seed: request.seed,
    },
  });
}

/** Registers an existing Hugging Face model directory (not copied) as a base model. */
export function addLocalModel(ctx: Context, options: { name?: string; path: string; overwrite?: boolean }): ModelObject {
  const dir = path.resolve(expandHome(options.path));
  const name = options.name ?? path.basename(dir);
  validateModelName(name);
  requireNewName(ctx, name, options.overwrite ?? false);
  const problem = checkModelDir(dir);
  if (problem) throw new WeitiaoError('invalid_request', problem, { param: 'path', file: dir });
  const config = readJson(path.join(dir, 'config.json'))!;
  return registerModel(ctx, {
    id: name,
    kind: 'base',
    path: dir,
    source: 'local',
    metadata: { architecture: config.model_type ?? null, hidden_size: config.hidden_size ?? null, num_hidden_layers: config.num_hidden_layers ?? null },
  });
}

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer.model', 'vocab.json', 'tokenizer_config.json'];

/** Why `dir` is not a loadable Hugging Face model directory, or null when it is. */
export function checkModelDir(dir: string): string | null {
  if (!isDir(dir)) return `not a directory: ${dir} / 目录不存在：${dir}`;
  const names = readdirSync(dir);
  if (!names.includes('config.json')) return `${dir} has no config.json / ${dir} 中没有 config.json`;
  const config = readJson(path.join(dir, 'config.json'));
  if (!config) return `${dir}/config.json is not a JSON object / config.json 不是有效的 JSON`;
  if (!names.some((n) => TOKENIZER_FILES.includes(n) || n.endsWith('.tiktoken'))) {
    return `${dir} has no tokenizer (${TOKENIZER_FILES.join(', ')}) / ${dir} 中没有分词器文件`;
  }
  if (!names.some((n) => n.endsWith('.safetensors') || n.endsWith('.bin') || n.endsWith('.safetensors.index.json'))) {
    return `${dir} has no weights (*.safetensors or *.bin) / ${dir} 中没有权重文件`;
  }
  return null;
}

function readJson(file: string): Record<string, any> | null {
  try {
    const value: unknown = JSON.parse(readFileSync(file, 'utf8'));
    return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, any>) : null;
  } catch {
    return null;
  }
}

export interface PullModelOptions extends DownloadRepoOptions {
  /** The registry id (and folder under `models/`); default the repository name, e.g. `Qwen/Qwen2.5-0.5B-Instruct`. */
  name?: string;
}

/**
 * Downloads a model repository from the Hugging Face Hub (or the mirror in `HF_ENDPOINT`) or ModelScope into
 * `models/<repo>` and registers it. Resumable: running it again continues where a broken download stopped.
 */
export async function pullModel(ctx: Context, options: PullModelOptions): Promise<ModelObject> {
  validateModelName(options.repo, 'repo');
  const id = options.name ?? options.repo;
  validateModelName(id);
  const source: HubSource = options.source ?? 'huggingface';
  const existing = getRow(ctx, id);
  if (existing && existing.source !== source) {
    throw new WeitiaoError(
      'conflict',
      `model '${id}' already exists (source ${existing.source}); pick another name with --name / 模型 '${id}' 已存在，请用 --name 换一个名称`,
      { param: 'name' },
    );
  }
  const dir = path.join(ctx.home.models, id);
  const pulled = await downloadRepo(dir, { ...options, source });
  const problem = checkModelDir(dir);
  if (problem) throw new WeitiaoError('internal_error', `the pulled repository is not loadable: ${problem}`);
  const config = readJson(path.join(dir, 'config.json'))!;
  return registerModel(ctx, {
    id,
    kind: 'base',
    path: dir,
    source,
    owned_by: options.repo.includes('/') ? options.repo.split('/')[0] : source,
    metadata: {
      repo: options.repo,
      endpoint: pulled.endpoint,
      revision: pulled.revision,
      commit: pulled.commit,
      architecture: config.model_type ?? null,
      files: pulled.files,
      bytes: pulled.files.reduce((sum, f) => sum + f.size, 0),
    },
  });
}
