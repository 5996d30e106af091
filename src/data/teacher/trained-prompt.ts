/**
 * The prompt a teacher was fine-tuned on. A weitiao fine-tune (`weitiao serve`) answers best in the shape
 * of its training examples — their system message and the bare text as the user turn — not in the generic
 * label prompt (measured on the demo's waimai teacher: 0.758 agreement with the generic prompt against its
 * 0.862 eval accuracy). The teacher endpoint says so itself: `GET /models/{id}` names the job's training
 * file, `GET /files/{id}/content` gives its first examples. Any other endpoint (Ollama, vLLM, a hosted API)
 * answers those with 404, and labelling keeps the generic prompt.
 */
import { z } from 'zod';
import type { TeacherClient } from './endpoint.js';

export interface TrainedPrompt {
  /** The training file (a file id at the teacher's endpoint). */
  training_file: string;
  /** The system message every sampled training example starts with; null when they have none. */
  system: string | null;
}

/** Training examples read to find the shared system message and the answers. */
const SAMPLE_LINES = 50;

const WeitiaoModel = z.object({
  weitiao: z.object({
    kind: z.string(),
    metadata: z.object({ training_file: z.string().regex(/^file-[0-9a-z]+$/i), label_set: z.unknown().optional() }).passthrough(),
  }),
});

const Example = z.object({ messages: z.array(z.object({ role: z.string(), content: z.string() })).min(2) });

/**
 * The teacher's training prompt when it is a weitiao fine-tune whose training examples all share one
 * prompt shape (one system message or none, then the text) and answer with labels from `labels`;
 * null otherwise (then the generic label prompt is the better guess).
 */
export async function trainedPrompt(teacher: TeacherClient, labels: readonly string[], signal?: AbortSignal): Promise<TrainedPrompt | null> {
  const modelRes = await teacher.get(`models/${encodeURI(teacher.config.model)}`, signal);
  if (!modelRes) return null;
  const model = WeitiaoModel.safeParse(await modelRes.json().catch(() => null));
  if (!model.success || !['fine-tuned', 'checkpoint'].includes(model.data.weitiao.kind)) return null;
  const { training_file, label_set } = model.data.weitiao.metadata;
  const fileRes = await teacher.get(`files/${training_file}/content`, signal);
  if (!fileRes?.body) return null;
  const systems = new Set<string | null>();
  const answers = new Set<string>();
  let read = 0;
  try {
    for await (const line of firstLines(fileRes.body, SAMPLE_LINES)) {
      if (line.trim() === '') continue;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        return null;
      }
      const parsed = Example.safeParse(value);
      if (!parsed.success) return null;
      const m = parsed.data.messages;
      const hasSystem = m[0].role === 'system';
      // One prompt turn (the text) and one answer: a labelling shape. Multi-turn examples are another task.
      if (m.length !== (hasSystem ? 3 : 2) || m.at(-2)!.role !== 'user' || m.at(-1)!.role !== 'assistant') return null;
      systems.add(hasSystem ? m[0].content : null);
      answers.add(m.at(-1)!.content.trim());
      if (++read >= SAMPLE_LINES) break;
    }
  } catch (err) {
    if (signal?.aborted) throw err;
    return null; // the file stopped half-way (timeout, server gone): no prompt to go by
  }
  if (read === 0 || systems.size !== 1) return null;
  // The teacher must have been trained to answer with these labels (its recorded label set when the job kept one).
  const trainedLabels = Array.isArray(label_set) ? label_set.map(String) : [...answers];
  if (!trainedLabels.every((l) => labels.includes(l))) return null;
  return { training_file, system: [...systems][0] };
}

/**
 * The first `max` lines of a response body (a training file may be large: the rest is never downloaded).
 * The reader is cancelled when done, which ends the download; a later timeout then has nothing to abort.
 */
async function* firstLines(body: ReadableStream<Uint8Array>, max: number): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  let given = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      buffered += decoder.decode(value, { stream: !done });
      let at: number;
      while ((at = buffered.indexOf('\n')) >= 0) {
        yield buffered.slice(0, at);
        buffered = buffered.slice(at + 1);
        if (++given >= max) return;
      }
      if (done) {
        if (buffered) yield buffered;
        return;
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}
