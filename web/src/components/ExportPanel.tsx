/**
 * A model's exports: an Export button (format + quantization), the running export's live progress, the
 * post-export check (verdict, agreement, first difference) and a download link for each finished export.
 */
import { useState } from 'react';
import { api, send, type List } from '../api';
import { useAction, useAsync, useInterval } from '../hooks';
import { useI18n } from '../i18n';
import { ErrorMessage } from './ui';

interface CheckReport {
  status: 'passed' | 'failed' | 'skipped';
  reason: string;
  n: number;
  mode: 'labels' | 'generation' | null;
  agreement: number | null;
  threshold: number;
  engine: { accuracy: number | null };
  artifact: { backend: string; accuracy: number | null };
  first_difference: { index: number; prompt: string; expected: string; engine: string; artifact: string } | null;
  template: { status: string; first_difference: { jinja: string; ollama: string } | null } | null;
}

interface ExportObject {
  id: string;
  format: 'hf' | 'gguf' | 'ollama';
  quantize: string | null;
  status: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
  progress: { phase: string; current: number; total: number } | null;
  files: { name: string; bytes: number }[] | null;
  ollama: { command: string } | null;
  check: CheckReport | null;
  error: { message: string } | null;
  created_at: number;
}

const QUANTS = ['f16', 'bf16', 'q8_0', 'q5_0', 'q4_0', 'q4_k_m', 'f32'];
const pct = (x: number | null) => (x === null ? '—' : `${(x * 100).toFixed(1)}%`);
const active = (e: ExportObject) => e.status === 'queued' || e.status === 'running';

function CheckPanel({ check }: { check: CheckReport }) {
  const { t } = useI18n();
  const d = check.first_difference;
  return (
    <div className="small" data-testid="export-check">
      <div>
        <span className={`badge ${check.status === 'failed' ? 'danger' : ''}`}>{t(`export.check.${check.status}`)}</span> {check.reason}
      </div>
      {check.status !== 'skipped' && (
        <div>
          {t(check.mode === 'labels' ? 'export.labelAgreement' : 'export.exactAgreement')}: {pct(check.agreement)} ({t('export.threshold')} {pct(check.threshold)}, n={check.n}) ·{' '}
          {t('export.accuracy')}: {pct(check.engine.accuracy)} / {pct(check.artifact.accuracy)} ({check.artifact.backend})
        </div>
      )}
      {d && (
        <div>
          {t('export.firstDifference')} #{d.index}: <span className="mono">{d.prompt}</span> → {t('export.engine')} <span className="mono">{JSON.stringify(d.engine)}</span>,{' '}
          {t('export.artifact')} <span className="mono">{JSON.stringify(d.artifact)}</span>
        </div>
      )}
      {check.template?.first_difference && (
        <div>
          {t('export.templateMismatch')}: <span className="mono">{JSON.stringify(check.template.first_difference.ollama)}</span>
        </div>
      )}
    </div>
  );
}

/** Fetches the export's content with the API key and hands it to the browser as a file. */
async function download(e: ExportObject): Promise<void> {
  const res = await send(`/v1/weitiao/exports/${e.id}/content`, { timeoutMs: 3_600_000 });
  const name = /filename="([^"]+)"/.exec(res.headers.get('content-disposition') ?? '')?.[1] ?? `${e.id}.tar`;
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.click();
  URL.revokeObjectURL(url);
}

export function ExportPanel({ model }: { model: string }) {
  const { t } = useI18n();
  const [format, setFormat] = useState<'gguf' | 'ollama' | 'hf'>('gguf');
  const [quantize, setQuantize] = useState('q8_0');
  const exports = useAsync((signal) => api<List<ExportObject>>('/v1/weitiao/exports', { signal, query: { model, limit: 5 } }), [model]);
  const running = exports.data?.data.some(active) ?? false;
  useInterval(() => exports.reload(), 1000, running);
  const create = useAction(async () => {
    await api(`/v1/weitiao/models/${encodeURIComponent(model)}/exports`, {
      method: 'POST',
      json: format === 'hf' ? { format } : { format, quantize },
    });
    exports.reload();
  });
  const get = useAction(download);

  return (
    <div className="export-panel" data-testid="export-panel">
      <div className="actions">
        <select value={format} onChange={(e) => setFormat(e.target.value as typeof format)} aria-label={t('export.format')}>
          <option value="gguf">GGUF</option>
          <option value="ollama">Ollama</option>
          <option value="hf">Hugging Face</option>
        </select>
        {format !== 'hf' && (
          <select value={quantize} onChange={(e) => setQuantize(e.target.value)} aria-label={t('export.quantize')}>
            {QUANTS.map((q) => (
              <option key={q}>{q}</option>
            ))}
          </select>
        )}
        <button type="button" disabled={create.running || running} onClick={() => void create.run()}>
          {t('export.button')}
        </button>
      </div>
      <ErrorMessage message={create.error ?? get.error} />
      {(exports.data?.data ?? []).map((e) => (
        <div key={e.id} className="small">
          <span className="mono">{e.id}</span> · {e.format}
          {e.quantize ? ` ${e.quantize}` : ''} · {t(`export.status.${e.status}`)}
          {active(e) && e.progress && (
            <span className="progress">
              {e.progress.phase}
              <span>
                <span style={{ width: `${(100 * e.progress.current) / Math.max(e.progress.total, 1)}%` }} />
              </span>
              <em>
                {e.progress.current}/{e.progress.total}
              </em>
            </span>
          )}
          {e.files && (e.status === 'succeeded' || e.status === 'failed') && (
            <>
              {' '}
              · <a href="#" onClick={(ev) => (ev.preventDefault(), void get.run(e))}>{t('export.download')}</a>
            </>
          )}
          {e.ollama && e.status === 'succeeded' && <div className="mono">{e.ollama.command}</div>}
          {e.error && !e.check && <div className="error">{e.error.message}</div>}
          {e.check && <CheckPanel check={e.check} />}
        </div>
      ))}
    </div>
  );
}
