/** Base models: a tiny random-weight one built by the engine, a local directory, or one pulled from a hub. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { runEngine, type CreateTinyRequest } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { downloadRepo, type DownloadRepoOptions, type HubSource } from './internal/hub.js';
import { buildTinyCached } from './internal/tiny-cache.js';
import { expandHome, getRow, isDir, registerModel } from './registry.js';
import type { ModelObject } from './wire.js';

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
  // Through the test runner's build cache when WEITIAO_TINY_CACHE is set (./internal/tiny-cache.ts), else the engine.
  const result = await buildTinyCached(request, (req) =>
    runEngine('create-tiny', req, {
      signal: options.signal,
      onEvent: (e) => {
        if (e.type === 'progress') {
          const { type: _, ...progress } = e;
          options.onProgress?.(progress);
        }
      },
    }),
  );
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
