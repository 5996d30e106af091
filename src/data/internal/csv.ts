/**
 * A streaming RFC 4180 reader for CSV and TSV: quoted fields may hold delimiters, doubled quotes and
 * line breaks (LF, CRLF or a lone CR). Each record carries the 1-based physical line where it starts,
 * so errors point at the line a person sees in their editor even when earlier fields span several lines.
 *
 * Lenient where spreadsheets are sloppy (a quote in the middle of an unquoted field is literal), strict
 * where data would be silently mangled (an unclosed quote or text after a closing quote is reported).
 */

export interface RawRecord {
  fields: string[];
  /** Physical line (1-based) where the record starts. */
  line: number;
  /** A syntax problem in this record (bilingual); the fields are still the best reading of it. */
  problem?: string;
}

const QUOTE = 0x22;
const CR = 0x0d;
const LF = 0x0a;

const enum State {
  Start, // at the start of a field
  Unquoted,
  Quoted,
  QuoteSeen, // inside quotes, just read a quote: closes the field unless another quote follows
  AfterClose, // a quoted field has closed; only a delimiter or line end should follow
}

/** Parses decoded text chunks into records. Blank lines are skipped, as Python's csv.DictReader does. */
export async function* parseDelimited(chunks: AsyncIterable<string>, delimiter: ',' | '\t'): AsyncGenerator<RawRecord> {
  const delim = delimiter.charCodeAt(0);
  let state = State.Start;
  let fields: string[] = [];
  let field = '';
  let recordStarted = false;
  let line = 1; // physical line of the character being read
  let recordLine = 1;
  let quoteLine = 1;
  let prevCR = false;
  let problem: string | undefined;

  const take = (): RawRecord => {
    fields.push(field);
    const record: RawRecord = problem ? { fields, line: recordLine, problem } : { fields, line: recordLine };
    fields = [];
    field = '';
    recordStarted = false;
    problem = undefined;
    state = State.Start;
    return record;
  };

  for await (const chunk of chunks) {
    let run = 0; // start of the pending run of literal characters in this chunk
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      const crlfTail = prevCR && c === LF;
      prevCR = c === CR;

      if (state === State.Quoted) {
        if (c === QUOTE) {
          field += chunk.slice(run, i);
          state = State.QuoteSeen;
        } else if (c === CR || (c === LF && !crlfTail)) {
          line++;
        }
        continue;
      }
      if (state === State.QuoteSeen) {
        if (c === QUOTE) {
          // "" inside quotes: a literal quote, which starts the next run
          state = State.Quoted;
          run = i;
          continue;
        }
        state = State.AfterClose;
        run = i;
      }

      if (c === delim) {
        field += chunk.slice(run, i);
        fields.push(field);
        field = '';
        state = State.Start;
        recordStarted = true;
        run = i + 1;
      } else if (c === CR || c === LF) {
        if (crlfTail) {
          run = i + 1; // the CR already ended the line
          continue;
        }
        field += chunk.slice(run, i);
        run = i + 1;
        line++;
        if (recordStarted || state !== State.Start) {
          yield take();
        }
        recordLine = line;
      } else if (c === QUOTE && state === State.Start) {
        state = State.Quoted;
        recordStarted = true;
        quoteLine = line;
        run = i + 1;
      } else {
        if (state === State.AfterClose) {
          const n = fields.length + 1;
          problem ??= `unexpected character '${chunk[i]}' after the closing quote of field ${n} / 第 ${n} 个字段的结束引号后有多余字符`;
        } else if (state === State.Start) {
          state = State.Unquoted;
        }
        recordStarted = true;
      }
    }
    if (state === State.Quoted || state === State.Unquoted || state === State.AfterClose) field += chunk.slice(run);
  }

  if (state === State.Quoted) {
    problem ??= `quoted field opened on line ${quoteLine} is never closed / 第 ${quoteLine} 行开始的引号字段没有闭合`;
  }
  if (recordStarted || state !== State.Start) yield take();
}
