/**
 * `weitiao data synthesize`: new chat examples from a task description and a few seed examples. Each
 * request is one example; diversity comes from rotating topic and persona hints, rotating seeds and a
 * per-request sampling seed. Every answer goes through the normal chat checks, then a near-duplicate
 * filter against the seeds and the examples kept so far. Requests are numbered, so a restarted run asks
 * only for the numbers it has no answer for; rejected answers are replaced by new numbers until `n`
 * examples are kept or `max_requests` is reached.
 */
import { WeitiaoError } from '../../errors.js';
import type { ChatExample } from '../../engine/index.js';
import { checkExample } from '../internal/check.js';
import type { ChatAnswer, ChatMessage, ChatRequest, TeacherClient } from './endpoint.js';
import { NearDuplicateIndex } from '../internal/near-duplicates.js';
import type { Unit, UnitOutcome } from './run.js';

export const DEFAULT_PERSONAS = [
  'a first-time user 第一次使用的新用户',
  'an impatient customer 着急的顾客',
  'a detail-minded expert 注重细节的行家',
  'a student 学生',
  'an elderly person 老年人',
  'a non-native speaker 非母语使用者',
];

export interface SynthesizeOptions {
  task: string;
  seeds: ChatExample[];
  n: number;
  topics?: string[];
  personas?: string[];
  /** System message of every generated example (default: the seeds' own, when they all share one). */
  system?: string;
  /** Seeds shown per request. */
  seeds_per_request?: number;
  max_tokens?: number;
  temperature?: number;
  /** Base of the per-request sampling seed. */
  seed?: number;
  /** Jaccard of character 3-shingles at or above which a new example is dropped. */
  near_dup_threshold?: number;
  /** Stop after this many requests even when fewer than n were kept (default 2n + 10). */
  max_requests?: number;
}

function turn(example: ChatExample, role: 'user' | 'assistant'): string {
  const found = role === 'assistant' ? [...example.messages].reverse().find((m) => m.role === role) : example.messages.find((m) => m.role === role);
  return found?.content ?? '';
}

export function commonSystem(seeds: ChatExample[]): string | undefined {
  const systems = new Set(seeds.map((s) => s.messages.find((m) => m.role === 'system')?.content ?? ''));
  const [only] = [...systems];
  return systems.size === 1 && only ? only : undefined;
}

/** The request for example number `i` (a pure function of the options and i, so a resumed run plans the same). */
export function synthesisRequest(o: SynthesizeOptions, i: number): ChatRequest {
  const personas = o.personas?.length ? o.personas : DEFAULT_PERSONAS;
  const persona = personas[i % personas.length];
  const topic = o.topics?.length ? o.topics[Math.floor(i / personas.length) % o.topics.length] : undefined;
  const k = Math.min(o.seeds_per_request ?? 3, o.seeds.length);
  const shown = Array.from({ length: k }, (_, j) => o.seeds[(i * k + j) % o.seeds.length]);
  const examples = shown.map((s) => JSON.stringify({ user: turn(s, 'user'), assistant: turn(s, 'assistant') })).join('\n');
  const messages: ChatMessage[] = [
    {
      role: 'system',
      content: 'You write new training examples for fine-tuning a chat model. 你为微调聊天模型编写新的训练样本。',
    },
    {
      role: 'user',
      content:
        `Task 任务: ${o.task}\n\nExamples 示例:\n${examples}\n\n` +
        `Write one new example, clearly different from the examples, as asked by ${persona}${topic ? `, about ${topic}` : ''}. ` +
        `Reply with only a JSON object {"user": "...", "assistant": "..."}.\n` +
        `请写一条与示例明显不同的新样本${topic ? `（主题：${topic}）` : ''}，只输出上述 JSON 对象。 (#${i + 1})`,
    },
  ];
  return { messages, max_tokens: o.max_tokens ?? 512, temperature: o.temperature ?? 0.9, seed: (o.seed ?? 42) + i };
}

/** `{"user", "assistant"}` from an answer that may wrap the JSON in prose or a code fence. */
export function parseGenerated(content: string): { user: string; assistant: string } | null {
  const start = content.indexOf('{');
  const end = content.lastIndexOf('}');
  if (start < 0 || end <= start) return null;
  try {
    const v = JSON.parse(content.slice(start, end + 1)) as Record<string, unknown>;
    if (typeof v.user === 'string' && typeof v.assistant === 'string' && v.user.trim() && v.assistant.trim()) return { user: v.user.trim(), assistant: v.assistant.trim() };
  } catch {
    /* not JSON: rejected below */
  }
  return null;
}

export function checkSynthesizeOptions(o: SynthesizeOptions): void {
  if (!o.task.trim()) throw new WeitiaoError('invalid_request', 'task: describe the task / 请描述任务', { param: 'task' });
  if (!Number.isInteger(o.n) || o.n < 1) throw new WeitiaoError('invalid_request', 'n must be a positive integer / n 须为正整数', { param: 'n' });
  if (o.seeds.length === 0) throw new WeitiaoError('invalid_request', 'seeds: give at least one example / 至少给出一条种子样本', { param: 'seeds' });
}

/** Planning and the work of one numbered request; `index` holds the seeds and every example kept. */
export function synthesisPlan(o: SynthesizeOptions, teacher: TeacherClient) {
  const system = o.system ?? commonSystem(o.seeds);
  const index = new NearDuplicateIndex(o.near_dup_threshold ?? 0.7);
  for (const s of o.seeds) index.add(turn(s, 'user'));
  const unit = (i: number): Unit => ({ key: `ex:${i}`, planned: [synthesisRequest(o, i)] });
  const work = async (u: Unit, ask: (i: number, c: TeacherClient, r: ChatRequest) => Promise<ChatAnswer>): Promise<UnitOutcome> => {
    const request = u.planned[0];
    const answer = await ask(0, teacher, request);
    const generated = parseGenerated(answer.content);
    if (!generated) return { outcome: 'rejected', reason: 'answer is not a {"user", "assistant"} JSON object', detail: { answer: answer.content.slice(0, 200) } };
    const example = {
      messages: [...(system ? [{ role: 'system', content: system }] : []), { role: 'user', content: generated.user }, { role: 'assistant', content: generated.assistant }],
    };
    const problems = checkExample(example).problems.filter((p) => p.severity === 'error');
    if (problems.length) return { outcome: 'rejected', reason: `invalid example: ${problems[0].field}: ${problems[0].message}` };
    return {
      outcome: 'written',
      line: example,
      provenance: { source: 'teacher', teacher: teacher.describe(), prompt: request.messages, seed: request.seed, created_at: new Date().toISOString() },
    };
  };
  /** Called in completion order just before a line is appended (and for lines already written on resume). */
  const accept = (line: unknown): string | null => {
    const user = turn(line as ChatExample, 'user');
    const dup = index.find(user);
    if (dup) return `near duplicate (Jaccard ${dup.similarity.toFixed(2)}) of ${dup.index < o.seeds.length ? `seed ${dup.index + 1}` : `kept example ${dup.index - o.seeds.length + 1}`}`;
    index.add(user);
    return null;
  };
  const remember = (line: unknown) => index.add(turn(line as ChatExample, 'user'));
  return { unit, work, accept, remember, maxRequests: o.max_requests ?? 2 * o.n + 10 };
}
