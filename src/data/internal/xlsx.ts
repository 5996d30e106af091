/**
 * Excel workbooks (.xlsx) as a table of located rows, the same shape readTable gives for CSV, so a sheet
 * goes through the same mapping, checks and split. Lines are the sheet's own row numbers (what a person
 * sees in Excel). read-excel-file: pure JavaScript, small, maintained; it reads the whole sheet, so
 * uploads keep their size limit.
 */
import readXlsxFile from 'read-excel-file/node';
import { WeitiaoError } from '../../errors.js';
import { problem, type Problem } from './check.js';
import type { TableRow } from './source.js';

export interface XlsxOptions {
  /** A sheet name (Chinese names work) or its 1-based position; default the first sheet. */
  sheet?: string | number;
  /** The 1-based row holding the column names; rows above it (titles, notes) are ignored. */
  header_row: number;
}

function cellText(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (value instanceof Date) return value.toISOString();
  return String(value);
}

/**
 * Header names: a merged header cell has its text in the first column only, so an empty name right of a
 * named one becomes `<name>_2`, `<name>_3`…; an empty name with nothing to its left `column_<n>`.
 */
export function headerNames(cells: unknown[]): string[] {
  const names: string[] = [];
  let left = '';
  let k = 1;
  cells.forEach((cell, i) => {
    const text = cellText(cell).trim();
    if (text) {
      left = text;
      k = 1;
      names.push(text);
    } else {
      k++;
      names.push(left ? `${left}_${k}` : `column_${i + 1}`);
    }
  });
  return names;
}

export async function readXlsxTable(
  file: string,
  options: XlsxOptions,
): Promise<{ header: { line: number; columns: string[]; problems: Problem[] } | null; rows: AsyncGenerator<TableRow> }> {
  let sheets;
  try {
    sheets = await readXlsxFile(file, { trim: false });
  } catch (err) {
    throw new WeitiaoError('invalid_file', `${file}: cannot read as an Excel workbook: ${err instanceof Error ? err.message : String(err)} / 无法读取 Excel 文件`, {
      file,
      cause: err,
    });
  }
  const names = sheets.map((s) => s.sheet);
  const wanted = options.sheet ?? 1;
  const sheet = typeof wanted === 'number' ? sheets[wanted - 1] : sheets.find((s) => s.sheet === wanted);
  if (!sheet) {
    throw new WeitiaoError('invalid_request', `${file} has no sheet ${JSON.stringify(wanted)}; sheets: ${names.join(', ')} / 工作表不存在，可选：${names.join('、')}`, {
      param: 'sheet',
    });
  }
  const data = sheet.data;
  const headerIndex = options.header_row - 1;
  if (headerIndex >= data.length) return { header: null, rows: (async function* () {})() };
  const columns = headerNames(data[headerIndex]);
  const problems: Problem[] = [];
  const seen = new Set<string>();
  for (const c of columns) {
    if (seen.has(c)) problems.push(problem('duplicate_column', c, `column '${c}' appears twice in the header / 表头中的列 '${c}' 重复`));
    seen.add(c);
  }
  async function* rows(): AsyncGenerator<TableRow> {
    for (let r = headerIndex + 1; r < data.length; r++) {
      const cells = data[r];
      if (cells.every((c) => cellText(c).trim() === '')) continue; // blank rows carry no example
      const values: Record<string, string> = Object.create(null);
      columns.forEach((c, i) => (values[c] = cellText(cells[i])));
      yield { line: r + 1, values, problems: [] };
    }
  }
  return { header: { line: options.header_row, columns, problems }, rows: rows() };
}
