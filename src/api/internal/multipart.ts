/**
 * A streaming multipart/form-data reader (RFC 7578). Web `Request.formData()` buffers the whole body,
 * which an upload of a training file must never do; this yields parts one at a time and each file part's
 * bytes as they arrive, holding at most one network chunk plus a boundary's length in memory.
 *
 * ```ts
 * for await (const part of readMultipart(req.body, boundary)) {
 *   if (part.filename === undefined) fields[part.name] = await part.text(1024);
 *   else await pipeline(Readable.from(part.body), createWriteStream(tmp));
 * }
 * ```
 * A part's body must be read (or left) before asking for the next part; what is left is skipped.
 */
import { WeitiaoError } from '../../errors.js';

export interface MultipartPart {
  name: string;
  /** Present (possibly empty) for file parts, absent for plain fields. */
  filename?: string;
  contentType?: string;
  /** The part's bytes as they arrive. */
  body: AsyncIterable<Buffer>;
  /** The whole part as UTF-8, refusing more than `maxBytes`. */
  text(maxBytes: number): Promise<string>;
}

const CRLF = Buffer.from('\r\n');
const HEADER_END = Buffer.from('\r\n\r\n');
const MAX_HEADER_BYTES = 16 * 1024;

const malformed = (why: string) => new WeitiaoError('invalid_request', `malformed multipart body: ${why} / multipart 请求体格式错误`);

/** The boundary of a `multipart/form-data; boundary=…` content type, or null when it is not one. */
export function multipartBoundary(contentType: string | undefined | null): string | null {
  if (!contentType || !/^multipart\/form-data\b/i.test(contentType)) return null;
  const m = contentType.match(/;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i);
  return m ? (m[1] ?? m[2]) : null;
}

export async function* readMultipart(stream: ReadableStream<Uint8Array>, boundary: string): AsyncGenerator<MultipartPart> {
  const reader = stream.getReader();
  let buf: Buffer = Buffer.alloc(0);
  let eof = false;
  const fill = async (): Promise<boolean> => {
    if (eof) return false;
    const { done, value } = await reader.read();
    if (done) {
      eof = true;
      return false;
    }
    buf = buf.length ? Buffer.concat([buf, value]) : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    return true;
  };

  try {
    // Preamble: everything before the first `--boundary` is ignored.
    const first = Buffer.from(`--${boundary}`);
    for (;;) {
      const i = buf.indexOf(first);
      if (i >= 0) {
        buf = buf.subarray(i + first.length);
        break;
      }
      if (buf.length > first.length) buf = buf.subarray(buf.length - first.length);
      if (!(await fill())) throw malformed('no boundary found');
    }

    const delimiter = Buffer.from(`\r\n--${boundary}`);
    for (;;) {
      // After a boundary: `--` ends the body, CRLF starts a part.
      while (buf.length < 2) if (!(await fill())) throw malformed('unexpected end after a boundary');
      if (buf[0] === 0x2d && buf[1] === 0x2d) return;
      if (!buf.subarray(0, 2).equals(CRLF)) throw malformed('boundary not followed by CRLF');
      buf = buf.subarray(2);

      let headerEnd: number;
      while ((headerEnd = buf.indexOf(HEADER_END)) < 0) {
        if (buf.length > MAX_HEADER_BYTES) throw malformed('part headers too long');
        if (!(await fill())) throw malformed('unexpected end in part headers');
      }
      const headers = parseHeaders(buf.subarray(0, headerEnd).toString('utf8'));
      buf = buf.subarray(headerEnd + HEADER_END.length);

      let finished = false;
      async function* body(): AsyncGenerator<Buffer> {
        if (finished) return;
        for (;;) {
          const i = buf.indexOf(delimiter);
          if (i >= 0) {
            const chunk = buf.subarray(0, i);
            buf = buf.subarray(i + delimiter.length);
            finished = true;
            if (chunk.length) yield chunk;
            return;
          }
          // Keep a tail that could be the start of the delimiter; hand out the rest now.
          const safe = buf.length - (delimiter.length - 1);
          if (safe > 0) {
            const chunk = buf.subarray(0, safe);
            buf = buf.subarray(safe);
            yield chunk;
          }
          if (!(await fill())) throw malformed('unexpected end in a part body');
        }
      }
      const part: MultipartPart = {
        ...headers,
        body: body(),
        async text(maxBytes) {
          const chunks: Buffer[] = [];
          let size = 0;
          for await (const chunk of part.body) {
            size += chunk.length;
            if (size > maxBytes) throw new WeitiaoError('invalid_request', `form field '${headers.name}' is longer than ${maxBytes} bytes / 表单字段过长`, { param: headers.name });
            chunks.push(chunk);
          }
          return Buffer.concat(chunks).toString('utf8');
        },
      };
      yield part;
      // Whatever the consumer left unread is skipped, so the next part starts at its boundary.
      if (!finished) for await (const _ of body()) void _;
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

function parseHeaders(raw: string): { name: string; filename?: string; contentType?: string } {
  let name: string | undefined;
  let filename: string | undefined;
  let filenameStar: string | undefined;
  let contentType: string | undefined;
  for (const line of raw.split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const key = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (key === 'content-type') contentType = value;
    if (key !== 'content-disposition') continue;
    // name="file"; filename="训练.jsonl"; filename*=UTF-8''%E8%AE%AD…
    for (const m of value.matchAll(/;\s*([\w*]+)=(?:"((?:[^"\\]|\\.)*)"|([^;]*))/g)) {
      const param = m[1].toLowerCase();
      const v = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3].trim();
      if (param === 'name') name = v;
      else if (param === 'filename') filename = decodePercentQuotes(v);
      else if (param === 'filename*') filenameStar = v;
    }
  }
  if (name === undefined) throw malformed('a part has no Content-Disposition name');
  if (filenameStar) {
    const m = filenameStar.match(/^[\w-]+'[^']*'(.*)$/);
    if (m) {
      try {
        filename = decodeURIComponent(m[1]);
      } catch {
        /* keep the plain filename */
      }
    }
  }
  return { name, filename, contentType };
}

/** Browsers and undici escape `"`, CR and LF in filenames as %22, %0D, %0A (WHATWG's multipart encoding). */
const decodePercentQuotes = (s: string) => s.replace(/%22/g, '"').replace(/%0D/gi, '\r').replace(/%0A/gi, '\n');
