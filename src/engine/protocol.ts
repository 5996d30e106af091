/**
 * The TypeScript ↔ engine protocol, version 1. Mirrors engine/weitiao_engine/protocol.py; a test runs
 * each command through the real engine so the two cannot drift apart silently.
 *
 * One request per process: the control plane runs `python -m weitiao_engine <command>`, writes the
 * request as one JSON line on stdin and reads JSON-line events from stdout (logs go to stderr).
 * The first event is `hello` with `protocol_version`; the last is `result` or `error`.
 *
 * The exception is `serve`, the warm inference process (src/engine/warm.ts): after its request line it
 * reads `ServeCall` lines until shutdown, and the `token`, `result` and `error` events of each call
 * carry its `request_id`.
 */

import { ChatRequest, CountTokensRequest, CreateTinyRequest, EstimateRequest, EvaluateRequest, ExportRequest, GradeRequest, ScoreAnswersRequest, TrainRequest } from './protocol/requests.js';
import { ChatResult, CountTokensResult, CreateTinyResult, EstimateResult, EvaluateResult, ExportResult, GradeResult, ScoreAnswersResult, TrainResult } from './protocol/results.js';

export * from './protocol/requests.js';
export * from './protocol/events.js';
export * from './protocol/results.js';

export const PROTOCOL_VERSION = 1;

/** Each command's request and result schemas, so `runEngine` is typed end to end. */
export const COMMANDS = {
  'create-tiny': { request: CreateTinyRequest, result: CreateTinyResult },
  'count-tokens': { request: CountTokensRequest, result: CountTokensResult },
  train: { request: TrainRequest, result: TrainResult },
  evaluate: { request: EvaluateRequest, result: EvaluateResult },
  chat: { request: ChatRequest, result: ChatResult },
  estimate: { request: EstimateRequest, result: EstimateResult },
  export: { request: ExportRequest, result: ExportResult },
  grade: { request: GradeRequest, result: GradeResult },
  'score-answers': { request: ScoreAnswersRequest, result: ScoreAnswersResult },
} as const;
export type EngineCommand = keyof typeof COMMANDS;

/** The calls a warm `serve` process answers, with their request and result schemas (see src/engine/warm.ts). */
export const SERVE_COMMANDS = {
  chat: COMMANDS.chat,
} as const;
export type ServeCommand = keyof typeof SERVE_COMMANDS;
