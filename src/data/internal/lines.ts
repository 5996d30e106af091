/**
 * Longest line kept, in UTF-16 units (8 Mi: 8–24 MB of text). A longer line is reported, not read: a file
 * without line breaks must not be held whole in memory. Real chat examples, even 128k-token ones, are
 * far shorter.
 */
export const MAX_LINE_CHARS = 8 * 1024 * 1024;

/**
 * Splits decoded text chunks into physical lines (LF, CRLF or a lone CR), numbered from 1. A line longer
 * than `maxChars` comes back as `{text: '', line, tooLong: true}` and its text is dropped as it streams.
 */
export async function* splitLines(
  chunks: AsyncIterable<string>,
  maxChars = MAX_LINE_CHARS,
): AsyncGenerator<{ text: string; line: number; tooLong?: boolean }> {
  let pending = '';
  let tooLong = false;
  let line = 1;
  let chunkEndedWithCR = false;
  const end = (text: string) => (tooLong ? { text: '', line: line++, tooLong: true } : { text, line: line++ });
  for await (const chunk of chunks) {
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      if (c !== 0x0a && c !== 0x0d) continue;
      const afterCR = i > 0 ? chunk.charCodeAt(i - 1) === 0x0d : chunkEndedWithCR;
      if (c === 0x0a && afterCR) {
        start = i + 1; // second half of CRLF: the CR ended the line
        continue;
      }
      yield end(pending + chunk.slice(start, i));
      pending = '';
      tooLong = false;
      start = i + 1;
    }
    if (chunk.length > 0) chunkEndedWithCR = chunk.charCodeAt(chunk.length - 1) === 0x0d;
    if (!tooLong) pending += chunk.slice(start);
    if (pending.length > maxChars) {
      tooLong = true;
      pending = '';
    }
  }
  if (pending !== '' || tooLong) yield end(pending);
}
