/**
 * A stored evaluation report (`#/report/<id>`) and a job's forgetting check, drawn by the same code as the
 * offline HTML report (src/eval/report-parts.ts: metrics with intervals, per-class table, confusion matrix,
 * length and latency charts, worst examples side by side). Its strings are escaped there, so the markup is
 * set as it is.
 */
import { reportSections, type ReportInput } from '../../../src/eval/report-parts';
import type { StoredEvalResult } from '../../../src/eval/results';
import { api, ApiError } from '../api';
import { useAsync } from '../hooks';
import { useEvalText } from './eval-text';
import { AsyncView } from './ui';

export function ReportBody({ report, testId }: { report: ReportInput; testId: string }) {
  const { title, body } = reportSections(report);
  return (
    <section className="card report-html" data-testid={testId}>
      <h2>{title}</h2>
      <div className="table-wrap" dangerouslySetInnerHTML={{ __html: body }} />
    </section>
  );
}

export function StoredReport({ id }: { id: string }) {
  const text = useEvalText();
  const state = useAsync((signal) => api<StoredEvalResult>(`/v1/weitiao/eval_results/${encodeURIComponent(id)}`, { signal }), [id]);
  return (
    <div className="page">
      <h1>{text.report}</h1>
      <AsyncView state={state}>
        {(r) => (
          <>
            <p className="muted small">
              {r.dataset_name} · {new Date(r.created_at * 1000).toLocaleString()}
            </p>
            <ReportBody report={r.report} testId="stored-report" />
          </>
        )}
      </AsyncView>
    </div>
  );
}

/** The job's forgetting check when it has one; nothing otherwise. */
export function JobForgettingCheck({ jobId }: { jobId: string }) {
  const state = useAsync(async (signal) => {
    try {
      return await api<ReportInput>(`/v1/weitiao/jobs/${encodeURIComponent(jobId)}/forgetting_check`, { signal });
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }
  }, [jobId]);
  return <AsyncView state={state}>{(r) => (r ? <ReportBody report={r} testId="forgetting-check" /> : null)}</AsyncView>;
}
