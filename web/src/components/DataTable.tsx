/**
 * The list table every page shows (files, jobs, checkpoints, models): a muted line when there is nothing,
 * else a scrollable table with one header row and a row per item.
 */
import type { ReactNode } from 'react';

export interface Column {
  label: ReactNode;
  /** e.g. `hide-phone` for a column a phone leaves out. */
  className?: string;
}

export function DataTable<T>({
  items,
  empty,
  testId,
  columns,
  row,
}: {
  items: readonly T[];
  /** Shown instead of the table when there are no items. */
  empty: ReactNode;
  testId?: string;
  columns: readonly Column[];
  /** One `<tr>` (with its key) per item. */
  row: (item: T) => ReactNode;
}) {
  if (items.length === 0) return <p className="muted">{empty}</p>;
  return (
    <div className="table-wrap">
      <table data-testid={testId}>
        <thead>
          <tr>
            {columns.map((c, i) => (
              <th key={i} className={c.className}>
                {c.label}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>{items.map(row)}</tbody>
      </table>
    </div>
  );
}
