/**
 * Models: base models and fine-tuned ones with their lineage (base model, job, training data), which the
 * jobs list provides when the model object itself does not; fine-tuned models can be deleted.
 */
import { useState } from 'react';
import { api, type FileObject, type Job, type List, type Model } from '../api';
import { AsyncView, ErrorMessage, formatTime } from '../components/ui';
import { ExportPanel } from '../components/ExportPanel';
import { DataTable } from '../components/DataTable';
import { useAction, useAsync } from '../hooks';
import { useI18n } from '../i18n';
import { href } from '../router';

export const isFineTuned = (m: Model): boolean => (m.weitiao?.kind ? m.weitiao.kind !== 'base' : m.id.startsWith('ft:'));

interface Lineage {
  base: string | null;
  job: string | null;
  training: string | null;
  validation: string | null;
}

function lineageOf(m: Model, jobs: Job[]): Lineage {
  const job = jobs.find((j) => j.id === m.weitiao?.job_id || j.fine_tuned_model === m.id);
  return {
    base: m.weitiao?.base_model ?? job?.model ?? null,
    job: m.weitiao?.job_id ?? job?.id ?? null,
    training: job?.training_file ?? null,
    validation: job?.validation_file ?? null,
  };
}

export function Models() {
  const { t } = useI18n();
  const state = useAsync(
    async (signal) => {
      const [models, jobs, files] = await Promise.all([
        api<List<Model>>('/v1/models', { signal }),
        api<List<Job>>('/v1/fine_tuning/jobs', { signal, query: { limit: 100 } }),
        api<List<FileObject>>('/v1/files', { signal, query: { limit: 1000 } }),
      ]);
      return { models: models.data, jobs: jobs.data, files: new Map(files.data.map((f) => [f.id, f.filename])) };
    },
    [],
  );
  const [deleted, setDeleted] = useState<string>();
  const remove = useAction(async (id: string) => {
    await api(`/v1/models/${encodeURIComponent(id)}`, { method: 'DELETE' });
    setDeleted(id);
    state.reload();
  });

  return (
    <div className="page">
      <h1>{t('models.title')}</h1>
      <ErrorMessage message={remove.error} />
      {deleted && <div className="notice">{t('models.deleted', { id: deleted })}</div>}
      <AsyncView state={state}>
        {({ models, jobs, files }) => {
          const fileName = (id: string | null) => (id ? (files.get(id) ?? id) : null);
          const base = models.filter((m) => !isFineTuned(m));
          const tuned = models.filter(isFineTuned);
          return (
            <>
              <section className="card">
                <h2>{t('models.base')}</h2>
                {base.length === 0 ? (
                  <p className="muted">{t('models.none')}</p>
                ) : (
                  <ul className="model-list" data-testid="base-models">
                    {base.map((m) => (
                      <li key={m.id}>
                        <span className="mono">{m.id}</span>
                        <span className="muted small">
                          {m.weitiao?.source ?? m.owned_by} · {formatTime(m.created)}
                        </span>
                        <a href={href('playground', m.id)}>{t('nav.playground')}</a>
                      </li>
                    ))}
                  </ul>
                )}
              </section>
              <section className="card">
                <h2>{t('models.fineTuned')}</h2>
                <DataTable
                  items={tuned}
                  empty={t('models.none')}
                  testId="fine-tuned-models"
                  columns={[{ label: t('common.model') }, { label: t('models.lineage') }, { label: null }]}
                  row={(m) => {
                    const l = lineageOf(m, jobs);
                    return (
                      <tr key={m.id}>
                        <td>
                          <span className="mono">{m.id}</span>
                          <div className="muted small">
                            {m.weitiao?.kind === 'checkpoint' && <span className="badge">{t('models.checkpoint')}</span>} {formatTime(m.created)}
                          </div>
                        </td>
                        <td className="small">
                          <div>
                            {t('models.baseModel')}: <span className="mono">{l.base ?? '—'}</span>
                          </div>
                          <div>
                            {t('models.job')}: {l.job ? <a className="mono" href={href('jobs', l.job)}>{l.job}</a> : '—'}
                          </div>
                          <div>
                            {t('models.data')}:{' '}
                            <span className="mono">{[fileName(l.training), fileName(l.validation)].filter(Boolean).join(' · ') || '—'}</span>
                          </div>
                        </td>
                        <td>
                          <div className="actions">
                            <a href={href('playground', m.id, l.base ?? '')}>{t('nav.playground')}</a>
                            <button
                              type="button"
                              className="danger"
                              disabled={remove.running}
                              onClick={() => window.confirm(t('common.confirmDelete', { name: m.id })) && void remove.run(m.id)}
                            >
                              {t('common.delete')}
                            </button>
                          </div>
                          <ExportPanel model={m.id} />
                        </td>
                      </tr>
                    );
                  }}
                />
              </section>
            </>
          );
        }}
      </AsyncView>
    </div>
  );
}
