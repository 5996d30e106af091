/**
 * S3-compatible object storage (AWS S3, MinIO, Ceph, Aliyun OSS) through the AWS SDK. Uploads go through
 * lib-storage's `Upload` (multipart above the part size); every object carries the sha256 of its bytes in
 * its metadata, and every read checks it. Objects the engine needs are downloaded into a local copy
 * (`materialize`) laid out like the local backend, reused while its recorded sha256 matches the object's.
 */
import { createReadStream } from 'node:fs';
import { mkdir, rename } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { WeitiaoError } from '../../errors.js';
import type { ObjectInfo, ObjectStore } from '../index.js';
import { checksumMismatch, hashFile, verified } from './checksum.js';
import { currentMeta, keyPath, removeFile, writeAtomic, writeMeta } from './mirror.js';
import { notStored } from './local.js';

/** S3's smallest part (except the last). */
export const MIN_PART_SIZE = 5 * 1024 * 1024;
const DEFAULT_PART_SIZE = 16 * 1024 * 1024;

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, without slashes at either end ('' for none). */
  prefix: string;
  /** Where downloaded copies live (`<cache>/<key>`). */
  cache: string;
  /** Multipart part size in bytes (at least 5 MiB); objects larger than one part upload in parts. */
  partSize?: number;
}

export class S3Store implements ObjectStore {
  readonly kind = 's3' as const;
  private readonly client: S3Client;
  private readonly partSize: number;

  constructor(private readonly options: S3StoreOptions) {
    const endpoint = process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL || undefined;
    this.client = new S3Client({
      region: process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1',
      endpoint,
      // MinIO, Ceph and local servers address buckets by path, not by host name.
      forcePathStyle: endpoint !== undefined,
      // Our own sha256 is the end-to-end check; the SDK's default CRC trailers are not understood by every server.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    this.partSize = Math.max(options.partSize ?? DEFAULT_PART_SIZE, MIN_PART_SIZE);
  }

  get url(): string {
    return `s3://${this.options.bucket}/${this.options.prefix}`;
  }

  /** Streams `body` into the local copy while hashing it, then uploads that with its sha256. */
  async put(key: string, body: Readable): Promise<ObjectInfo> {
    const file = keyPath(this.options.cache, key);
    const { sha256, size } = await writeAtomic(file, body);
    try {
      await this.upload(key, file, sha256, size);
    } catch (err) {
      await removeFile(this.options.cache, file); // no local copy of an object that was not stored
      throw err;
    }
    await writeMeta(file, sha256);
    return { key, size, sha256, modified: new Date() };
  }

  /** Uploads a local file; with `move` it then becomes the local copy (no download needed later). */
  async putFile(key: string, source: string, options: { move?: boolean } = {}): Promise<ObjectInfo> {
    const { sha256, size } = await hashFile(source);
    await this.upload(key, source, sha256, size);
    if (options.move) {
      const file = keyPath(this.options.cache, key);
      await mkdir(path.dirname(file), { recursive: true });
      await rename(source, file).then(
        () => writeMeta(file, sha256),
        () => undefined, // another filesystem: the copy is downloaded when needed
      );
    }
    return { key, size, sha256, modified: new Date() };
  }

  async get(key: string): Promise<Readable> {
    const out = await this.call(key, () => this.client.send(new GetObjectCommand({ Bucket: this.options.bucket, Key: this.fullKey(key) })));
    return verified(key, out.Metadata?.sha256 ?? null, out.Body as Readable);
  }

  async getToFile(key: string, dest: string): Promise<ObjectInfo> {
    const out = await this.call(key, () => this.client.send(new GetObjectCommand({ Bucket: this.options.bucket, Key: this.fullKey(key) })));
    const expected = out.Metadata?.sha256 ?? null;
    const { sha256, size } = await writeAtomic(dest, out.Body as Readable, (actual) => {
      if (expected && actual !== expected) throw checksumMismatch(key, expected, actual);
    });
    return { key, size, sha256, modified: out.LastModified ?? new Date() };
  }

  async head(key: string): Promise<ObjectInfo | null> {
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.options.bucket, Key: this.fullKey(key) }));
      return { key, size: out.ContentLength ?? 0, sha256: out.Metadata?.sha256 ?? null, modified: out.LastModified ?? new Date(0), etag: out.ETag };
    } catch (err) {
      if (isNotFound(err)) return null;
      throw this.wrap(key, err);
    }
  }

  async delete(key: string): Promise<void> {
    await this.call(key, () => this.client.send(new DeleteObjectCommand({ Bucket: this.options.bucket, Key: this.fullKey(key) })));
    await removeFile(this.options.cache, keyPath(this.options.cache, key));
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    const out: ObjectInfo[] = [];
    let token: string | undefined;
    do {
      const page = await this.call(prefix, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: this.fullKey(prefix), ContinuationToken: token })),
      );
      for (const o of page.Contents ?? []) {
        // A listing carries no metadata: sha256 comes with head or get.
        out.push({ key: o.Key!.slice(this.keyPrefix().length), size: o.Size ?? 0, sha256: null, modified: o.LastModified ?? new Date(0), etag: o.ETag });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  async materialize(key: string): Promise<string> {
    const file = keyPath(this.options.cache, key);
    const remote = await this.head(key);
    if (!remote) throw notStored(key);
    const cached = currentMeta(file);
    if (cached && remote.sha256 && cached.sha256 === remote.sha256) return file;
    const { sha256 } = await this.getToFile(key, file);
    await writeMeta(file, sha256!);
    return file;
  }

  localPath(key: string): string {
    return keyPath(this.options.cache, key);
  }

  private async upload(key: string, file: string, sha256: string, size: number): Promise<void> {
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.options.bucket, Key: this.fullKey(key), Body: createReadStream(file), ContentLength: size, Metadata: { sha256 } },
      partSize: this.partSize,
      queueSize: 2,
      leavePartsOnError: false, // a failed multipart upload is aborted, not left to bill
    });
    await this.call(key, () => upload.done());
  }

  private keyPrefix(): string {
    return this.options.prefix ? `${this.options.prefix}/` : '';
  }

  private fullKey(key: string): string {
    return this.keyPrefix() + key;
  }

  private async call<T>(key: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (isNotFound(err)) throw notStored(key);
      throw this.wrap(key, err);
    }
  }

  private wrap(key: string, err: unknown): WeitiaoError {
    if (err instanceof WeitiaoError) return err;
    const message = err instanceof Error ? err.message || err.name : String(err);
    const unreachable = /ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNRESET/.test(`${message} ${(err as { code?: string }).code ?? ''}`);
    return new WeitiaoError(
      unreachable ? 'unavailable' : 'internal_error',
      `object storage ${this.url} failed on '${key}': ${message} / 对象存储操作失败：${key}`,
      { cause: err },
    );
  }
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  if (e?.name === 'NoSuchBucket') return false; // a configuration error, not a missing object
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}
