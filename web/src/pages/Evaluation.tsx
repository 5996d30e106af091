/**
 * Evaluation: run an evaluation file against a model (and optionally a second model on the same file);
 * accuracy, confusion matrix, per-class metrics and the misclassified examples.
 */
import { useEffect, useState } from 'react';
import { api, type EvalReport, type EvaluationResponse, type FileObject, type List, type Model } from '../api';
import { ConfusionMatrix } from '../components/ConfusionMatrix';
import { FileSelect, ModelSelect } from '../components/Pickers';
import { Leaderboard } from '../components/Leaderboard';
import { useEvalText } from '../components/eval-text';
import { AsyncView, ErrorMessage, Loading, formatNumber, formatPct } from '../components/ui';
import { useAction, useAsync } from '../hooks';
import { useI18n } from '../i18n';
import { href } from '../router';

/** Evaluation runs the model over the whole file: allow it time, but not forever. */
const EVAL_TIMEOUT_MS = 30 * 60_000;

export function Evaluation({ model: m0, fileId: f0, compare: c0 }: { model?: string; fileId?: string; compare?: string }) {
  const { t } = useI18n();
  const options = useAsync(
    async (signal) => {
      const [models, files] = await Promise.all([
        api<List<Model>>('/v1/models', { signal }),
        api<List<FileObject>>('/v1/files', { signal, query: { limit: 100 } }),
      ]);
      return { models: models.data, files: files.data };
    },
    [],
  );
  const [model, setModel] = useState(m0 ?? '');
  const [fileId, setFileId] = useState(f0 ?? '');
  const [compare, setCompare] = useState(c0 ?? '');
  const [result, setResult] = useState<EvaluationResponse>();
  const text = useEvalText();

  useEffect(() => {
    if (!model && options.data?.models[0]) setModel(options.data.models[0].id);
  }, [options.data, model]);

  const run = useAction(async () => {
    setResult(undefined);
    const res = await api<EvaluationResponse>('/v1/weitiao/evaluations', {
      json: { model, file_id: fileId, ...(compare ? { compare_with: compare } : {}) },
      timeoutMs: EVAL_TIMEOUT_MS,
    });
    setResult(res);
  });

  return (
    <div className="page">
      <h1>{t('eval.title')}</h1>
      <form
        className="card form"
        onSubmit={(e) => {
          e.preventDefault();
          void run.run();
        }}
      >
        <AsyncView state={options}>
          {({ models, files }) => (
            <div className="grid-3">
              <label>
                {t('eval.model')}
                <ModelSelect name="model" items={models} value={model} onChange={setModel} />
              </label>
              <label>
                {t('eval.file')}
                <FileSelect name="file" items={files} value={fileId} onChange={setFileId} none={t('new.pickFile')} required />
              </label>
              <label>
                {t('eval.compareWith')} <span className="muted">{t('common.optional')}</span>
                <ModelSelect name="compare" items={models} value={compare} onChange={setCompare} none={t('play.noCompare')} />
              </label>
            </div>
          )}
        </AsyncView>
        <button type="submit" className="primary" disabled={run.running || !model || !fileId} data-testid="run-eval">
          {run.running ? t('eval.running') : t('eval.run')}
        </button>
        {run.running && <Loading label={t('eval.running')} />}
        <ErrorMessage message={run.error} />
      </form>

      {result && (
        <p>
          <a href={href('report', result.result_id)} data-testid="stored-report-link">
            {text.openReport}
          </a>
        </p>
      )}
      {fileId && <Leaderboard fileId={fileId} reload={result?.result_id ?? ''} />}
      {result && result.reports.length > 1 && <Comparison reports={result.reports} summary={result.comparison} />}
      {result && (
        <div className={`reports n${result.reports.length}`}>
          {result.reports.map((r) => (
            <ReportView key={r.model} report={r} />
          ))}
        </div>
      )}
    </div>
  );
}

function Comparison({ reports, summary }: { reports: EvalReport[]; summary: EvaluationResponse['comparison'] }) {
  const { t } = useI18n();
  const [a, b] = reports;
  const rows: { label: string; a: number | null | undefined; b: number | null | undefined; pct: boolean }[] = [
    { label: t('eval.accuracy'), a: a.label_metrics?.accuracy, b: b.label_metrics?.accuracy, pct: true },
    { label: t('eval.macroF1'), a: a.label_metrics?.macro_f1, b: b.label_metrics?.macro_f1, pct: true },
    { label: t('eval.validLoss'), a: a.valid_loss, b: b.valid_loss, pct: false },
  ];
  return (
    <section className="card" data-testid="comparison">
      <h2>{t('eval.comparison')}</h2>
      <div className="table-wrap">
        <table>
          <thead>
            <tr>
              <th />
              <th className="mono small">{a.model}</th>
              <th className="mono small">{b.model}</th>
              <th>{t('eval.delta')}</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => {
              const f = r.pct ? formatPct : (v: number | null | undefined) => formatNumber(v);
              const delta = typeof r.a === 'number' && typeof r.b === 'number' ? r.a - r.b : null;
              return (
                <tr key={r.label}>
                  <th scope="row">{r.label}</th>
                  <td>{f(r.a)}</td>
                  <td>{f(r.b)}</td>
                  <td>{delta === null ? '—' : `${delta >= 0 ? '+' : ''}${r.pct ? (delta * 100).toFixed(1) + ' pt' : formatNumber(delta)}`}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {summary && (
        <p className="muted small" data-testid="agreement">
          {t('eval.summary', {
            both: summary.both_correct,
            first: summary.only_first_correct,
            second: summary.only_second_correct,
            none: summary.both_wrong,
            agreement: formatPct(summary.agreement),
          })}
        </p>
      )}
    </section>
  );
}

function ReportView({ report }: { report: EvalReport }) {
  const { t } = useI18n();
  const lm = report.label_metrics;
  return (
    <section className="card" data-testid="eval-report">
      <h2 className="mono small">{report.model}</h2>
      <dl className="kv">
        <dt>{t('eval.examples')}</dt>
        <dd>{report.n}</dd>
        {lm && (
          <>
            <dt>{t('eval.accuracy')}</dt>
            <dd data-testid="accuracy">{formatPct(lm.accuracy)}</dd>
            <dt>{t('eval.macroF1')}</dt>
            <dd>{formatPct(lm.macro_f1)}</dd>
          </>
        )}
        <dt>{t('eval.validLoss')}</dt>
        <dd>{formatNumber(report.valid_loss)}</dd>
      </dl>
      {!lm ? (
        <p className="muted">{t('eval.noLabels')}</p>
      ) : (
        <>
          <ConfusionMatrix labels={lm.labels} matrix={lm.confusion_matrix} caption={`${t('eval.confusion')} (${t('eval.actual')})`} />
          <h3>{t('eval.perClass')}</h3>
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>{t('eval.label')}</th>
                  <th>{t('eval.precision')}</th>
                  <th>{t('eval.recall')}</th>
                  <th>{t('eval.f1')}</th>
                  <th>{t('eval.support')}</th>
                </tr>
              </thead>
              <tbody>
                {lm.labels.map((l) => {
                  const c = lm.per_class[l];
                  return (
                    <tr key={l}>
                      <th scope="row">{l}</th>
                      <td>{formatPct(c?.precision)}</td>
                      <td>{formatPct(c?.recall)}</td>
                      <td>{formatPct(c?.f1)}</td>
                      <td>{c?.support ?? 0}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
          <h3>
            {t('eval.misclassified')} <span className="muted small">({report.misclassified_count})</span>
          </h3>
          {report.misclassified.length === 0 ? (
            <p className="muted">{t('eval.noMistakes')}</p>
          ) : (
            <div className="table-wrap">
              <table data-testid="misclassified">
                <thead>
                  <tr>
                    <th />
                    <th>{t('eval.prompt')}</th>
                    <th>{t('eval.expected')}</th>
                    <th>{t('eval.predicted')}</th>
                  </tr>
                </thead>
                <tbody>
                  {report.misclassified.slice(0, 100).map((m) => (
                    <tr key={m.index}>
                      <td className="muted small nowrap">{m.line ? t('common.line', { line: m.line }) : `#${m.index + 1}`}</td>
                      <td className="prompt-cell">{m.prompt}</td>
                      <td>{m.expected}</td>
                      <td>{m.predicted}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
    </section>
  );
}
