/**
 * Reward curves of a reinforcement job: the mean reward of each step's sampled answers and the validation reward
 * (greedy answers, at eval_interval steps), read from the job's metrics events — one event per step carries both.
 * Strings are local (en/zh) while the i18n tables move to web/src/i18n/; fold them in there (keys jobs.reward,
 * jobs.trainReward, jobs.validReward) once that lands.
 */
import type { JobEvent } from '../api';
import { useI18n } from '../i18n';
import { LineChart, type Series } from './LineChart';

const TEXT = {
  en: { title: 'Reward', train: 'mean reward (sampled answers)', valid: 'validation reward', step: 'step', waiting: 'No rewards yet' },
  zh: { title: '奖励', train: '平均奖励（采样回答）', valid: '验证奖励', step: '步数', waiting: '尚无奖励数据' },
} as const;

/** The two reward series in a job's events (empty when the job is not a reinforcement job). */
export function rewardSeries(events: JobEvent[], names: { train: string; valid: string }): Series[] {
  const train: Series['points'] = [];
  const valid: Series['points'] = [];
  for (const e of events) {
    if (e.type !== 'metrics') continue;
    const d = (e.data ?? {}) as { step?: unknown; train_mean_reward?: unknown; valid_mean_reward?: unknown };
    if (typeof d.step !== 'number') continue;
    if (typeof d.train_mean_reward === 'number') train.push({ x: d.step, y: d.train_mean_reward });
    if (typeof d.valid_mean_reward === 'number') valid.push({ x: d.step, y: d.valid_mean_reward });
  }
  // Events arrive newest first from the API; a resumed run may repeat a step (the later figure replaced it).
  const byStep = (points: Series['points']) => [...new Map(points.map((p) => [p.x, p])).values()].sort((a, b) => a.x - b.x);
  if (train.length === 0 && valid.length === 0) return [];
  return [
    { name: names.train, color: '#2563eb', points: byStep(train) },
    { name: names.valid, color: '#16a34a', points: byStep(valid), dots: true },
  ];
}

/** The chart; renders nothing for a job without rewards (supervised and DPO jobs). */
export function RewardCurves({ events }: { events: JobEvent[] }) {
  const text = TEXT[useI18n().lang];
  const series = rewardSeries(events, text);
  if (series.length === 0) return null;
  return <LineChart title={text.title} series={series} xLabel={text.step} yDomain={[0, 1]} empty={text.waiting} testId="reward-chart" />;
}
