/**
 * Ollama bundles: a Modelfile whose TEMPLATE (Go template syntax) renders what the model's Jinja chat
 * template renders, for the families weitiao trains (ChatML: Qwen2/Qwen2.5/Qwen3; Llama 3; GLM-4), and a
 * minimal evaluator of exactly the Go-template subset emitted here, so the post-export check can compare
 * both renderings of its conversations.
 *
 * Ollama executes TEMPLATE with `.System` (every system message joined by blank lines, or the Modelfile's
 * SYSTEM when the request has none) and `.Messages` (consecutive same-role messages merged); no BOS token
 * is written: llama.cpp adds it when the GGUF asks for one.
 */
import { Template } from '@huggingface/jinja';
import { WeitiaoError } from '../../errors.js';

export type TemplateFamily = 'chatml' | 'llama3' | 'glm4';

export interface ChatMessage {
  role: string;
  content: string;
}

/** The family of a Jinja chat template by its role markers, or a clear refusal. */
export function templateFamily(chatTemplate: string | null): TemplateFamily {
  if (chatTemplate?.includes('<|im_start|>')) return 'chatml';
  if (chatTemplate?.includes('<|start_header_id|>')) return 'llama3';
  // GLM-4 writes its role tags as `<|{{ item['role'] }}|>`; its prompt opens with [gMASK]<sop>.
  if (chatTemplate?.includes('[gMASK]<sop>')) return 'glm4';
  throw new WeitiaoError(
    'unprocessable',
    `no Ollama TEMPLATE for this chat template (weitiao writes ChatML/Qwen, Llama 3 and GLM-4 ones); export as gguf and write the Modelfile by hand / 无法为该对话模板生成 Ollama TEMPLATE（支持 ChatML/Qwen、Llama 3、GLM-4），请导出 gguf 并手写 Modelfile`,
    { param: 'format' },
  );
}

/** Renders a Jinja chat template as Hugging Face does (the check renders GGUF prompts with it too). */
export function renderJinja(
  chatTemplate: string,
  messages: ChatMessage[],
  options: { addGenerationPrompt: boolean; bosToken?: string; eosToken?: string },
): string {
  return new Template(chatTemplate).render({
    messages,
    add_generation_prompt: options.addGenerationPrompt,
    bos_token: options.bosToken ?? '',
    eos_token: options.eosToken ?? '',
  });
}

/** The system text a ChatML template writes when a conversation has none (Qwen2.5's default), or null. */
function defaultSystem(chatTemplate: string): string | null {
  const probe = renderJinja(chatTemplate, [{ role: 'user', content: 'U' }], { addGenerationPrompt: false });
  const m = /^<\|im_start\|>system\n([\s\S]*?)<\|im_end\|>\n/.exec(probe);
  return m ? m[1] : null;
}

// One generation prompt after the last message unless it is the assistant's (Ollama has no
// add_generation_prompt: a trailing assistant message is the start of the reply, left open).
const LAST = '{{- $last := eq (len (slice $.Messages $i)) 1 }}';

/** The Go template for a family, equivalent to `chatTemplate` for system/user/assistant conversations. */
export function ollamaTemplate(chatTemplate: string): string {
  const family = templateFamily(chatTemplate);
  if (family === 'chatml') {
    const fallback = defaultSystem(chatTemplate);
    if (fallback !== null && /{{|}}/.test(fallback)) throw new WeitiaoError('unprocessable', 'the default system text holds "{{" / 默认系统提示含 "{{"');
    return [
      '{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n',
      fallback === null ? '{{ end }}' : `{{ else }}<|im_start|>system\n${fallback}<|im_end|>\n{{ end }}`,
      '{{- range $i, $_ := .Messages }}',
      LAST,
      '{{- if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n',
      '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}',
      '{{- end }}',
      '{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant\n{{ end }}',
      '{{- end }}',
    ].join('');
  }
  if (family === 'llama3') {
    return [
      '{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}',
      '{{- range $i, $_ := .Messages }}',
      LAST,
      '{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>',
      '{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}',
      '{{- end }}',
      '{{- if and (ne .Role "assistant") $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}',
      '{{- end }}',
    ].join('');
  }
  // GLM-4: no end-of-turn token, the next role tag closes a turn; the prompt opens with [gMASK]<sop>.
  return [
    '[gMASK]<sop>{{ if .System }}<|system|>\n{{ .System }}{{ end }}',
    '{{- range $i, $_ := .Messages }}',
    LAST,
    '{{- if eq .Role "user" }}<|user|>\n{{ .Content }}',
    '{{- else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}',
    '{{- end }}',
    '{{- if and (ne .Role "assistant") $last }}<|assistant|>{{ end }}',
    '{{- end }}',
  ].join('');
}

export interface ModelfileInput {
  chatTemplate: string | null;
  stopTokens: string[];
  /** The system prompt the model was trained with (null: none). */
  system: string | null;
  gguf?: string;
}

/** The Modelfile's text: FROM, TEMPLATE, one PARAMETER stop per end-of-turn token, SYSTEM. */
export function modelfile(input: ModelfileInput): string {
  const template = ollamaTemplate(input.chatTemplate ?? '');
  for (const [what, text] of [['TEMPLATE', template], ['SYSTEM', input.system ?? '']] as const) {
    if (text.includes('"""')) throw new WeitiaoError('unprocessable', `the ${what} text holds """, which a Modelfile cannot quote / ${what} 中含有 """`);
  }
  const lines = [`FROM ./${input.gguf ?? 'model.gguf'}`, '', `TEMPLATE """${template}"""`, ''];
  for (const stop of input.stopTokens) lines.push(`PARAMETER stop ${JSON.stringify(stop)}`);
  // Greedy by default, as the post-export check decodes.
  lines.push('PARAMETER temperature 0');
  if (input.system) lines.push('', `SYSTEM """${input.system}"""`);
  return lines.join('\n') + '\n';
}

/** The prompt Ollama builds for `messages` with this Modelfile's TEMPLATE (and SYSTEM when none is given). */
export function renderOllama(template: string, messages: ChatMessage[], modelfileSystem: string | null = null): string {
  const withSystem = messages.some((m) => m.role === 'system') || !modelfileSystem ? messages : [{ role: 'system', content: modelfileSystem }, ...messages];
  const system = withSystem.filter((m) => m.role === 'system').map((m) => m.content).join('\n\n');
  const collated: ChatMessage[] = [];
  for (const m of withSystem) {
    const prev = collated.at(-1);
    if (prev && prev.role === m.role) prev.content += '\n\n' + m.content;
    else collated.push({ ...m });
  }
  return executeGoTemplate(template, { System: system, Messages: collated });
}

// ------------------------------------------------------------------------------------ Go-template subset

type Node =
  | { kind: 'text'; text: string }
  | { kind: 'out'; expr: string }
  | { kind: 'assign'; name: string; expr: string }
  | { kind: 'if'; branches: { cond: string | null; body: Node[] }[] }
  | { kind: 'range'; index: string | null; elem: string | null; expr: string; body: Node[] };

/**
 * Executes the Go text/template subset that `ollamaTemplate` writes: text, `{{- … -}}` trimming, `if / else
 * if / else / end`, `range $i, $_ := .Messages`, `$x := …`, field access (`.Role`, `$.Messages`) and the
 * functions eq, ne, and, or, not, len, slice. Anything else is an error, never a silent guess.
 */
export function executeGoTemplate(template: string, data: Record<string, unknown>): string {
  const nodes = parseGo(tokenizeGo(template));
  let out = '';
  const run = (list: Node[], dot: unknown, vars: Map<string, unknown>) => {
    for (const n of list) {
      if (n.kind === 'text') out += n.text;
      else if (n.kind === 'out') out += String(evalExpr(n.expr, dot, vars, data));
      else if (n.kind === 'assign') vars.set(n.name, evalExpr(n.expr, dot, vars, data));
      else if (n.kind === 'if') {
        const branch = n.branches.find((b) => b.cond === null || truthy(evalExpr(b.cond, dot, vars, data)));
        if (branch) run(branch.body, dot, new Map(vars));
      } else {
        const items = evalExpr(n.expr, dot, vars, data);
        if (!Array.isArray(items)) throw new Error(`range over a non-list: ${n.expr}`);
        items.forEach((item, i) => {
          const scope = new Map(vars);
          if (n.index) scope.set(n.index, i);
          if (n.elem) scope.set(n.elem, item);
          run(n.body, item, scope);
        });
      }
    }
  };
  run(nodes, data, new Map());
  return out;
}

type Tok = { kind: 'text'; text: string } | { kind: 'action'; body: string };

function tokenizeGo(src: string): Tok[] {
  const toks: Tok[] = [];
  let i = 0;
  let trimNext = false;
  while (i < src.length) {
    const open = src.indexOf('{{', i);
    let text = src.slice(i, open < 0 ? src.length : open);
    if (trimNext) text = text.replace(/^\s+/, '');
    if (open < 0) {
      if (text) toks.push({ kind: 'text', text });
      break;
    }
    const close = src.indexOf('}}', open);
    if (close < 0) throw new Error('unclosed {{ in template');
    let body = src.slice(open + 2, close);
    if (body.startsWith('- ')) {
      text = text.replace(/\s+$/, '');
      body = body.slice(2);
    }
    trimNext = body.endsWith(' -');
    if (trimNext) body = body.slice(0, -2);
    if (text) toks.push({ kind: 'text', text });
    toks.push({ kind: 'action', body: body.trim() });
    i = close + 2;
  }
  return toks;
}

function parseGo(toks: Tok[]): Node[] {
  let pos = 0;
  const block = (): { body: Node[]; end: string } => {
    const body: Node[] = [];
    while (pos < toks.length) {
      const t = toks[pos++];
      if (t.kind === 'text') {
        body.push({ kind: 'text', text: t.text });
        continue;
      }
      const a = t.body;
      if (a === 'end' || a === 'else' || a.startsWith('else if ')) return { body, end: a };
      if (a.startsWith('if ')) {
        const branches: { cond: string | null; body: Node[] }[] = [];
        let cond: string | null = a.slice(3);
        for (;;) {
          const inner = block();
          if (!inner.end) throw new Error(`{{ if ${cond} }} without {{ end }}`);
          branches.push({ cond, body: inner.body });
          if (inner.end === 'end') break;
          if (inner.end === 'else') {
            const last = block();
            if (last.end !== 'end') throw new Error('{{ else }} must be followed by {{ end }}');
            branches.push({ cond: null, body: last.body });
            break;
          }
          cond = inner.end.slice('else if '.length);
        }
        body.push({ kind: 'if', branches });
      } else if (a.startsWith('range ')) {
        const m = /^range\s+(?:(\$\w*)\s*,\s*(\$\w*)\s*:=\s*)?(.+)$/.exec(a);
        if (!m) throw new Error(`unsupported range: ${a}`);
        const inner = block();
        if (inner.end !== 'end') throw new Error('range without end');
        body.push({ kind: 'range', index: m[1] ?? null, elem: m[2] ?? null, expr: m[3], body: inner.body });
      } else {
        const m = /^(\$\w+)\s*:=\s*(.+)$/.exec(a);
        body.push(m ? { kind: 'assign', name: m[1], expr: m[2] } : { kind: 'out', expr: a });
      }
    }
    return { body, end: '' };
  };
  const { body, end } = block();
  if (end) throw new Error(`unexpected {{ ${end} }}`);
  return body;
}

function truthy(v: unknown): boolean {
  if (Array.isArray(v)) return v.length > 0;
  return v !== '' && v !== 0 && v !== false && v !== null && v !== undefined;
}

/** Splits `eq (len (slice $.Messages $i)) 1` into top-level words, keeping parenthesized groups whole. */
function words(expr: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < expr.length) {
    const c = expr[i];
    if (c === ' ') {
      i++;
    } else if (c === '(') {
      let depth = 0;
      let j = i;
      for (; j < expr.length; j++) {
        if (expr[j] === '(') depth++;
        else if (expr[j] === ')' && --depth === 0) break;
      }
      out.push(expr.slice(i, j + 1));
      i = j + 1;
    } else if (c === '"') {
      let j = i + 1;
      while (j < expr.length && expr[j] !== '"') j += expr[j] === '\\' ? 2 : 1;
      out.push(expr.slice(i, j + 1));
      i = j + 1;
    } else {
      let j = i;
      while (j < expr.length && expr[j] !== ' ') j++;
      out.push(expr.slice(i, j));
      i = j;
    }
  }
  return out;
}

function evalExpr(expr: string, dot: unknown, vars: Map<string, unknown>, root: Record<string, unknown>): unknown {
  const parts = words(expr.trim());
  const arg = (w: string): unknown => {
    if (w.startsWith('(')) return evalExpr(w.slice(1, -1), dot, vars, root);
    if (w.startsWith('"')) return JSON.parse(w) as string;
    if (/^-?\d+$/.test(w)) return Number(w);
    if (w === '.') return dot;
    if (w.startsWith('$.')) return field(root, w.slice(2));
    if (w.startsWith('$')) {
      if (!vars.has(w)) throw new Error(`undefined variable ${w}`);
      return vars.get(w);
    }
    if (w.startsWith('.')) return field(dot, w.slice(1));
    throw new Error(`unsupported template word: ${w}`);
  };
  const [head, ...rest] = parts;
  const args = () => rest.map(arg);
  switch (head) {
    case 'eq':
      return args()[0] === args()[1];
    case 'ne':
      return args()[0] !== args()[1];
    case 'and':
      return args().every(truthy);
    case 'or':
      return args().some(truthy);
    case 'not':
      return !truthy(args()[0]);
    case 'len': {
      const v = args()[0];
      return Array.isArray(v) || typeof v === 'string' ? v.length : 0;
    }
    case 'slice': {
      const [v, from, to] = args() as [unknown[], number, number | undefined];
      return v.slice(from, to);
    }
    default:
      if (rest.length) throw new Error(`unsupported template function: ${head}`);
      return arg(head);
  }
}

function field(obj: unknown, name: string): unknown {
  let v: unknown = obj;
  for (const key of name.split('.')) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[key.charAt(0).toLowerCase() + key.slice(1)] ?? (v as Record<string, unknown>)[key];
  }
  return v;
}
