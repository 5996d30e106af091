/** Mapping source records to chat examples with `{column}` templates and a label map (prepare and the console's preview). */
import { z } from 'zod';
import type { ChatExample } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { checkExample, clip, problem, type Problem } from './internal/check.js';
import { parseTemplate, renderTemplate, type Template } from './internal/template.js';
import { parseLabelMap } from './labels.js';
import type { PrepareOptions } from './schemas.js';

export interface Mapper {
  /** The columns templates read, for the record JSONL per-row check. */
  columns: string[];
  map(get: (column: string) => { value: string } | { problem: Problem }): { example: ChatExample | null; problems: Problem[] };
}

/** The templates and label map as one function from a record's columns to a chat example (also the console's preview). */
export function makeMapper(options: z.infer<typeof PrepareOptions>, available: string[], where: string): Mapper {
  for (const param of ['user', 'assistant'] as const) {
    if (options[param] === undefined) {
      throw new WeitiaoError(
        'invalid_request',
        `a ${param} template is required to turn ${where} into chat examples, e.g. user "{review}", assistant "{label}" / 需要 ${param} 模板`,
        { param },
      );
    }
  }
  const templates: { role: 'system' | 'user' | 'assistant'; template: Template }[] = [];
  for (const role of ['system', 'user', 'assistant'] as const) {
    const source = options[role];
    if (source === undefined || (role === 'system' && source === '')) continue;
    templates.push({ role, template: parseTemplate(source, role) });
  }
  const list = available.map((c) => `'${c}'`).join(', ');
  for (const { role, template } of templates) {
    for (const column of template.columns) {
      if (!available.includes(column)) {
        throw new WeitiaoError(
          'invalid_request',
          `${role} template uses column '${column}', which ${where} does not have; available columns: ${list} / ` +
            `${role} 模板中的列 '${column}' 不存在，可用的列：${list}`,
          { param: role },
        );
      }
    }
  }

  const assistant = templates.find((t) => t.role === 'assistant')!.template;
  const labelMap = options.label_map === undefined ? null : typeof options.label_map === 'string' ? parseLabelMap(options.label_map) : options.label_map;
  let labelColumn: string | null = null;
  if (options.label_column !== undefined) {
    if (!available.includes(options.label_column)) {
      throw new WeitiaoError('invalid_request', `label column '${options.label_column}' is not in ${where}; available columns: ${list} / 标签列不存在`, {
        param: 'label_column',
      });
    }
    labelColumn = options.label_column;
  } else if (labelMap) {
    if (assistant.columns.length !== 1) {
      throw new WeitiaoError(
        'invalid_request',
        `the assistant template has ${assistant.columns.length} placeholders; name the one the label map applies to with label_column / 请用 label_column 指定标签列`,
        { param: 'label_column' },
      );
    }
    labelColumn = assistant.columns[0];
  }
  const labelKeys = labelMap ? Object.keys(labelMap).map((k) => `'${k}'`).join(', ') : '';
  const columns = [...new Set(templates.flatMap((t) => t.template.columns))];

  return {
    columns,
    map(get) {
      const problems: Problem[] = [];
      const values = new Map<string, string>();
      for (const column of columns) {
        const got = get(column);
        if ('problem' in got) {
          problems.push(got.problem);
          continue;
        }
        let value = got.value;
        if (column === labelColumn && labelMap) {
          const key = value.trim();
          if (!Object.hasOwn(labelMap, key)) {
            problems.push(
              problem('unknown_label', column, `value '${clip(value)}' is not in the label map (${labelKeys}) / 值 '${clip(value)}' 不在标签映射中`),
            );
            continue;
          }
          value = labelMap[key];
        }
        values.set(column, value);
      }
      if (problems.length) return { example: null, problems };

      const messages: ChatExample['messages'] = [];
      for (const { role, template } of templates) {
        const content = renderTemplate(template, (c) => values.get(c)!);
        const empty = template.columns.filter((c) => values.get(c)!.trim() === '');
        // An empty value is fatal when the whole message ends up empty, else worth a warning.
        const severity = content.trim() === '' ? 'error' : 'warning';
        for (const c of empty) {
          problems.push(problem('empty_value', c, `column '${c}' is empty${severity === 'error' ? `, so the ${role} message would be empty` : ''} / 列 '${c}' 为空`, severity));
        }
        messages.push({ role, content });
      }
      if (problems.some((p) => p.severity === 'error')) return { example: null, problems };
      // The same structural checks a chat file gets, so prepare can never write what validate rejects.
      const checked = checkExample({ messages });
      return { example: checked.example, problems: [...problems, ...checked.problems] };
    },
  };
}

export function jsonValue(record: Record<string, unknown>, column: string): { value: string } | { problem: Problem } {
  if (!Object.hasOwn(record, column)) return { problem: problem('missing_field', column, `record has no '${column}' field / 记录缺少 '${column}' 字段`) };
  const v = record[column];
  if (typeof v === 'string') return { value: v };
  if (typeof v === 'number' || typeof v === 'boolean') return { value: String(v) };
  if (v === null) return { value: '' };
  return {
    problem: problem('invalid_value', column, `field '${column}' is ${Array.isArray(v) ? 'an array' : 'an object'}; templates take text, numbers or booleans / 字段 '${column}' 不是文本`),
  };
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
