/**
 * The post-export check: the same conversations through the trained model (the engine, greedy) and through
 * the exported artifact (a GGUF through llama.cpp itself, an HF folder through the engine), side by side.
 *
 * GGUF prompts are rendered with the GGUF's own `tokenizer.chat_template` and decoding stops at the GGUF's
 * own end-of-generation tokens, so a wrong template or stop token in the file shows up as different answers.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Token } from 'node-llama-cpp';
import { detectLabelSet } from '../../data/index.js';
import { runEngine } from '../../engine/index.js';
import { loadGguf, unloadGguf } from '../../llamacpp/index.js';
import { renderJinja, renderOllama, type ChatMessage } from './ollama.js';

/** Same as the engine's generate-mode evaluation: enough for a label or a short sentence. */
const MIN_NEW_TOKENS = 64;
// Qwen3 opens a reply with an empty reasoning block; the engine leaves it out of answers, so does the check.
const EMPTY_REASONING = '<think>\n\n</think>\n\n';

export interface CheckDifference {
  index: number;
  /** The last user message of the conversation. */
  prompt: string;
  expected: string;
  engine: string;
  artifact: string;
}

export interface TemplateCheck {
  status: 'passed' | 'failed';
  /** The first conversation whose Ollama rendering differs from the Jinja one. */
  first_difference: { index: number; jinja: string; ollama: string } | null;
}

/** The check's report, stored with the export and shown by every shell. */
export interface CheckReport {
  status: 'passed' | 'failed' | 'skipped';
  /** Why, in English / 中文. */
  reason: string;
  /** The data's file name (or file id); null when there was none. */
  data: string | null;
  n: number;
  /** `labels`: the answers form a small label set; `generation`: free text, compared exactly. */
  mode: 'labels' | 'generation' | null;
  labels: string[] | null;
  /** Share of examples where both sides give the same answer. */
  agreement: number | null;
  threshold: number;
  engine: { backend: 'engine'; accuracy: number | null };
  artifact: { backend: 'llama.cpp' | 'engine'; accuracy: number | null };
  first_difference: CheckDifference | null;
  template: TemplateCheck | null;
  seconds: number;
}

export interface CheckInput {
  /** The chat JSONL file (the last message of each line is the expected answer). */
  dataFile: string;
  /** What the report calls the data (a file id or name, never a server path). */
  dataName: string;
  maxExamples: number;
  threshold: number;
  /** The trained model as the engine loads it. */
  trained: { basePath: string; adapterPath: string | null };
  artifact: { kind: 'gguf'; file: string } | { kind: 'hf'; model: string; adapter: string | null };
  /** Ollama exports: the Modelfile's TEMPLATE and SYSTEM, compared with the Jinja rendering. */
  ollama?: { template: string; system: string | null; chatTemplate: string };
  onProgress?: (phase: string, current: number, total: number) => void;
  signal?: AbortSignal;
}

/** Share with 4 decimals; 0 for no examples. */
const share = (k: number, n: number) => (n ? Math.round((k / n) * 1e4) / 1e4 : 0);

/** A report that says the check did not run, and why. */
export function skippedCheck(reason: string, threshold: number, dataName: string | null = null): CheckReport {
  return {
    status: 'skipped',
    reason,
    data: dataName,
    n: 0,
    mode: null,
    labels: null,
    agreement: null,
    threshold,
    engine: { backend: 'engine', accuracy: null },
    artifact: { backend: 'llama.cpp', accuracy: null },
    first_difference: null,
    template: null,
    seconds: 0,
  };
}

/** Reads up to `max` conversations as the engine's evaluate reads them (blank lines skipped). */
export function readConversations(file: string, max: number): ChatMessage[][] {
  const out: ChatMessage[][] = [];
  for (const line of readFileSync(file, 'utf8').replace(/^\uFEFF/, '').split('\n')) {
    if (!line.trim()) continue;
    const messages = (JSON.parse(line) as { messages: ChatMessage[] }).messages.map((m) => ({ role: m.role, content: m.content }));
    out.push(messages);
    if (out.length >= max) break;
  }
  return out;
}

/** Runs both sides on the data and compares them. */
export async function runCheck(input: CheckInput): Promise<CheckReport> {
  const started = Date.now();
  const conversations = readConversations(input.dataFile, input.maxExamples);
  const expected = conversations.map((c) => c.at(-1)?.content ?? '');
  const labels = detectLabelSet(expected);

  input.onProgress?.('check: trained model', 0, conversations.length);
  const trained = await runEngine(
    'evaluate',
    { model: input.trained.basePath, adapter: input.trained.adapterPath, data_file: input.dataFile, labels: null, max_examples: input.maxExamples },
    { signal: input.signal, onEvent: (e) => e.type === 'progress' && input.onProgress?.('check: trained model', e.current, e.total) },
  );
  const engineAnswers = trained.predictions.map((p) => p.predicted);

  let artifactAnswers: string[];
  if (input.artifact.kind === 'gguf') {
    artifactAnswers = await greedyGguf(input.artifact.file, conversations, expected, (i) =>
      input.onProgress?.('check: llama.cpp', i, conversations.length),
      input.signal,
    );
  } else {
    input.onProgress?.('check: exported model', 0, conversations.length);
    const exported = await runEngine(
      'evaluate',
      { model: input.artifact.model, adapter: input.artifact.adapter, data_file: input.dataFile, labels: null, max_examples: input.maxExamples },
      { signal: input.signal, onEvent: (e) => e.type === 'progress' && input.onProgress?.('check: exported model', e.current, e.total) },
    );
    artifactAnswers = exported.predictions.map((p) => p.predicted);
  }

  const n = conversations.length;
  let same = 0;
  let first: CheckDifference | null = null;
  for (let i = 0; i < n; i++) {
    if (engineAnswers[i] === artifactAnswers[i]) same++;
    else
      first ??= {
        index: i,
        prompt: conversations[i].filter((m) => m.role === 'user').at(-1)?.content ?? '',
        expected: expected[i],
        engine: engineAnswers[i],
        artifact: artifactAnswers[i],
      };
  }
  const correct = (answers: string[]) => share(answers.filter((a, i) => a === expected[i]).length, n);
  const agreement = share(same, n);
  const template = input.ollama ? checkTemplate(input.ollama, conversations) : null;

  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const what = labels ? 'label agreement / 标签一致率' : 'exact-match agreement / 完全一致率';
  let status: CheckReport['status'] = 'passed';
  let reason = `${what} ${pct(agreement)} ≥ ${pct(input.threshold)} on ${n} examples / 共 ${n} 条样本`;
  if (agreement < input.threshold) {
    status = 'failed';
    reason =
      `the export answers differently from the trained model: ${pct(agreement)} agreement on ${n} examples, below the threshold ${pct(input.threshold)}` +
      ` / 导出的模型与训练好的模型回答不一致：一致率 ${pct(agreement)}，低于阈值 ${pct(input.threshold)}`;
  } else if (template?.status === 'failed') {
    status = 'failed';
    reason =
      `the Modelfile TEMPLATE renders example ${template.first_difference!.index} differently from the model's chat template` +
      ` / Modelfile 的 TEMPLATE 与模型的对话模板渲染结果不同（第 ${template.first_difference!.index} 条）`;
  }
  return {
    status,
    reason,
    data: input.dataName,
    n,
    mode: labels ? 'labels' : 'generation',
    labels,
    agreement,
    threshold: input.threshold,
    engine: { backend: 'engine', accuracy: correct(engineAnswers) },
    artifact: { backend: input.artifact.kind === 'gguf' ? 'llama.cpp' : 'engine', accuracy: correct(artifactAnswers) },
    first_difference: first,
    template,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  };
}

/**
 * Greedy answers from a GGUF through llama.cpp: prompts rendered with the file's own chat template,
 * decoding until one of the file's end-of-generation tokens (or the engine's token limit).
 */
export async function greedyGguf(
  file: string,
  conversations: ChatMessage[][],
  expected: string[],
  onProgress?: (done: number) => void,
  signal?: AbortSignal,
): Promise<string[]> {
  const model = await loadGguf(file);
  try {
    const meta = model.fileInfo.metadata as { tokenizer?: { chat_template?: string } };
    const chatTemplate = meta.tokenizer?.chat_template;
    if (!chatTemplate) throw new Error(`${path.basename(file)} has no tokenizer.chat_template / GGUF 中没有对话模板`);
    const prompts = conversations.map((c) =>
      model.tokenize(
        renderJinja(chatTemplate, c.slice(0, -1), {
          addGenerationPrompt: true,
          bosToken: model.tokens.bosString ?? '',
          eosToken: model.tokens.eosString ?? '',
        }),
        true,
      ),
    );
    const longest = Math.max(...expected.map((e) => model.tokenize(e).length));
    const maxTokens = Math.max(MIN_NEW_TOKENS, longest + 8);
    const contextSize = Math.min(model.trainContextSize, Math.max(...prompts.map((p) => p.length)) + maxTokens + 8);
    // A small model's matrix products end before threads could share them, and idle llama.cpp threads spin:
    // one thread decodes fastest there (as the llama.cpp serving backend does).
    const threads = Number(process.env.WEITIAO_LLAMA_THREADS) || (model.size < 64 * 2 ** 20 ? 1 : os.availableParallelism());
    const context = await model.createContext({ contextSize, sequences: 1, threads });
    try {
      const sequence = context.getSequence();
      const answers: string[] = [];
      for (const [i, prompt] of prompts.entries()) {
        if (signal?.aborted) throw new Error('cancelled');
        await sequence.clearHistory();
        const out: Token[] = [];
        for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
          if (model.isEogToken(token)) break;
          out.push(token);
          if (out.length >= maxTokens || prompt.length + out.length >= contextSize) break;
        }
        const text = model.detokenize(out, false);
        answers.push((text.startsWith(EMPTY_REASONING) ? text.slice(EMPTY_REASONING.length) : text).trim());
        onProgress?.(i + 1);
      }
      return answers;
    } finally {
      await context.dispose();
    }
  } finally {
    await unloadGguf(file);
  }
}

/** Renders each conversation's prompt with the Modelfile TEMPLATE (as Ollama would) and with the Jinja template. */
export function checkTemplate(ollama: NonNullable<CheckInput['ollama']>, conversations: ChatMessage[][]): TemplateCheck {
  for (const [index, c] of conversations.entries()) {
    let messages = c.slice(0, -1);
    // Ollama puts the Modelfile's SYSTEM first when the conversation has none: the Jinja side sees the same.
    if (ollama.system && !messages.some((m) => m.role === 'system')) messages = [{ role: 'system', content: ollama.system }, ...messages];
    const jinja = renderJinja(ollama.chatTemplate, messages, { addGenerationPrompt: true });
    const rendered = renderOllama(ollama.template, messages, ollama.system);
    if (jinja !== rendered) return { status: 'failed', first_difference: { index, jinja, ollama: rendered } };
  }
  return { status: 'passed', first_difference: null };
}
