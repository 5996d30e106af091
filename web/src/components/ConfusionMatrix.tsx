/**
 * A confusion matrix as a table: rows are the true answers, columns the predictions; cells shaded by their
 * share of the row, the diagonal (correct) in green and the rest in red.
 */
export function ConfusionMatrix({ labels, matrix, caption }: { labels: string[]; matrix: number[][]; caption: string }) {
  return (
    <div className="table-wrap">
      <table className="confusion" data-testid="confusion-matrix">
        <caption>{caption}</caption>
        <thead>
          <tr>
            <th />
            {labels.map((l) => (
              <th key={l} scope="col">
                {l}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {labels.map((row, i) => {
            const total = matrix[i]?.reduce((s, v) => s + v, 0) || 1;
            return (
              <tr key={row}>
                <th scope="row">{row}</th>
                {labels.map((_, j) => {
                  const v = matrix[i]?.[j] ?? 0;
                  const share = v / total;
                  const color = i === j ? `rgba(22, 163, 74, ${0.1 + share * 0.6})` : `rgba(220, 38, 38, ${share * 0.6})`;
                  return (
                    <td key={j} style={{ background: v ? color : undefined }} title={`${(share * 100).toFixed(1)}%`}>
                      {v}
                    </td>
                  );
                })}
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
