/**
 * Small shared pieces: the loading line, the error box (a readable message, never a trace), status
 * badges and number formatting.
 */
import type { ReactNode } from 'react';
import type { JobStatus } from '../api';
import { useI18n } from '../i18n';

export function Loading({ label }: { label?: string }) {
  const { t } = useI18n();
  return (
    <div className="loading" role="status" data-testid="loading">
      <span className="spinner" aria-hidden /> {label ?? t('common.loading')}
    </div>
  );
}

/** The error box every failed request ends in; `onRetry` adds a retry button. */
export function ErrorMessage({ message, onRetry }: { message: string | undefined; onRetry?: () => void }) {
  const { t } = useI18n();
  if (!message) return null;
  return (
    <div className="error" role="alert" data-testid="error">
      <strong>{t('common.error')}:</strong> <span className="error-text">{message}</span>
      {onRetry && (
        <button type="button" className="link" onClick={onRetry}>
          {t('common.retry')}
        </button>
      )}
    </div>
  );
}

/** Loading → error → content, the shape of every data-backed section. */
export function AsyncView<T>({
  state,
  children,
}: {
  state: { data: T | undefined; error: string | undefined; loading: boolean; reload: () => void };
  children: (data: T) => ReactNode;
}) {
  if (state.error) return <ErrorMessage message={state.error} onRetry={state.reload} />;
  if (state.data === undefined) return state.loading ? <Loading /> : null;
  return <>{children(state.data)}</>;
}

export function StatusBadge({ status }: { status: JobStatus }) {
  const { t } = useI18n();
  return <span className={`badge status-${status}`}>{t(`status.${status}`)}</span>;
}

export function ProgressBar({ value }: { value: number | null }) {
  const pct = value === null ? null : Math.max(0, Math.min(1, value)) * 100;
  return (
    <span className="progress" aria-valuenow={pct ?? undefined} role="progressbar">
      <span style={{ width: `${pct ?? 0}%` }} />
      <em>{pct === null ? '—' : `${pct.toFixed(0)}%`}</em>
    </span>
  );
}

export const formatBytes = (n: number | null | undefined): string => {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) [v, i] = [v / 1024, i + 1];
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
};

export const formatTime = (unixSeconds: number | null | undefined): string =>
  unixSeconds ? new Date(unixSeconds * 1000).toLocaleString() : '—';

export const formatDuration = (seconds: number | null | undefined): string => {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
};

/** `digits` significant digits; thousands separators for large numbers, plain notation for small ones (2e-4 → 0.0002). */
export const formatNumber = (n: number | null | undefined, digits = 4): string => {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  const rounded = Number(n.toPrecision(digits));
  return Math.abs(rounded) >= 1000 ? rounded.toLocaleString('en-US') : String(rounded);
};

export const formatPct = (n: number | null | undefined): string =>
  n === null || n === undefined || !Number.isFinite(n) ? '—' : `${(n * 100).toFixed(1)}%`;
