/**
 * The grader of a reinforcement job, edited as OpenAI's grader JSON: "Validate" asks the server
 * (POST /v1/fine_tuning/alpha/graders/validate), whose 400 names the field at fault (`grader.operation`);
 * "Try on a sample" grades one answer against one data item (POST …/graders/run) and shows the score.
 * Strings are local (en/zh) while the i18n tables move to web/src/i18n/; fold them in there once that lands.
 */
import { useState } from 'react';
import { ApiError, api, messageOf } from '../api';
import { useI18n } from '../i18n';

const TEXT = {
  en: {
    grader: 'Grader (JSON)', validate: 'Validate', valid: 'The grader is valid.', notJson: 'Not JSON', field: 'field',
    sample: 'Sample answer ({{sample.output_text}})', item: 'Data item ({{item.x}}, JSON)', tryIt: 'Try on a sample', reward: 'Reward',
  },
  zh: {
    grader: '评分器（JSON）', validate: '校验', valid: '评分器有效。', notJson: '不是合法的 JSON', field: '字段',
    sample: '示例回答（{{sample.output_text}}）', item: '数据项（{{item.x}}，JSON）', tryIt: '用示例试评', reward: '奖励',
  },
} as const;

export const EXAMPLE_GRADER = { type: 'string_check', name: 'label', input: '{{sample.output_text}}', reference: '{{item.label}}', operation: 'eq' };

interface Props {
  value: string;
  onChange: (text: string) => void;
}

/** The grader as an object, or why the text is not one (a JSON syntax error, before asking the server). */
export function parseGrader(text: string): { grader: Record<string, unknown> } | { error: string } {
  try {
    const grader: unknown = JSON.parse(text);
    if (typeof grader !== 'object' || grader === null || Array.isArray(grader)) return { error: 'grader: expected a JSON object' };
    return { grader: grader as Record<string, unknown> };
  } catch (err) {
    return { error: messageOf(err) ?? 'invalid JSON' };
  }
}

export function GraderEditor({ value, onChange }: Props) {
  const text = TEXT[useI18n().lang];
  const [status, setStatus] = useState<{ ok: boolean; message: string } | null>(null);
  const [sample, setSample] = useState('好评');
  const [item, setItem] = useState('{"label": "好评"}');
  const [reward, setReward] = useState<number | null>(null);
  const [busy, setBusy] = useState(false);

  const call = async (action: () => Promise<void>) => {
    setBusy(true);
    setStatus(null);
    setReward(null);
    try {
      await action();
    } catch (err) {
      const param = err instanceof ApiError && err.param ? `${text.field} ${err.param}: ` : '';
      setStatus({ ok: false, message: `${param}${messageOf(err) ?? ''}` });
    } finally {
      setBusy(false);
    }
  };

  const grader = (): Record<string, unknown> => {
    const parsed = parseGrader(value);
    if ('error' in parsed) throw new Error(`${text.notJson}: ${parsed.error}`);
    return parsed.grader;
  };

  const validate = () =>
    call(async () => {
      await api('/v1/fine_tuning/alpha/graders/validate', { json: { grader: grader() } });
      setStatus({ ok: true, message: text.valid });
    });

  const tryOnSample = () =>
    call(async () => {
      const parsedItem = parseGrader(item);
      if ('error' in parsedItem) throw new Error(`item: ${text.notJson}: ${parsedItem.error}`);
      const result = await api<{ reward: number }>('/v1/fine_tuning/alpha/graders/run', { json: { grader: grader(), model_sample: sample, item: parsedItem.grader } });
      setReward(result.reward);
    });

  return (
    <div className="grader-editor" data-testid="grader-editor">
      <label>
        {text.grader}
        <textarea className="mono" rows={8} value={value} onChange={(e) => onChange(e.target.value)} data-testid="grader-json" />
      </label>
      <button type="button" onClick={() => void validate()} disabled={busy} data-testid="grader-validate">
        {text.validate}
      </button>
      <label>
        {text.sample}
        <input value={sample} onChange={(e) => setSample(e.target.value)} data-testid="grader-sample" />
      </label>
      <label>
        {text.item}
        <input className="mono" value={item} onChange={(e) => setItem(e.target.value)} data-testid="grader-item" />
      </label>
      <button type="button" onClick={() => void tryOnSample()} disabled={busy} data-testid="grader-try">
        {text.tryIt}
      </button>
      {reward !== null && (
        <p data-testid="grader-reward">
          {text.reward}: <strong>{reward}</strong>
        </p>
      )}
      {status && (
        <p className={status.ok ? 'ok' : 'error'} role={status.ok ? 'status' : 'alert'} data-testid="grader-status">
          {status.message}
        </p>
      )}
    </div>
  );
}
