/**
 * /v1/files: upload (multipart, streamed to disk, never whole in memory), list, retrieve, content, delete.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import type { Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import {
  CLIENT_PURPOSES,
  createFile,
  deleteFile,
  FileDeleted,
  FileObject,
  listFiles,
  ListFilesParams,
  openFileContent,
  retrieveFile,
} from '../../files/index.js';
import type { ApiEnv } from '../internal/auth.js';
import { multipartBoundary, readMultipart } from '../internal/multipart.js';
import type { RouteTable } from '../internal/routes.js';

const FileIdParams = z.object({ file_id: z.string().min(1) });

/** The upload form: the file's bytes and what they are for. */
export const UploadFileForm = z.object({
  file: z.custom<Readable>(() => true).meta({ type: 'string', format: 'binary', description: 'The file, e.g. a chat JSONL for fine-tuning' }),
  purpose: z.enum(CLIENT_PURPOSES as [string, ...string[]]).meta({ description: "What the file is for; `fine-tune-results` is the server's" }),
});

const FileList = z.object({
  object: z.literal('list'),
  data: z.array(FileObject),
  has_more: z.boolean(),
  first_id: z.string().nullable(),
  last_id: z.string().nullable(),
});

/** Multipart framing (boundaries, part headers, the purpose field) on top of the file itself. */
const FORM_OVERHEAD_BYTES = 64 * 1024;
const MAX_FIELD_BYTES = 64 * 1024;

export function fileRoutes(routes: RouteTable<ApiEnv>, ctx: Context, options: { maxUploadBytes: number }): void {
  const maxBytes = options.maxUploadBytes;

  routes.add(
    {
      method: 'post',
      path: '/v1/files',
      operationId: 'create_file',
      summary: 'Upload a file (multipart: `file`, `purpose`)',
      tag: 'Files',
      multipart: UploadFileForm,
      response: { description: 'The stored file', schema: FileObject, name: 'File' },
    },
    async (c) => {
      const boundary = multipartBoundary(c.req.header('content-type'));
      if (!boundary || !c.req.raw.body) {
        throw new WeitiaoError(
          'invalid_request',
          'expected a multipart/form-data body with `file` and `purpose` / 需要 multipart/form-data 请求体（file 和 purpose）',
          { param: 'file' },
        );
      }
      if (Number(c.req.header('content-length')) > maxBytes + FORM_OVERHEAD_BYTES) throw tooLarge(maxBytes);

      // Data files are checked line by line before they are stored; the client hanging up stops the check.
      const checked = { check: true, fromClient: true, signal: c.req.raw.signal };
      const fields: Record<string, string> = {};
      let stored: FileObject | undefined;
      let spooled: { dir: string; file: string; filename: string } | undefined;
      try {
        for await (const part of readMultipart(c.req.raw.body, boundary)) {
          if (part.filename === undefined) {
            fields[part.name] = await part.text(MAX_FIELD_BYTES);
            continue;
          }
          if (part.name !== 'file') continue; // other file fields are skipped, as OpenAI does
          if (stored || spooled) throw new WeitiaoError('invalid_request', 'only one `file` per upload / 每次只能上传一个文件', { param: 'file' });
          const filename = part.filename || 'upload';
          if (fields.purpose !== undefined) {
            // The purpose came first: stream straight into the file store.
            stored = await createFile(ctx, { source: Readable.from(part.body), filename, purpose: fields.purpose, maxBytes, ...checked });
          } else {
            // The SDKs send `file` before `purpose`; spool it (bounded) until we know what it is for.
            spooled = await spool(ctx, part.body, filename, maxBytes);
          }
        }
        if (!stored && !spooled) throw new WeitiaoError('invalid_request', 'missing `file` in the form / 表单中缺少 file', { param: 'file' });
        const form = UploadFileForm.pick({ purpose: true }).safeParse({ purpose: fields.purpose });
        if (!form.success) {
          const got = fields.purpose === undefined ? 'missing' : `'${fields.purpose}'`;
          throw new WeitiaoError('invalid_request', `purpose is ${got}; upload with one of ${CLIENT_PURPOSES.join(', ')} / 用途无效`, { param: 'purpose' });
        }
        if (spooled) stored = await createFile(ctx, { source: spooled.file, filename: spooled.filename, purpose: form.data.purpose, maxBytes, move: true, ...checked });
      } finally {
        if (spooled) await rm(spooled.dir, { recursive: true, force: true });
      }
      return c.json(stored!);
    },
  );

  routes.add(
    {
      method: 'get',
      path: '/v1/files',
      operationId: 'list_files',
      summary: 'List files, newest first',
      tag: 'Files',
      query: ListFilesParams,
      response: { description: 'A page of files', schema: FileList, name: 'FileList' },
    },
    (c, { query }) => c.json(listFiles(ctx, query)),
  );

  routes.add(
    {
      method: 'get',
      path: '/v1/files/:file_id',
      operationId: 'retrieve_file',
      summary: 'Retrieve a file',
      tag: 'Files',
      params: FileIdParams,
      response: { description: 'The file', schema: FileObject, name: 'File' },
    },
    (c, { params }) => c.json(retrieveFile(ctx, params.file_id)),
  );

  routes.add(
    {
      method: 'get',
      path: '/v1/files/:file_id/content',
      operationId: 'retrieve_file_content',
      summary: "A file's bytes",
      tag: 'Files',
      params: FileIdParams,
      response: { description: 'The file as stored', contentType: 'application/octet-stream' },
    },
    async (c, { params }) => {
      const file = retrieveFile(ctx, params.file_id);
      // From the store (object storage or the home), its sha256 checked as it streams.
      const stream = Readable.toWeb(await openFileContent(ctx, params.file_id)) as ReadableStream<Uint8Array>;
      return new Response(stream, {
        headers: {
          'Content-Type': 'application/octet-stream',
          'Content-Length': String(file.bytes),
          'Content-Disposition': `attachment; filename*=UTF-8''${encodeURIComponent(file.filename)}`,
        },
      });
    },
  );

  routes.add(
    {
      method: 'delete',
      path: '/v1/files/:file_id',
      operationId: 'delete_file',
      summary: 'Delete a file and its bytes',
      tag: 'Files',
      params: FileIdParams,
      response: { description: 'Deletion status', schema: FileDeleted, name: 'FileDeleted' },
    },
    async (c, { params }) => c.json(await deleteFile(ctx, params.file_id)),
  );
}

function tooLarge(maxBytes: number): WeitiaoError {
  return new WeitiaoError('payload_too_large', `file is larger than the limit of ${maxBytes} bytes / 文件超过大小上限 ${maxBytes} 字节`, {
    param: 'file',
  });
}

/** Writes a part to a private scratch directory under the home, stopping at `maxBytes`. */
async function spool(ctx: Context, body: AsyncIterable<Buffer>, filename: string, maxBytes: number) {
  const dir = path.join(ctx.home.cache, `upload-${randomBytes(8).toString('hex')}`);
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, 'upload');
  let bytes = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      done(bytes > maxBytes ? tooLarge(maxBytes) : null, chunk);
    },
  });
  try {
    await pipeline(Readable.from(body), counter, createWriteStream(file));
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return { dir, file, filename };
}
