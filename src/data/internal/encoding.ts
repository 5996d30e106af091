/**
 * Text encodings of user files. Chinese spreadsheets export CSV as GBK/GB18030 by default, so a file
 * that is not valid UTF-8 is read as GB18030 (a superset of GBK and GB2312). Excel's "Unicode text"
 * export is UTF-16 with a BOM, recognised by that BOM.
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import iconv from 'iconv-lite';

/** What callers may ask for; `auto` detects. `gbk` is read as GB18030, which contains it. */
export const ENCODINGS = ['auto', 'utf8', 'gb18030', 'gbk', 'utf16le', 'utf16be'] as const;
export type EncodingOption = (typeof ENCODINGS)[number];
export type Encoding = Exclude<EncodingOption, 'auto' | 'gbk'>;

/** Reads the file once to pick its encoding: a BOM wins; else valid UTF-8 → utf8; else gb18030. */
export async function detectEncoding(file: string): Promise<Encoding> {
  const head = Buffer.alloc(3);
  const fh = await open(file, 'r');
  try {
    const { bytesRead } = await fh.read(head, 0, 3, 0);
    if (bytesRead >= 3 && head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf) return 'utf8';
    if (bytesRead >= 2 && head[0] === 0xff && head[1] === 0xfe) return 'utf16le';
    if (bytesRead >= 2 && head[0] === 0xfe && head[1] === 0xff) return 'utf16be';
  } finally {
    await fh.close();
  }
  // A streaming, fatal UTF-8 decode: linear time, constant memory. Any invalid sequence means the file
  // was not written as UTF-8; GB18030 is then by far the likeliest for Chinese data.
  const decoder = new TextDecoder('utf-8', { fatal: true });
  try {
    for await (const chunk of createReadStream(file)) decoder.decode(chunk as Buffer, { stream: true });
    decoder.decode();
    return 'utf8';
  } catch {
    return 'gb18030';
  }
}

/** Resolves `auto` and aliases to the encoding actually used for decoding. */
export async function resolveEncoding(file: string, option: EncodingOption): Promise<Encoding> {
  if (option === 'auto') return detectEncoding(file);
  return option === 'gbk' ? 'gb18030' : option;
}

/** The file's text as decoded string chunks, with any leading BOM removed. */
export async function* decodeFile(file: string, encoding: Encoding): AsyncGenerator<string> {
  const decoder = iconv.getDecoder(encoding, { stripBOM: true });
  let first = true;
  const emit = (text: string | undefined): string => {
    if (!text) return '';
    // iconv strips the BOM only for BOM-aware codecs; GB18030 has one too (it decodes to U+FEFF).
    if (first && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    if (text) first = false;
    return text;
  };
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 16 })) {
    const text = emit(decoder.write(chunk as Buffer));
    if (text) yield text;
  }
  const rest = emit(decoder.end());
  if (rest) yield rest;
}
