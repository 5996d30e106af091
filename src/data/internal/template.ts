/**
 * Message templates: literal text with `{column}` placeholders (`{{` and `}}` for literal braces).
 * Column names may be anything without braces, Chinese included; surrounding spaces are ignored.
 */
import { WeitiaoError } from '../../errors.js';

export type TemplatePart = { text: string } | { column: string };

export interface Template {
  source: string;
  parts: TemplatePart[];
  columns: string[];
}

/** Parses a template; `param` names the option in errors (e.g. `user`). */
export function parseTemplate(source: string, param: string): Template {
  const parts: TemplatePart[] = [];
  let text = '';
  for (let i = 0; i < source.length; i++) {
    const ch = source[i];
    if (ch === '{' && source[i + 1] === '{') {
      text += '{';
      i++;
    } else if (ch === '}' && source[i + 1] === '}') {
      text += '}';
      i++;
    } else if (ch === '{') {
      const end = source.indexOf('}', i + 1);
      const inner = end < 0 ? '' : source.slice(i + 1, end);
      if (end < 0 || inner.includes('{')) {
        throw new WeitiaoError('invalid_request', `${param} template has an unclosed '{' at position ${i + 1} (write '{{' for a literal brace) / 模板中的 '{' 没有闭合`, { param });
      }
      const column = inner.trim();
      if (!column) throw new WeitiaoError('invalid_request', `${param} template has an empty placeholder '{}' / 模板中有空占位符 '{}'`, { param });
      if (text) parts.push({ text });
      text = '';
      parts.push({ column });
      i = end;
    } else if (ch === '}') {
      throw new WeitiaoError('invalid_request', `${param} template has a '}' without '{' at position ${i + 1} (write '}}' for a literal brace) / 模板中的 '}' 没有对应的 '{'`, { param });
    } else {
      text += ch;
    }
  }
  if (text) parts.push({ text });
  const columns = [...new Set(parts.flatMap((p) => ('column' in p ? [p.column] : [])))];
  return { source, parts, columns };
}

/** Fills a template from one record's values (already label-mapped where that applies). */
export function renderTemplate(template: Template, values: (column: string) => string): string {
  let out = '';
  for (const part of template.parts) out += 'text' in part ? part.text : values(part.column);
  return out;
}
