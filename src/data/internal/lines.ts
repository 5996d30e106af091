/** Splits decoded text chunks into physical lines (LF, CRLF or a lone CR), numbered from 1. */
export async function* splitLines(chunks: AsyncIterable<string>): AsyncGenerator<{ text: string; line: number }> {
  let pending = '';
  let line = 1;
  let chunkEndedWithCR = false;
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
      yield { text: pending + chunk.slice(start, i), line: line++ };
      pending = '';
      start = i + 1;
    }
    if (chunk.length > 0) chunkEndedWithCR = chunk.charCodeAt(chunk.length - 1) === 0x0d;
    pending += chunk.slice(start);
  }
  if (pending !== '') yield { text: pending, line };
}
