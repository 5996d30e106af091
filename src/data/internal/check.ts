/**
 * The checks on chat examples, shared by `validateChatFile` (lines of a JSONL file) and
 * `prepareDataset` (examples it is about to write, located at their source line). The categories and
 * their order follow OpenAI's cookbook ("Data preparation and analysis for chat model fine-tuning"),
 * plus weitiao's own: invalid weights, duplicates, conflicting answers and over-long examples.
 * Every message is bilingual: English first, then Chinese.
 */
import type { ChatExample, ChatMessage } from '../../engine/protocol.js';
import { DigestTable, digest64 } from './digests.js';

export const ALLOWED_ROLES = ['system', 'user', 'assistant', 'tool', 'developer'] as const;
export const ALLOWED_MESSAGE_KEYS = ['role', 'content', 'weight', 'name'] as const;

export type Severity = 'error' | 'warning';

/** A problem before it is located in a file. */
export interface Problem {
  field: string | null;
  code: string;
  severity: Severity;
  message: string;
}

export function problem(code: string, field: string | null, message: string, severity: Severity = 'error'): Problem {
  return { field, code, severity, message };
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'string' ? `'${clip(value)}'` : typeof value === 'object' ? 'an object' : String(value);
}

export function clip(text: string, max = 40): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

export function isObjectValue(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses one JSONL line; returns the value or a `data_type` problem. */
export function parseJsonLine(text: string): { value: unknown } | { problem: Problem } {
  try {
    return { value: JSON.parse(text) };
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    return { problem: problem('data_type', null, `line is not valid JSON (${clip(why, 80)}) / 该行不是有效的 JSON`) };
  }
}

/**
 * Structural checks on one example. Returns every problem found and, when there is none that is an
 * error, the example reduced to what the engine reads (role, content, weight).
 */
export function checkExample(value: unknown): { problems: Problem[]; example: ChatExample | null } {
  const problems: Problem[] = [];
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    problems.push(problem('data_type', null, `example is not a JSON object (found ${describe(value)}) / 样本不是 JSON 对象`));
    return { problems, example: null };
  }
  const messages = (value as { messages?: unknown }).messages;
  if (!Array.isArray(messages)) {
    const what = messages === undefined ? "missing 'messages' list" : `'messages' is not a list (found ${describe(messages)})`;
    problems.push(problem('missing_messages_list', 'messages', `${what} / 缺少 messages 列表`));
    return { problems, example: null };
  }
  if (messages.length === 0) {
    problems.push(problem('missing_messages_list', 'messages', "'messages' is empty / messages 列表为空"));
    return { problems, example: null };
  }

  const out: ChatMessage[] = [];
  let hasAssistant = false;
  messages.forEach((message: unknown, i) => {
    const at = `messages[${i}]`;
    if (typeof message !== 'object' || message === null || Array.isArray(message)) {
      problems.push(problem('data_type', at, `message is not a JSON object (found ${describe(message)}) / 消息不是 JSON 对象`));
      return;
    }
    const m = message as Record<string, unknown>;
    for (const key of ['role', 'content'] as const) {
      if (!(key in m)) problems.push(problem('message_missing_key', `${at}.${key}`, `message is missing '${key}' / 消息缺少 '${key}' 字段`));
    }
    for (const key of Object.keys(m)) {
      if (!(ALLOWED_MESSAGE_KEYS as readonly string[]).includes(key)) {
        problems.push(
          problem(
            'message_unrecognized_key',
            `${at}.${key}`,
            `unrecognized key '${key}' in message (allowed: ${ALLOWED_MESSAGE_KEYS.join(', ')}) / 消息中有无法识别的键 '${key}'`,
          ),
        );
      }
    }
    const role = m.role;
    if ('role' in m && !(typeof role === 'string' && (ALLOWED_ROLES as readonly string[]).includes(role))) {
      problems.push(
        problem(
          'unrecognized_role',
          `${at}.role`,
          `unrecognized role ${describe(role)} (allowed: ${ALLOWED_ROLES.join(', ')}) / 无法识别的角色 ${describe(role)}`,
        ),
      );
    }
    if (role === 'assistant') hasAssistant = true;
    const content = m.content;
    if ('content' in m) {
      if (typeof content !== 'string') {
        problems.push(problem('missing_content', `${at}.content`, `content must be a string, found ${describe(content)} / 内容必须是字符串`));
      } else if (content.trim() === '') {
        problems.push(problem('missing_content', `${at}.content`, 'content is empty / 内容为空'));
      }
    }
    if ('weight' in m) {
      if (m.weight !== 0 && m.weight !== 1) {
        problems.push(problem('invalid_weight', `${at}.weight`, `weight must be 0 or 1, found ${describe(m.weight)} / weight 只能是 0 或 1`));
      } else if (role !== 'assistant') {
        problems.push(problem('invalid_weight', `${at}.weight`, 'weight is only allowed on assistant messages / 只有 assistant 消息可以设置 weight'));
      }
    }
    if (typeof role === 'string' && typeof content === 'string') {
      out.push(m.weight === 0 || m.weight === 1 ? { role: role as ChatMessage['role'], content, weight: m.weight } : { role: role as ChatMessage['role'], content });
    }
  });
  if (!hasAssistant) {
    problems.push(problem('example_missing_assistant_message', 'messages', 'example has no assistant message / 样本缺少 assistant 消息'));
  }
  const valid = !problems.some((p) => p.severity === 'error');
  return { problems, example: valid ? { messages: out } : null };
}

/** The final assistant message's content: the answer a classification task is about. */
export function answerOf(example: ChatExample): string {
  for (let i = example.messages.length - 1; i >= 0; i--) {
    if (example.messages[i].role === 'assistant') return example.messages[i].content;
  }
  return '';
}

/** The messages before the final assistant message: what the model is asked. */
export function promptOf(example: ChatExample): ChatMessage[] {
  for (let i = example.messages.length - 1; i >= 0; i--) {
    if (example.messages[i].role === 'assistant') return example.messages.slice(0, i);
  }
  return example.messages;
}

function canonical(messages: ChatMessage[]): string {
  // Fixed key order, so `{"content":…,"role":…}` and `{"role":…,"content":…}` are the same example.
  return JSON.stringify(messages.map((m) => [m.role, m.content, m.weight ?? null]));
}

/** Distinct examples the duplicate checks remember: past it (~28 MB of tables) later lines are checked against these only. */
export const DUPLICATE_CHECK_LIMIT = 750_000;
/** Distinct answers kept as text for the conflict message (label sets are small; free text is not kept). */
const MAX_KEPT_ANSWERS = 4096;
const MAX_KEPT_ANSWER_CHARS = 64;
const HASHED = 0x80000000;

/**
 * Finds exact duplicates (same messages as an earlier example) and conflicting duplicates (same prompt,
 * different answer). Memory is bounded: 64-bit digests in typed-array tables (digests.ts), at most
 * `limit` distinct examples, and the text of at most 4096 short answers (for the message).
 */
export class DuplicateFinder {
  private readonly examples: DigestTable;
  /** prompt digest → [first line, answer key] */
  private readonly prompts: DigestTable;
  private readonly answerIds = new Map<string, number>();
  private readonly answerTexts: string[] = [];
  private warnedFull = false;

  constructor(
    private readonly conflictSeverity: Severity = 'warning',
    limit = DUPLICATE_CHECK_LIMIT,
  ) {
    this.examples = new DigestTable(limit, 1);
    this.prompts = new DigestTable(limit, 2);
  }

  check(example: ChatExample, line: number): Problem | null {
    const full = digest64(canonical(example.messages));
    const earlier = this.examples.get(full);
    if (earlier !== null) {
      return problem('exact_duplicate', 'messages', `same messages as line ${earlier[0]} / 与第 ${earlier[0]} 行完全相同`, 'warning');
    }
    if (this.examples.full) {
      if (this.warnedFull) return null;
      this.warnedFull = true;
      const n = this.examples.maxEntries;
      return problem(
        'duplicate_check_limited',
        null,
        `more than ${n} distinct examples: later lines are checked for duplicates of the first ${n} only / 样本超过 ${n} 条，之后的行只与前 ${n} 条比较重复`,
        'warning',
      );
    }
    this.examples.add(full, line, 0);
    const prompt = digest64(canonical(promptOf(example)));
    const answer = answerOf(example);
    const key = this.answerKey(answer);
    const first = this.prompts.get(prompt);
    if (first === null) {
      this.prompts.add(prompt, line, key);
      return null;
    }
    if (first[1] === key) return null; // same prompt and answer, differing only in weights
    const there = first[1] & HASHED ? '' : `, '${clip(this.answerTexts[first[1]])}' there`;
    return problem(
      'conflicting_duplicate',
      'messages',
      `same prompt as line ${first[0]} but a different answer ('${clip(answer)}' here${there}) / ` + `与第 ${first[0]} 行提示相同但答案不同`,
      this.conflictSeverity,
    );
  }

  /** A small id for a kept answer text, else a 31-bit hash with the top bit set. */
  private answerKey(answer: string): number {
    const id = this.answerIds.get(answer);
    if (id !== undefined) return id;
    if (this.answerTexts.length < MAX_KEPT_ANSWERS && answer.length <= MAX_KEPT_ANSWER_CHARS) {
      this.answerIds.set(answer, this.answerTexts.length);
      this.answerTexts.push(answer);
      return this.answerTexts.length - 1;
    }
    return (digest64(answer)[1] | HASHED) >>> 0;
  }
}

/** Counts Unicode code points (what a person calls characters; emoji count once). */
export function charLength(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0xdc00 || c > 0xdfff || i === 0 || (text.charCodeAt(i - 1) & 0xfc00) !== 0xd800) n++;
  }
  return n;
}
