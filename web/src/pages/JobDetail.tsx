/**
 * One job, live: loss and accuracy charts drawn from its metrics events, the events log, checkpoints, and
 * cancel/pause/resume. Events arrive over the SSE stream (`?stream=true`); if the stream cannot be opened
 * or drops, the page polls every 2 s instead, so it always keeps updating without a reload.
 */
import { useEffect, useMemo, useRef, useState } from 'react';
import { ApiError, api, messageOf, readSSE, send, type Checkpoint, type Job, type JobEvent, type List } from '../api';
import { DataTable } from '../components/DataTable';
import { LineChart, type Series } from '../components/LineChart';
import { JobForgettingCheck } from '../components/StoredReport';
import { AsyncView, ErrorMessage, Loading, ProgressBar, StatusBadge, formatNumber, formatTime } from '../components/ui';
import { RewardCurves } from '../components/RewardCurves';
import { useAction, useAsync, useInterval } from '../hooks';
import { useI18n } from '../i18n';
import { href } from '../router';
import { FINISHED, jobProgress } from './Jobs';

const POLL_MS = 2000;
/** Events arriving in a burst (the stream replays a job's history) are rendered in one batch. */
const FLUSH_MS = 150;

type Mode = 'connecting' | 'live' | 'polling';

/**
 * Every event of the job, oldest first, then new ones as they come. The stream without a cursor replays
 * the history and follows the job until it finishes or pauses; polling (`order=asc&after=<last id>`)
 * takes over whenever the stream is unavailable or has ended while the job can still change.
 */
function useJobEvents(jobId: string, finished: boolean) {
  const [events, setEvents] = useState<JobEvent[]>([]);
  const [mode, setMode] = useState<Mode>('connecting');
  const [error, setError] = useState<string>();
  const seen = useRef(new Set<string>());
  const lastId = useRef<string | undefined>(undefined);
  const pending = useRef<JobEvent[]>([]);
  const flushTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);

  const flush = () => {
    flushTimer.current = undefined;
    const batch = pending.current;
    pending.current = [];
    if (batch.length) setEvents((old) => [...old, ...batch]);
  };
  const add = (e: JobEvent) => {
    if (!e || typeof e.id !== 'string' || seen.current.has(e.id)) return;
    seen.current.add(e.id);
    lastId.current = e.id;
    pending.current.push(e);
    flushTimer.current ??= setTimeout(flush, FLUSH_MS);
  };

  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    seen.current = new Set();
    lastId.current = undefined;
    pending.current = [];
    setEvents([]);
    setMode('connecting');
    (async () => {
      const res = await send(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events`, {
        signal,
        timeoutMs: 30_000, // until the headers; after that a live stream has no end time
        query: { stream: 'true' },
      });
      if (!res.headers.get('content-type')?.includes('text/event-stream')) throw new Error('not an event stream');
      setMode('live');
      setError(undefined);
      await readSSE(res, (data) => {
        const parsed = JSON.parse(data) as JobEvent & { error?: { message?: string } };
        if (parsed.error) setError(parsed.error.message ?? 'stream error');
        else add(parsed);
      });
    })()
      .catch((err) => {
        // A 404 or 401 is worth showing; anything else just means "poll instead".
        if (!signal.aborted && err instanceof ApiError && err.status >= 400) setError(messageOf(err));
      })
      .finally(() => {
        if (signal.aborted) return;
        flush();
        setMode('polling');
      });
    return () => {
      controller.abort();
      if (flushTimer.current) clearTimeout(flushTimer.current);
      flushTimer.current = undefined;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [jobId]);

  // Polling: whatever came after the newest event seen, in reading order.
  const [tick, setTick] = useState(0);
  useInterval(() => setTick((n) => n + 1), POLL_MS, mode === 'polling' && !finished);
  useEffect(() => {
    if (mode !== 'polling' || tick === 0) return;
    const controller = new AbortController();
    api<List<JobEvent>>(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events`, {
      signal: controller.signal,
      query: { order: 'asc', limit: 1000, after: lastId.current },
    })
      .then((res) => {
        res.data.forEach(add);
        flush();
        setError(undefined);
      })
      .catch((err) => !controller.signal.aborted && setError(messageOf(err)));
    return () => controller.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [tick, mode, jobId]);

  return { events, mode, error };
}

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

/** The chart series in a job's events: losses, and accuracy (label accuracy when the data is a label set). */
export function seriesFromEvents(events: JobEvent[], t: (k: 'jobs.trainLoss' | 'jobs.validLoss' | 'jobs.labelAcc' | 'jobs.macroF1' | 'jobs.trainAcc' | 'jobs.validAcc') => string) {
  const trainLoss: Series['points'] = [];
  const validLoss: Series['points'] = [];
  const labelAcc: Series['points'] = [];
  const macroF1: Series['points'] = [];
  const trainAcc: Series['points'] = [];
  const validAcc: Series['points'] = [];
  for (const e of events) {
    const d = e.data as Record<string, unknown> | null; // engine figures: the wire leaves `data` open
    if (!d) continue;
    const step = num(d.step);
    if (step === undefined) continue;
    // The same step can be reported twice (a metrics and an eval event): keep the newest value.
    const push = (arr: Series['points'], v: unknown) => {
      const y = num(v);
      if (y === undefined) return;
      if (arr.at(-1)?.x === step) arr[arr.length - 1] = { x: step, y };
      else arr.push({ x: step, y });
    };
    push(trainLoss, d.train_loss);
    push(validLoss, d.valid_loss ?? d.full_valid_loss);
    push(trainAcc, d.train_mean_token_accuracy);
    push(validAcc, d.valid_mean_token_accuracy);
    const lm = (d.label_metrics ?? null) as { accuracy?: unknown; macro_f1?: unknown } | null;
    if (lm) {
      push(labelAcc, lm.accuracy);
      push(macroF1, lm.macro_f1);
    }
  }
  const loss: Series[] = [
    { name: t('jobs.trainLoss'), color: '#2563eb', points: trainLoss },
    { name: t('jobs.validLoss'), color: '#ea580c', points: validLoss, dots: true },
  ].filter((s) => s.points.length);
  const accuracy: Series[] = labelAcc.length
    ? [
        { name: t('jobs.labelAcc'), color: '#16a34a', points: labelAcc, dots: true },
        { name: t('jobs.macroF1'), color: '#9333ea', points: macroF1, dots: true },
      ]
    : [
        { name: t('jobs.trainAcc'), color: '#16a34a', points: trainAcc },
        { name: t('jobs.validAcc'), color: '#9333ea', points: validAcc, dots: true },
      ];
  return { loss, accuracy: accuracy.filter((s) => s.points.length), isLabelSet: labelAcc.length > 0 };
}

export function JobDetail({ id }: { id: string }) {
  const { t } = useI18n();
  const job = useAsync((signal) => api<Job>(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`, { signal }), [id]);
  const finished = job.data ? FINISHED.has(job.data.status) : false;
  useInterval(job.reload, POLL_MS, !!job.data && !finished && !job.loading);
  const { events, mode, error: eventsError } = useJobEvents(id, finished);

  const checkpointCount = events.filter((e) => /checkpoint/i.test(e.message)).length;
  const checkpoints = useAsync(
    (signal) => api<List<Checkpoint>>(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints`, { signal, query: { limit: 100 } }),
    [id, checkpointCount, finished],
  );

  const action = useAction(async (verb: 'cancel' | 'pause' | 'resume') => {
    const updated = await api<Job>(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${verb}`, { method: 'POST' });
    job.setData(updated);
  });

  const { loss, accuracy, isLabelSet } = useMemo(() => seriesFromEvents(events, t), [events, t]);
  // The newest metrics event is fresher than the job object (polled every 2 s).
  const liveProgress = useMemo(() => {
    for (let i = events.length - 1; i >= 0; i--) {
      const d = events[i].data as { step?: unknown; total_steps?: unknown } | null | undefined;
      if (d && typeof d.step === 'number' && typeof d.total_steps === 'number' && d.total_steps > 0) return d.step / d.total_steps;
    }
    return null;
  }, [events]);

  if (!job.data) {
    return (
      <div className="page">
        <a href={href('jobs')}>← {t('jobs.back')}</a>
        {job.error ? <ErrorMessage message={job.error} onRetry={job.reload} /> : <Loading />}
      </div>
    );
  }
  const j = job.data;
  const resolved = j.weitiao?.hyperparameters;
  const hp: Record<string, unknown> = resolved
    ? Object.fromEntries(Object.entries(resolved).filter(([k]) => k !== 'auto' && k !== 'estimated_total_steps'))
    : ((j.method.type === 'supervised' ? j.method.supervised.hyperparameters : null) ?? j.hyperparameters ?? {});
  const canPause = j.status === 'running' || j.status === 'queued';
  const canResume = j.status === 'paused';
  const canCancel = !FINISHED.has(j.status);

  return (
    <div className="page" data-testid="job-page">
      <a href={href('jobs')}>← {t('jobs.back')}</a>
      <h1 className="mono">{j.id}</h1>
      <section className="card">
        <div className="job-head">
          <StatusBadge status={j.status} />
          <ProgressBar value={j.status === 'running' && liveProgress !== null ? liveProgress : jobProgress(j)} />
          <span className={`live ${mode}`} data-testid="live-mode">
            {mode === 'live' ? `● ${t('jobs.live')}` : mode === 'polling' && !finished ? t('jobs.polling') : ''}
          </span>
          <span className="spacer" />
          {canPause && (
            <button type="button" onClick={() => void action.run('pause')} disabled={action.running}>
              {t('jobs.pause')}
            </button>
          )}
          {canResume && (
            <button type="button" onClick={() => void action.run('resume')} disabled={action.running}>
              {t('jobs.resume')}
            </button>
          )}
          {canCancel && (
            <button
              type="button"
              className="danger"
              disabled={action.running}
              onClick={() => window.confirm(t('jobs.confirmCancel', { id: j.id })) && void action.run('cancel')}
            >
              {t('jobs.cancel')}
            </button>
          )}
        </div>
        <ErrorMessage message={action.error} />
        {j.error && <ErrorMessage message={`${j.error.message}${j.error.param ? ` (${j.error.param})` : ''}`} />}
        <dl className="kv">
          <dt>{t('common.model')}</dt>
          <dd className="mono">{j.model}</dd>
          <dt>{t('jobs.fineTunedModel')}</dt>
          <dd className="mono" data-testid="fine-tuned-model">
            {j.fine_tuned_model ?? '—'}
            {j.fine_tuned_model && (
              <>
                {' '}
                <a href={href('playground', j.fine_tuned_model, j.model)}>{t('jobs.tryIt')}</a> ·{' '}
                <a href={href('evaluation', j.fine_tuned_model, j.validation_file ?? '', j.model)}>{t('jobs.evaluate')}</a>
              </>
            )}
          </dd>
          <dt>{t('new.trainingFile')}</dt>
          <dd className="mono">{j.training_file}</dd>
          <dt>{t('new.validationFile')}</dt>
          <dd className="mono">{j.validation_file ?? '—'}</dd>
          <dt>{t('jobs.hyperparameters')}</dt>
          <dd className="mono small">
            {Object.entries(hp)
              .map(([k, v]) => `${k}=${typeof v === 'number' ? formatNumber(v) : String(v)}`)
              .join(' · ') || '—'}
          </dd>
          {j.weitiao?.controls && (
            <>
              <dt>{t('jobs.controls')}</dt>
              <dd className="mono small" data-testid="job-controls">
                {Object.entries(j.weitiao.controls)
                  .map(([k, v]) => `${k}=${String(v)}`)
                  .join(' · ')}
              </dd>
            </>
          )}
          <dt>{t('jobs.trainedTokens')}</dt>
          <dd>{formatNumber(j.trained_tokens, 12)}</dd>
          {j.estimated_finish && !finished && (
            <>
              <dt>{t('jobs.eta')}</dt>
              <dd>{formatTime(j.estimated_finish)}</dd>
            </>
          )}
        </dl>
      </section>

      <ErrorMessage message={eventsError} />
      {j.status === 'succeeded' && <JobForgettingCheck jobId={j.id} />}
      <section className="card charts">
        <LineChart title={t('jobs.loss')} series={loss} xLabel={t('jobs.step')} empty={t('jobs.waiting')} testId="loss-chart" />
        {(accuracy.length > 0 || isLabelSet) && (
          <LineChart title={t('jobs.accuracy')} series={accuracy} xLabel={t('jobs.step')} yDomain={[0, 1]} testId="accuracy-chart" />
        )}
        <RewardCurves events={events} />
      </section>

      <section className="card">
        <h2>{t('jobs.checkpoints')}</h2>
        <AsyncView state={checkpoints}>
          {(list) => (
            <DataTable
              items={list.data}
              empty={t('jobs.noCheckpoints')}
              testId="checkpoints"
              columns={[{ label: t('jobs.step') }, { label: t('jobs.trainLoss') }, { label: t('jobs.validLoss') }, { label: t('common.model') }]}
              row={(c) => (
                <tr key={c.id}>
                  <td>{c.step_number}</td>
                  <td>{formatNumber(c.metrics.train_loss ?? null)}</td>
                  <td>{formatNumber(c.metrics.valid_loss ?? c.metrics.full_valid_loss ?? null)}</td>
                  <td className="mono small">
                    <a href={href('playground', c.fine_tuned_model_checkpoint)}>{c.fine_tuned_model_checkpoint}</a>
                  </td>
                </tr>
              )}
            />
          )}
        </AsyncView>
      </section>

      <section className="card">
        <h2>
          {t('jobs.events')} <span className="muted small">({events.length})</span>
        </h2>
        <ol className="events" data-testid="events" reversed>
          {[...events]
            .reverse()
            .slice(0, 300)
            .map((e) => (
              <li key={e.id} className={`event level-${e.level}`}>
                <span className="muted small mono">{new Date(e.created_at * 1000).toLocaleTimeString()}</span> {e.message}
              </li>
            ))}
        </ol>
      </section>
    </div>
  );
}
