/**
 * One error type for the whole control plane. Every failure a user can see is a WeitiaoError with a
 * code; one table maps codes to HTTP statuses (OpenAI's error body, so the official SDKs raise their
 * typed errors) and one to CLI exit codes. Anything else is wrapped as `internal_error`, keeping its cause.
 * A zod failure at any boundary becomes one through `fromZodError` / `parseOrThrow` below.
 */
import { z } from 'zod';

export const ERROR_CODES = {
  //                       HTTP  exit  OpenAI error.type
  invalid_request: /*   */ [400, 2, 'invalid_request_error'],
  invalid_file: /*      */ [400, 3, 'invalid_request_error'],
  unauthorized: /*      */ [401, 4, 'authentication_error'],
  permission_denied: /* */ [403, 4, 'permission_error'],
  not_found: /*         */ [404, 5, 'invalid_request_error'],
  conflict: /*          */ [409, 6, 'invalid_request_error'],
  /** A remote worker's call on a lease that no longer holds its job (expired, settled, cancelled): it drops the job (src/workers). */
  lease_lost: /*        */ [409, 6, 'invalid_request_error'],
  payload_too_large: /* */ [413, 2, 'invalid_request_error'],
  /** A request body in another media type than the route takes (JSON, or multipart for uploads). */
  unsupported_media_type: [415, 2, 'invalid_request_error'],
  /** A chat request longer than the serving backend's context (OpenAI's code of the same name; param `messages`). */
  context_length_exceeded: [400, 2, 'invalid_request_error'],
  unprocessable: /*     */ [422, 2, 'invalid_request_error'],
  rate_limited: /*      */ [429, 7, 'rate_limit_error'],
  cancelled: /*         */ [499, 130, 'cancelled'],
  engine_error: /*      */ [500, 8, 'server_error'],
  internal_error: /*    */ [500, 1, 'server_error'],
  engine_unavailable: /**/ [503, 9, 'server_error'],
  /** A remote service weitiao depends on (a model hub or its mirror) cannot be reached or keeps failing: try again later. */
  unavailable: /*       */ [503, 10, 'server_error'],
} as const satisfies Record<string, readonly [number, number, string]>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorDetails {
  /** The request parameter or record field at fault, e.g. `training_file` or `messages[1].role`. */
  param?: string;
  /** File and 1-based line for errors in user data. */
  file?: string;
  line?: number;
  cause?: unknown;
}

export class WeitiaoError extends Error {
  readonly code: ErrorCode;
  readonly param?: string;
  readonly file?: string;
  readonly line?: number;

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'WeitiaoError';
    this.code = code;
    this.param = details.param;
    this.file = details.file;
    this.line = details.line;
  }

  get httpStatus(): number {
    return ERROR_CODES[this.code][0];
  }

  get exitCode(): number {
    return ERROR_CODES[this.code][1];
  }

  /** OpenAI's wire shape: `{error: {message, type, param, code}}`. */
  toJSON(): { error: { message: string; type: string; param: string | null; code: string } } {
    return {
      error: { message: this.message, type: ERROR_CODES[this.code][2], param: this.param ?? null, code: this.code },
    };
  }

  /** Wraps anything thrown into a WeitiaoError; unknown errors become `internal_error` with their cause. */
  static from(err: unknown): WeitiaoError {
    if (err instanceof WeitiaoError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new WeitiaoError('internal_error', message, { cause: err });
  }
}

/** `file:line: field: message`, the form every data error is printed in. */
export function formatLocation(file: string | undefined, line: number | undefined, param?: string): string {
  const parts = [file && line ? `${file}:${line}` : file, param].filter(Boolean);
  return parts.join(': ');
}

// Absolute paths: a leading '/' not preceded by a word character, ':' (URLs) or '/', at least two segments.
// Segments stop at whitespace, quotes and (full-width) punctuation, so the Chinese half of a message survives.
const ABSOLUTE_PATH = /(?<![\w:/.~-])\/(?!v1\/)(?:[^\s/'"`,;:()<>[\]{}，。；：、（）“”‘’]+\/)+[^\s/'"`,;:()<>[\]{}，。；：、（）“”‘’]*/g;

/**
 * `text` without absolute server paths, for anything a client sees: a path under `root` (the home
 * directory) becomes relative to it (`jobs/ftjob-…/checkpoints/step-000004`), any other absolute path its
 * last segment. API routes (`/v1/…`) are left alone.
 */
export function hideServerPaths(text: string, root?: string): string {
  return text.replace(ABSOLUTE_PATH, (p) => {
    const trimmed = p.replace(/\/+$/, '');
    if (root && (trimmed === root || trimmed.startsWith(root + '/'))) return trimmed.slice(root.length + 1) || '.';
    return trimmed.slice(trimmed.lastIndexOf('/') + 1) || '.';
  });
}

/** The same error with server paths hidden from its message (and `file` cut to its name); itself when there were none. */
export function hideErrorPaths(err: WeitiaoError, root?: string): WeitiaoError {
  const message = hideServerPaths(err.message, root);
  const file = err.file && err.file.startsWith('/') ? err.file.slice(err.file.lastIndexOf('/') + 1) : err.file;
  if (message === err.message && file === err.file) return err;
  return new WeitiaoError(err.code, message, { param: err.param, line: err.line, file, cause: err });
}

/** `messages[1].role`: the form params are named in everywhere (see ErrorDetails.param). */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out ? `.${String(key)}` : String(key);
  }
  return out;
}

export interface ZodErrorOptions {
  /** What was invalid, both languages: `invalid <en> / <zh>无效: …` (default: the request / 请求). */
  where?: { en: string; zh: string };
  /** Where the parsed value sits in the caller's input, e.g. `grader` or `hyperparameters`: prefixed to each path. */
  param?: string;
  /** Default `invalid_request`; `engine_error` when the engine's own output fails its schema. */
  code?: ErrorCode;
}

/**
 * The one zod failure → WeitiaoError conversion (API bodies, service parameters, engine requests and results,
 * config files): the first offending field is `param`, it and up to four more are named in the message.
 */
export function fromZodError(err: z.ZodError, options: ZodErrorOptions = {}): WeitiaoError {
  const [first, ...rest] = err.issues;
  const at = (path: readonly PropertyKey[]) => formatPath([...(options.param ? [options.param] : []), ...path]);
  // An unknown key is itself the param at fault (zod reports it at the enclosing object; its message names the key).
  const pathOf = (issue: z.core.$ZodIssue) => at(issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys[0]] : issue.path);
  const describe = (issue: z.core.$ZodIssue) => {
    const p = at(issue.path);
    return p ? `${p}: ${issue.message}` : issue.message;
  };
  const more = rest.length ? ` (and ${rest.length} more: ${rest.slice(0, 4).map(describe).join('; ')})` : '';
  const { en, zh } = options.where ?? { en: 'request', zh: '请求' };
  return new WeitiaoError(options.code ?? 'invalid_request', `invalid ${en} / ${zh}无效: ${first ? describe(first) : 'failed validation'}${more}`, {
    param: (first && pathOf(first)) || options.param || undefined,
    cause: err,
  });
}

/** `schema.parse(value)`, failing as `fromZodError`. */
export function parseOrThrow<S extends z.ZodType>(schema: S, value: unknown, options: ZodErrorOptions = {}): z.output<S> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw fromZodError(parsed.error, options);
  return parsed.data;
}
