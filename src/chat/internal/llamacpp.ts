/**
 * The llama.cpp serving backend, in this process (node-llama-cpp). Each replica is one LlamaContext with
 * `parallel` sequences; llama.cpp decodes the tokens of all busy sequences of a context in one batch, so
 * concurrent requests advance together instead of one after another. Requests queue for a free sequence
 * (first come, first served); a request with `n` choices takes n sequences. A LoRA deployment's contexts
 * carry its adapter GGUF over the shared base model (loadGguf loads each file once per process), so
 * several fine-tunes of one base are served concurrently from one copy of the base weights.
 */
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';
import { WeitiaoError } from '../../errors.js';
import { chatPromptTokens } from '../../llamacpp/chat-template.js';
import { holdGguf, loadGguf } from '../../llamacpp/index.js';
import { sumUsage, type Backend, type ChoiceOutput, type GenerationHooks, type GenerationRequest, type GenerationResult, type TokenLogprob } from './backend.js';

export interface LlamaCppOptions {
  /** The model's GGUF, or the base model's when `lora` is set. */
  gguf: string;
  /** A LoRA adapter GGUF applied on `gguf` (llama.cpp's --lora). */
  lora: string | null;
  replicas: number;
  /** Sequences decoded together per replica. */
  parallel: number;
  /** Tokens per sequence (prompt + answer); null: the model's training context, at most DEFAULT_CONTEXT. */
  contextSize: number | null;
  /** Threads per context; null: WEITIAO_LLAMA_THREADS, else 1 for a small model and llama.cpp's choice (the cores) otherwise. */
  threads: number | null;
}

/** Below this size a matrix product is over before threads could share it: one thread decodes fastest. */
const SMALL_MODEL_BYTES = 64 * 1024 * 1024;

function threadsFor(model: LlamaModel, configured: number | null): number | undefined {
  const env = Number(process.env.WEITIAO_LLAMA_THREADS);
  if (configured) return configured;
  if (Number.isInteger(env) && env > 0) return env;
  return model.size < SMALL_MODEL_BYTES ? 1 : undefined;
}

/** Per-sequence context when none is configured: enough for chat, small enough for 16 sequences of KV cache. */
const DEFAULT_CONTEXT = 2048;
/** What OpenAI reports for a probability that underflows. */
const MIN_LOGPROB = -9999;

interface Waiter {
  resolve: (sequence: LlamaContextSequence) => void;
  reject: (error: unknown) => void;
}

export class LlamaCppBackend implements Backend {
  readonly name = 'llamacpp';
  readonly #model: LlamaModel;
  readonly #contexts: LlamaContext[];
  readonly #free: LlamaContextSequence[];
  readonly #waiting: Waiter[] = [];
  /** Keeps the shared model loaded while this backend uses it (the export check unloads what it loaded). */
  readonly #unhold: () => void;
  #closed = false;

  private constructor(model: LlamaModel, contexts: LlamaContext[], release: () => void) {
    this.#model = model;
    this.#contexts = contexts;
    this.#unhold = release;
    this.#free = contexts.flatMap((c) => Array.from({ length: c.totalSequences }, () => c.getSequence()));
  }

  /** Loads the GGUF (shared if already loaded) and creates the replicas' contexts. */
  static async load(options: LlamaCppOptions): Promise<LlamaCppBackend> {
    const release = holdGguf(options.gguf);
    let model: LlamaModel;
    try {
      model = await loadGguf(options.gguf);
    } catch (e) {
      release();
      throw e;
    }
    const contextSize = options.contextSize ?? Math.min(model.trainContextSize, DEFAULT_CONTEXT);
    const contexts: LlamaContext[] = [];
    try {
      for (let r = 0; r < options.replicas; r++) {
        contexts.push(
          await model.createContext({
            sequences: options.parallel,
            contextSize,
            threads: threadsFor(model, options.threads),
            ...(options.lora ? { lora: { adapters: [{ filePath: options.lora }] } } : {}),
            failedCreationRemedy: false,
          }),
        );
      }
    } catch (e) {
      await Promise.all(contexts.map((c) => c.dispose()));
      release();
      throw new WeitiaoError('invalid_request', `llama.cpp could not create a context for ${options.lora ?? options.gguf}: ${(e as Error).message} / 无法创建 llama.cpp 上下文`, {
        param: options.lora ? 'lora' : 'gguf',
        cause: e,
      });
    }
    return new LlamaCppBackend(model, contexts, release);
  }

  /** Tokens one sequence holds: the prompt and the answer together. */
  get contextSize(): number {
    return this.#contexts[0].contextSize;
  }

  validate(request: GenerationRequest): void {
    this.#prompt(request);
  }

  /** The request's prompt tokens and how many answer tokens fit after them; context_length_exceeded when they do not. */
  #prompt(request: GenerationRequest): { prompt: Token[]; maxTokens: number } {
    const prompt = chatPromptTokens(this.#model, request.messages);
    const room = this.contextSize - prompt.length;
    if (room < 1 || (request.maxTokens != null && request.maxTokens > room)) {
      const asked = request.maxTokens == null ? '' : ` + ${request.maxTokens} max_tokens`;
      throw new WeitiaoError(
        'context_length_exceeded',
        `this model's context is ${this.contextSize} tokens; the messages are ${prompt.length} tokens${asked}. Shorten the messages or lower max_tokens / ` +
          `超出模型上下文长度（${this.contextSize} 个 token）：消息 ${prompt.length} 个 token`,
        { param: 'messages' },
      );
    }
    return { prompt, maxTokens: request.maxTokens ?? room };
  }

  async generate(request: GenerationRequest, hooks: GenerationHooks = {}): Promise<GenerationResult> {
    const { prompt, maxTokens } = this.#prompt(request);
    // One failing choice stops its siblings; the caller's abort stops them all.
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    hooks.signal?.addEventListener('abort', onAbort, { once: true });
    if (hooks.signal?.aborted) stop.abort();
    try {
      const runs = Array.from({ length: request.n }, (_, index) =>
        this.#choice(index, prompt, maxTokens, request, hooks, stop.signal).catch((e: unknown) => {
          stop.abort();
          throw e;
        }),
      );
      const outputs = await Promise.all(runs);
      if (hooks.signal?.aborted) throw cancelled();
      return { choices: outputs.map((o) => o.choice), usage: sumUsage(prompt.length, outputs.map((o) => o.tokens)) };
    } finally {
      hooks.signal?.removeEventListener('abort', onAbort);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const w of this.#waiting.splice(0)) w.reject(new WeitiaoError('engine_unavailable', 'the deployment was stopped / 部署已停止'));
    await Promise.all(this.#contexts.map((c) => c.dispose()));
    this.#unhold();
  }

  /** One choice on its own sequence: the prompt (reusing what the sequence already holds of it), then tokens until a stop. */
  async #choice(
    index: number,
    prompt: Token[],
    maxTokens: number,
    request: GenerationRequest,
    hooks: GenerationHooks,
    signal: AbortSignal,
  ): Promise<{ choice: ChoiceOutput; tokens: number }> {
    const sequence = await this.#acquire(signal);
    try {
      // A shared system prompt stays in the KV cache between requests; one token is always evaluated for logits.
      const keep = Math.min(sequence.compareContextTokens(prompt).firstDifferentIndex, prompt.length - 1);
      if (sequence.nextTokenIndex > keep) await sequence.eraseContextTokenRanges([{ start: keep, end: sequence.nextTokenIndex }]);

      const text = new TextAssembler(this.#model, request.stop);
      const logprobs: TokenLogprob[] | null = request.logprobs ? [] : null;
      const pending: { end: number; entry: TokenLogprob }[] = [];
      const flush = (upTo: number): TokenLogprob[] | null => {
        if (!logprobs) return null;
        const out: TokenLogprob[] = [];
        while (pending.length && pending[0].end <= upTo) out.push(pending.shift()!.entry);
        logprobs.push(...out);
        return out;
      };
      let generated = 0;
      let finish: 'stop' | 'length' = 'length';
      const seed = request.seed == null ? undefined : request.seed + index; // n choices must differ
      const steps = sequence.evaluateWithMetadata(
        prompt.slice(keep),
        { confidence: request.logprobs, probabilities: request.logprobs && request.topLogprobs > 0 },
        { temperature: request.temperature, topP: request.topP, seed, yieldEogToken: true },
      );
      for await (const step of steps as AsyncIterable<{ token: Token; confidence?: number; probabilities?: Map<Token, number> }>) {
        if (signal.aborted) break;
        generated++;
        if (this.#model.isEogToken(step.token)) {
          // Counted in usage like any generated token, so it has its logprob entry too (as vLLM reports it).
          if (logprobs) pending.push({ end: text.length, entry: this.#logprob(step, request.topLogprobs) });
          finish = 'stop';
          break;
        }
        const piece = text.push(step.token);
        if (logprobs) pending.push({ end: text.length, entry: this.#logprob(step, request.topLogprobs) });
        if (piece.stopped) {
          finish = 'stop';
          break;
        }
        if (piece.delta) hooks.onDelta?.(index, piece.delta, flush(text.emitted));
        if (generated >= maxTokens) break;
      }
      if (signal.aborted) throw cancelled();
      const rest = text.finish();
      const last = flush(text.emitted);
      if (rest || (last && last.length)) hooks.onDelta?.(index, rest, last);
      return { choice: { index, text: text.final, finish_reason: finish, logprobs }, tokens: generated };
    } finally {
      this.#release(sequence);
    }
  }

  #logprob(step: { token: Token; confidence?: number; probabilities?: Map<Token, number> }, top: number): TokenLogprob {
    const entry = (token: Token, p: number | undefined) => {
      const text = this.#model.detokenize([token], true);
      return { token: text, logprob: p && p > 0 ? Math.max(Math.log(p), MIN_LOGPROB) : MIN_LOGPROB, bytes: [...Buffer.from(text, 'utf8')] };
    };
    const alternatives = step.probabilities ? [...step.probabilities.entries()].slice(0, top).map(([t, p]) => entry(t, p)) : [];
    return { ...entry(step.token, step.confidence), top_logprobs: alternatives };
  }

  #acquire(signal: AbortSignal): Promise<LlamaContextSequence> {
    if (this.#closed) return Promise.reject(new WeitiaoError('engine_unavailable', 'the deployment was stopped / 部署已停止'));
    const free = this.#free.pop();
    if (free) return Promise.resolve(free);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (s) => (signal.removeEventListener('abort', onAbort), resolve(s)),
        reject: (e) => (signal.removeEventListener('abort', onAbort), reject(e)),
      };
      const onAbort = () => {
        const i = this.#waiting.indexOf(waiter);
        if (i >= 0) this.#waiting.splice(i, 1);
        reject(cancelled());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  #release(sequence: LlamaContextSequence): void {
    const next = this.#waiting.shift();
    if (next) next.resolve(sequence);
    else this.#free.push(sequence);
  }
}

function cancelled(): WeitiaoError {
  return new WeitiaoError('cancelled', 'the request was cancelled / 请求已取消');
}

// Qwen3 opens every answer with an empty reasoning block; the engine leaves it out of answers, and so does serving.
const EMPTY_REASONING = '<think>\n\n</think>\n\n';

/**
 * Generated tokens → text pieces safe to send: a piece never ends inside a UTF-8 character that the next
 * token completes, nor inside what may turn out to be a stop string; a stop string ends the text before it.
 * An empty reasoning block at the very start is left out (as the engine does).
 */
class TextAssembler {
  readonly #tokens: Token[] = [];
  #text = '';
  /** Characters of an empty reasoning block left out; null while the text could still be one. */
  #skip: number | null = null;
  /** Characters already handed out. */
  emitted = 0;
  final = '';

  constructor(
    private readonly model: LlamaModel,
    private readonly stops: string[],
  ) {}

  get length(): number {
    return this.#text.length;
  }

  push(token: Token): { delta: string; stopped: boolean } {
    this.#tokens.push(token);
    const decoded = this.model.detokenize(this.#tokens);
    if (this.#skip === null) {
      if (EMPTY_REASONING.startsWith(decoded) && decoded !== EMPTY_REASONING) return { delta: '', stopped: false };
      this.#skip = decoded.startsWith(EMPTY_REASONING) ? EMPTY_REASONING.length : 0;
    }
    this.#text = decoded.slice(this.#skip);
    const from = Math.max(0, this.emitted - Math.max(0, ...this.stops.map((s) => s.length)));
    let cut = -1;
    for (const s of this.stops) {
      const at = this.#text.indexOf(s, from);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.final = this.#text.slice(0, cut); // finish() hands out what is left of it
      return { delta: '', stopped: true };
    }
    let safe = this.#text.length;
    while (safe > this.emitted && this.#text[safe - 1] === '\uFFFD') safe--; // a character still being spelled out
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, safe - this.emitted); k > 0; k--) {
        if (this.#text.slice(safe - k, safe) === s.slice(0, k)) {
          safe -= k;
          break;
        }
      }
    }
    const delta = safe > this.emitted ? this.#text.slice(this.emitted, safe) : '';
    this.emitted = Math.max(this.emitted, safe);
    this.final = this.#text;
    return { delta, stopped: false };
  }

  /** What is still held back when generation ends: all of it goes out now. */
  finish(): string {
    if (this.#skip === null) this.final = this.model.detokenize(this.#tokens); // ended inside what looked like a reasoning block: it was text
    if (this.final.length <= this.emitted) return '';
    const rest = this.final.slice(this.emitted);
    this.emitted = this.final.length;
    return rest;
  }
}
