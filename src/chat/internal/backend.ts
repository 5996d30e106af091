/**
 * What every serving backend (the engine's warm process, llama.cpp in-process) is asked and answers. The
 * vLLM proxy speaks OpenAI's wire objects instead (internal/vllm.ts): it passes requests through.
 */

export interface GenerationMessage {
  role: 'system' | 'developer' | 'user' | 'assistant' | 'tool';
  content: string;
}

/** A chat request after validation: every default resolved, OpenAI's names turned into settings. */
export interface GenerationRequest {
  messages: GenerationMessage[];
  /** null: as many as the context leaves room for (llama.cpp) or the engine's default. */
  maxTokens: number | null;
  temperature: number;
  topP: number;
  stop: string[];
  seed: number | null;
  /** Choices to generate; each gets its own sequence (llama.cpp: concurrently). */
  n: number;
  logprobs: boolean;
  /** Alternatives per token in `logprobs` (0-20). */
  topLogprobs: number;
}

/** OpenAI's `logprobs.content[]` entry. */
export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
  top_logprobs: { token: string; logprob: number; bytes: number[] | null }[];
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export type FinishReason = 'stop' | 'length';

export interface ChoiceOutput {
  index: number;
  text: string;
  finish_reason: FinishReason;
  logprobs: TokenLogprob[] | null;
}

export interface GenerationResult {
  choices: ChoiceOutput[];
  usage: Usage;
}

export interface GenerationHooks {
  /** A piece of choice `index`'s text (the pieces concatenate to its text) and the logprobs of the tokens it completes. */
  onDelta?: (index: number, text: string, logprobs: TokenLogprob[] | null) => void;
  signal?: AbortSignal;
}

export interface Backend {
  readonly name: 'engine' | 'llamacpp';
  /** Throws what `generate` would refuse before its first token (context overflow, unsupported options), so a stream can still answer 400. */
  validate(request: GenerationRequest): void;
  generate(request: GenerationRequest, hooks?: GenerationHooks): Promise<GenerationResult>;
  /** Frees what the backend holds (contexts, sequences); pending requests fail. */
  close(): Promise<void>;
}

/** Prompt and completion counts summed over choices (the prompt counted once, as OpenAI does). */
export function sumUsage(promptTokens: number, completionTokens: number[]): Usage {
  const completion = completionTokens.reduce((a, b) => a + b, 0);
  return { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion };
}
