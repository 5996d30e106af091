/**
 * One schema per route: a route is declared once with its zod schemas (path params, query, JSON body,
 * response); the same declaration validates requests and generates `/openapi.json` (zod 4's own
 * `z.toJSONSchema`, so any schema a service exports works as it is, no wrappers).
 */
import type { Context as HonoContext, Env, Hono } from 'hono';
import { z } from 'zod';
import { parseOrThrow, WeitiaoError } from '../../errors.js';

type MaybeSchema = z.ZodType | undefined;
type Infer<S extends MaybeSchema> = S extends z.ZodType ? z.output<S> : undefined;

export interface RouteInput<P extends MaybeSchema, Q extends MaybeSchema, B extends MaybeSchema> {
  params: Infer<P>;
  query: Infer<Q>;
  body: Infer<B>;
}

export interface RouteSpec<P extends MaybeSchema, Q extends MaybeSchema, B extends MaybeSchema> {
  method: 'get' | 'post' | 'put' | 'delete';
  /** Hono's syntax; `:model{.+}` for a param that may contain '/' (model ids do). */
  path: string;
  operationId: string;
  summary: string;
  tag: string;
  params?: P;
  query?: Q;
  /** A JSON body, validated before the handler runs. */
  body?: B;
  /** A multipart body the handler streams itself; the schema documents its fields and validates the text ones. */
  multipart?: z.ZodObject;
  response: {
    description: string;
    schema?: z.ZodType;
    /** The component name in /openapi.json (default: from operationId); routes sharing a schema share a name. */
    name?: string;
    /** Default `application/json`. */
    contentType?: string;
    /** Other media types the same route can answer with, e.g. `text/event-stream` for `?stream=true`. */
    alternatives?: Record<string, string>;
  };
  /** Reachable without an API key (health, the OpenAPI document). */
  public?: boolean;
}

export type RouteHandler<E extends Env, P extends MaybeSchema, Q extends MaybeSchema, B extends MaybeSchema> = (
  c: HonoContext<E>,
  input: RouteInput<P, Q, B>,
) => Response | Promise<Response>;

type AnySpec = RouteSpec<MaybeSchema, MaybeSchema, MaybeSchema>;

export class RouteTable<E extends Env> {
  private readonly specs: AnySpec[] = [];

  constructor(
    private readonly app: Hono<E>,
    private readonly options: {
      maxJsonBytes: number;
      /** Runs on every route's validated input before its handler (the project object guard, scope.ts). */
      guard?: (c: HonoContext<E>, input: { params: unknown; body: unknown }) => void;
    },
  ) {}

  /** Registers `spec` on the app with a handler that receives the validated input. */
  add<P extends MaybeSchema = undefined, Q extends MaybeSchema = undefined, B extends MaybeSchema = undefined>(
    spec: RouteSpec<P, Q, B>,
    handler: RouteHandler<E, P, Q, B>,
  ): void {
    this.specs.push(spec as AnySpec);
    this.app.on(spec.method.toUpperCase(), spec.path, async (c) => {
      const params = spec.params ? validate(spec.params, c.req.param(), { en: 'path parameter', zh: '路径参数' }) : undefined;
      const query = spec.query ? validate(spec.query, parseQuery(new URL(c.req.url).searchParams), { en: 'query parameter', zh: '查询参数' }) : undefined;
      // Objects named in the path and query first: another project's is 404 before any complaint about the body.
      this.options.guard?.(c, { params, body: query });
      const body = spec.body ? validate(spec.body, await readJsonBody(c.req.raw, this.options.maxJsonBytes)) : undefined;
      this.options.guard?.(c, { params: undefined, body });
      return handler(c, { params, query, body } as RouteInput<P, Q, B>);
    });
  }

  /** The OpenAPI 3.1 document of every route added so far. */
  openapi(info: { title: string; version: string; description?: string }): Record<string, unknown> {
    const requests = z.registry<{ id: string }>();
    const responses = z.registry<{ id: string }>();
    // One component per schema object, named by the first route that uses it.
    const component = (registry: z.core.$ZodRegistry<{ id: string }>, schema: z.ZodType, name: string): string => {
      const existing = registry.get(schema)?.id;
      if (existing) return existing;
      registry.add(schema, { id: name });
      return name;
    };
    const paths: Record<string, Record<string, unknown>> = {};
    const ref = (id: string) => ({ $ref: `#/components/schemas/${id}` });
    const pascal = (s: string) => s.replace(/(^|_)([a-z])/g, (_, __, ch: string) => ch.toUpperCase());

    for (const spec of this.specs) {
      const name = pascal(spec.operationId);
      const parameters: unknown[] = [];
      for (const [key, schema] of Object.entries((spec.params as z.ZodObject | undefined)?.shape ?? {})) {
        parameters.push({ name: key, in: 'path', required: true, schema: fieldSchema(schema as z.ZodType) });
      }
      for (const [key, schema] of Object.entries((spec.query as z.ZodObject | undefined)?.shape ?? {})) {
        const s = schema as z.ZodType;
        const json = fieldSchema(s);
        parameters.push({
          name: key,
          in: 'query',
          required: !s.safeParse(undefined).success,
          schema: json,
          ...(s.description ? { description: s.description } : {}),
          // `metadata[key]=value`, as OpenAI's list endpoints take it
          ...(json.type === 'object' ? { style: 'deepObject', explode: true } : {}),
        });
      }

      const op: Record<string, unknown> = {
        operationId: spec.operationId,
        summary: spec.summary,
        tags: [spec.tag],
        ...(parameters.length ? { parameters } : {}),
      };
      if (spec.body) {
        const id = component(requests, spec.body, `${name}Request`);
        op.requestBody = { required: true, content: { 'application/json': { schema: ref(id) } } };
      } else if (spec.multipart) {
        const id = component(requests, spec.multipart, `${name}Request`);
        op.requestBody = { required: true, content: { 'multipart/form-data': { schema: ref(id) } } };
      }
      const content: Record<string, unknown> = {};
      if (spec.response.schema) {
        const id = component(responses, spec.response.schema, spec.response.name ?? `${name}Response`);
        content[spec.response.contentType ?? 'application/json'] = { schema: ref(id) };
      } else if (spec.response.contentType) {
        content[spec.response.contentType] = {};
      }
      for (const [type, description] of Object.entries(spec.response.alternatives ?? {})) {
        content[type] = { schema: { type: 'string', description } };
      }
      op.responses = {
        200: { description: spec.response.description, ...(Object.keys(content).length ? { content } : {}) },
        default: { description: "An error in OpenAI's shape", content: { 'application/json': { schema: ref('Error') } } },
      };
      if (spec.public) op.security = [];

      const oaPath = spec.path.replace(/:(\w+)(\{[^}]*\})?/g, '{$1}');
      (paths[oaPath] ??= {})[spec.method] = op;
    }

    const toComponents = (registry: z.core.$ZodRegistry<{ id: string }>, io: 'input' | 'output') =>
      z.toJSONSchema(registry, {
        io,
        target: 'draft-2020-12',
        unrepresentable: 'any',
        uri: (id) => `#/components/schemas/${id}`,
      }).schemas;
    const schemas = { ...toComponents(requests, 'input'), ...toComponents(responses, 'output'), Error: ERROR_SCHEMA };
    for (const s of Object.values(schemas)) {
      delete (s as Record<string, unknown>).$schema;
      delete (s as Record<string, unknown>).$id;
    }

    return {
      openapi: '3.1.0',
      info,
      paths,
      components: { schemas, securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', description: '`weitiao keys create`' } } },
      security: [{ bearerAuth: [] }],
    };
  }
}

const ERROR_SCHEMA = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['message', 'type', 'param', 'code'],
      properties: {
        message: { type: 'string' },
        type: { type: 'string', description: 'invalid_request_error | authentication_error | server_error | …' },
        param: { type: ['string', 'null'], description: 'the parameter or data line at fault, e.g. `training_file` or `line 3: messages[1].role`' },
        code: { type: 'string' },
      },
    },
  },
};

function fieldSchema(schema: z.ZodType): Record<string, unknown> {
  const json = z.toJSONSchema(schema, { io: 'input', target: 'draft-2020-12', unrepresentable: 'any' }) as Record<string, unknown>;
  delete json.$schema;
  return json;
}

function validate<S extends z.ZodType>(schema: S, value: unknown, where?: { en: string; zh: string }): z.output<S> {
  return parseOrThrow(schema, value, { where });
}

/**
 * Query string → object; `metadata[key]=value` becomes `{metadata: {key: value}}` (OpenAI's form for
 * object-valued query params). A repeated key keeps its last value.
 */
export function parseQuery(params: URLSearchParams): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of params) {
    const m = key.match(/^([^[\]]+)\[([^[\]]*)\]$/);
    if (m) {
      const inner = out[m[1]];
      const obj = inner && typeof inner === 'object' ? (inner as Record<string, string>) : {};
      obj[m[2]] = value;
      out[m[1]] = obj;
    } else {
      out[key] = value;
    }
  }
  return out;
}

/** Reads a JSON body without ever holding more than `maxBytes`; an empty body is `{}`. */
export async function readJsonBody(req: Request, maxBytes: number): Promise<unknown> {
  const declared = Number(req.headers.get('content-length'));
  const tooLarge = () =>
    new WeitiaoError('payload_too_large', `request body is larger than ${maxBytes} bytes / 请求体超过 ${maxBytes} 字节`);
  if (declared > maxBytes) throw tooLarge();
  if (!req.body) return {};
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new WeitiaoError('invalid_request', `request body is not valid JSON (${(err as Error).message}) / 请求体不是有效的 JSON`);
  }
}
