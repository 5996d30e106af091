/**
 * `weitiao data pairs`: DPO preference pairs in OpenAI's preference format. For each prompt of a chat
 * file the teacher's answer is preferred and the student's (the model being fine-tuned) is not; a pair
 * where both say the same is dropped, since it teaches nothing. Both answers are journaled as they
 * arrive, so a restart asks neither again.
 */
import type { ChatExample } from '../../engine/index.js';
import { promptOf } from '../internal/check.js';
import { checkPreferencePair } from '../internal/preference.js';
import type { ChatAnswer, ChatRequest, TeacherClient } from './endpoint.js';
import type { Unit, UnitOutcome } from './run.js';

export interface PairsOptions {
  max_tokens?: number;
  temperature?: number;
}

export function pairsPlan(prompts: { line: number; example: ChatExample }[], o: PairsOptions, teacher: TeacherClient, student: TeacherClient) {
  const requestOf = (example: ChatExample): ChatRequest => ({
    messages: promptOf(example).map((m) => ({ role: m.role as 'system' | 'user' | 'assistant', content: m.content })),
    max_tokens: o.max_tokens ?? 256,
    temperature: o.temperature ?? 0,
  });
  const units: (Unit & { line: number })[] = prompts.map((p) => ({ key: `line:${p.line}`, line: p.line, planned: [requestOf(p.example), requestOf(p.example)] }));
  const work = async (u: Unit, ask: (i: number, c: TeacherClient, r: ChatRequest) => Promise<ChatAnswer>): Promise<UnitOutcome> => {
    const { line } = u as Unit & { line: number };
    const [teacherAnswer, studentAnswer] = await Promise.all([ask(0, teacher, u.planned[0]), ask(1, student, u.planned[1])]);
    const pair = {
      input: { messages: u.planned[0].messages },
      preferred_output: [{ role: 'assistant', content: teacherAnswer.content }],
      non_preferred_output: [{ role: 'assistant', content: studentAnswer.content }],
    };
    const problems = checkPreferencePair(pair);
    const bad = problems.find((p) => p.severity === 'error') ?? problems.find((p) => p.code === 'identical_outputs');
    if (bad) return { outcome: 'rejected', reason: `${bad.field ?? ''}: ${bad.message}`, detail: { input_line: line } };
    return {
      outcome: 'written',
      line: pair,
      provenance: { source: 'teacher', input_line: line, teacher: teacher.describe(), student: student.describe(), prompt: u.planned[0].messages, created_at: new Date().toISOString() },
    };
  };
  return { units, work };
}
