/**
 * /v1/weitiao exports: create one for a model (a background task, answered at once with status `queued`),
 * list, retrieve, cancel, and download its files (the .gguf itself, or a tar of the folder).
 * The check's data over HTTP is an uploaded file id, never a server path; output goes under the home.
 */
import { Readable } from 'node:stream';
import { z } from 'zod';
import type { Context } from '../../context.js';
import { GgufQuantization } from '../../engine/index.js';
import {
  cancelExport,
  createExport,
  ExportFormat,
  ExportObject,
  listExports,
  openExportContent,
  recoverExports,
  retrieveExport,
} from '../../export/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

export const CreateExportBody = z.object({
  format: ExportFormat,
  /** gguf/ollama: the GGUF type (default f16). */
  quantize: GgufQuantization.optional(),
  adapter_only: z.boolean().default(false),
  /** Run the post-export check (default true). */
  check: z.boolean().default(true),
  /** The check's data: an uploaded chat file (default: the training job's validation file). */
  check_data: z.string().regex(/^file-[0-9a-z]+$/i, 'an uploaded file id (file-…)').optional(),
  check_max_examples: z.number().int().positive().max(100_000).default(200),
  check_threshold: z.number().min(0).max(1).optional(),
});

const ListQuery = z.object({
  model: z.string().optional(),
  after: z.string().optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
});

const ExportList = z.object({
  object: z.literal('list'),
  data: z.array(ExportObject),
  has_more: z.boolean(),
  first_id: z.string().nullable(),
  last_id: z.string().nullable(),
});

const ExportParams = z.object({ export_id: z.string().min(1) });
const EXPORT = { schema: ExportObject, name: 'Export' } as const;

export function exportRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  const base = '/v1/weitiao';
  const tag = 'Exports';
  // A server that starts finds the exports a dead process left running.
  recoverExports(ctx);

  routes.add(
    {
      method: 'post',
      path: `${base}/models/:model{.+}/exports`,
      operationId: 'create_export',
      summary: 'Export a model as a Hugging Face folder, a GGUF file or an Ollama bundle, then check it (background task)',
      tag,
      params: z.object({ model: z.string().min(1) }),
      body: CreateExportBody,
      response: { description: 'The export, queued', ...EXPORT },
    },
    (c, { params, body }) =>
      c.json(
        createExport(ctx, {
          model: params.model,
          format: body.format,
          quantize: body.quantize,
          adapterOnly: body.adapter_only,
          check: body.check,
          checkData: body.check_data,
          checkMaxExamples: body.check_max_examples,
          checkThreshold: body.check_threshold,
        }),
        202,
      ),
  );

  routes.add(
    {
      method: 'get',
      path: `${base}/exports`,
      operationId: 'list_exports',
      summary: 'List exports, newest first; `model` filters',
      tag,
      query: ListQuery,
      response: { description: 'A page of exports', schema: ExportList, name: 'ExportList' },
    },
    (c, { query }) => c.json(listExports(ctx, query)),
  );

  routes.add(
    {
      method: 'get',
      path: `${base}/exports/:export_id`,
      operationId: 'retrieve_export',
      summary: 'Retrieve an export: status, progress, files, the post-export check',
      tag,
      params: ExportParams,
      response: { description: 'The export', ...EXPORT },
    },
    (c, { params }) => c.json(retrieveExport(ctx, params.export_id)),
  );

  routes.add(
    {
      method: 'post',
      path: `${base}/exports/:export_id/cancel`,
      operationId: 'cancel_export',
      summary: 'Cancel a queued or running export',
      tag,
      params: ExportParams,
      response: { description: 'The export, cancelled', ...EXPORT },
    },
    (c, { params }) => c.json(cancelExport(ctx, params.export_id)),
  );

  routes.add(
    {
      method: 'get',
      path: `${base}/exports/:export_id/content`,
      operationId: 'download_export',
      summary: "Download an export's files: the .gguf of a GGUF export, else a tar of its folder",
      tag,
      params: ExportParams,
      response: { description: 'The file or the tar', contentType: 'application/octet-stream', alternatives: { 'application/x-tar': 'a tar of the folder' } },
    },
    async (c, { params }) => {
      // From object storage when the export was uploaded there, else from this host's folder.
      const content = await openExportContent(ctx, params.export_id);
      if (content.kind === 'file') {
        const body = Readable.toWeb(content.body) as ReadableStream;
        return c.body(body, 200, {
          'content-type': 'application/octet-stream',
          'content-length': String(content.size),
          'content-disposition': `attachment; filename="${content.name}"`,
        });
      }
      const body = Readable.toWeb(content.body) as ReadableStream;
      return c.body(body, 200, { 'content-type': 'application/x-tar', 'content-disposition': `attachment; filename="${content.name}.tar"` });
    },
  );
}
