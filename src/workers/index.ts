/**
 * Remote workers (issue 19): GPU hosts that reach the API only over HTTP and run its jobs. This is the
 * domain's entry module.
 *   protocol.ts         the wire (zod schemas, WORKER_PROTOCOL_VERSION), shared by both sides
 *   leases.ts           the server side: claim, inputs, events, uploads, finish, the lease reaper
 *   groups.ts           multi-node runs: gang claims (ranks, rendezvous address), group fencing and reaping
 *   transfer-server.ts  the server's tar streams, sha256 and verified, atomic uploads
 * The server keeps every store write and runs one job's phases with src/jobs' own functions (startRun,
 * prepareRun, recordEngineEvent, finishRun), so a remote run is recorded exactly as a local one.
 */
export * from './protocol.js';
export { leaseSeconds, leaseService, LeaseService, type InputSource } from './leases.js';
export { fileDigest, tarStream } from './transfer-server.js';
