/**
 * Every model evaluated on one stored file, ranked (GET /v1/weitiao/leaderboard, src/eval/results.ts), each
 * row linked to the stored report it comes from.
 */
import type { Leaderboard as Board } from '../../../src/eval/results';
import { api } from '../api';
import { useAsync } from '../hooks';
import { useEvalText } from './eval-text';
import { href } from '../router';
import { AsyncView, formatNumber } from './ui';

export function Leaderboard({ fileId, reload = '' }: { fileId: string; reload?: string }) {
  const text = useEvalText();
  const state = useAsync((signal) => api<Board>('/v1/weitiao/leaderboard', { signal, query: { file_id: fileId } }), [fileId, reload]);
  return (
    <section className="card" data-testid="leaderboard">
      <h2>{text.leaderboard}</h2>
      <AsyncView state={state}>
        {(b) =>
          b.rows.length === 0 ? (
            <p className="muted">{text.noStored}</p>
          ) : (
            <div className="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th>#</th>
                    <th>{text.system}</th>
                    <th>{b.metric} [95% CI]</th>
                    <th>{text.report}</th>
                  </tr>
                </thead>
                <tbody>
                  {b.rows.map((r) => (
                    <tr key={r.system}>
                      <td>{r.rank}</td>
                      <td className="mono small">{r.system}</td>
                      <td>
                        {formatNumber(r.value)}
                        {r.ci_low !== null && r.ci_high !== null && <span className="muted small"> [{formatNumber(r.ci_low)}, {formatNumber(r.ci_high)}]</span>}
                      </td>
                      <td>
                        <a href={href('report', r.result_id)}>{new Date(r.evaluated_at * 1000).toLocaleString()}</a>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )
        }
      </AsyncView>
    </section>
  );
}
