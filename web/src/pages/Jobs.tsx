/**
 * The jobs list: status and progress of every fine-tune, refreshed every 2 s while any is unfinished.
 */
import { api, type Job, type List } from '../api';
import { DataTable } from '../components/DataTable';
import { AsyncView, ProgressBar, StatusBadge, formatTime } from '../components/ui';
import { useAsync, useInterval } from '../hooks';
import { useI18n } from '../i18n';
import { href } from '../router';

export const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);

/** 0…1 from the job's progress fields; 1 once it succeeded; null when unknown. */
export function jobProgress(job: Job): number | null {
  if (job.status === 'succeeded') return 1;
  const p = job.weitiao?.progress;
  if (p && p.total_steps) return (p.step ?? 0) / p.total_steps;
  return job.status === 'queued' || job.status === 'validating_files' ? 0 : null;
}

export function Jobs() {
  const { t } = useI18n();
  const jobs = useAsync((signal) => api<List<Job>>('/v1/fine_tuning/jobs', { signal, query: { limit: 100 } }), []);
  const active = jobs.data?.data.some((j) => !FINISHED.has(j.status)) ?? false;
  useInterval(jobs.reload, 2000, active && !jobs.loading);

  return (
    <div className="page">
      <h1>{t('jobs.title')}</h1>
      <section className="card">
        <AsyncView state={jobs}>
          {(list) => (
            <DataTable
              items={list.data}
              empty={t('jobs.none')}
              testId="job-list"
              columns={[
                { label: t('jobs.job') },
                { label: t('common.status') },
                { label: t('jobs.progress') },
                { label: t('common.model'), className: 'hide-phone' },
                { label: t('jobs.fineTunedModel') },
                { label: t('common.created'), className: 'hide-phone' },
              ]}
              row={(j) => (
                <tr key={j.id}>
                  <td>
                    <a href={href('jobs', j.id)} className="mono">
                      {j.id}
                    </a>
                  </td>
                  <td>
                    <StatusBadge status={j.status} />
                  </td>
                  <td>
                    <ProgressBar value={jobProgress(j)} />
                  </td>
                  <td className="mono small hide-phone">{j.model}</td>
                  <td className="mono small">{j.fine_tuned_model ?? '—'}</td>
                  <td className="hide-phone">{formatTime(j.created_at)}</td>
                </tr>
              )}
            />
          )}
        </AsyncView>
      </section>
    </div>
  );
}
