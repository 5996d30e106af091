// Architecture rules checked on the sources: no import cycles; only tests import src/testing/.
// The module graph of src/ has no import cycles: a cycle makes load order decide which binding is still
// undefined, and makes a folder impossible to read (or move) on its own. Static `import … from` and
// `export … from` with relative specifiers count; `import type` (erased by TypeScript) and dynamic
// `await import()` (resolved at call time) do not.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const SRC = path.dirname(fileURLToPath(import.meta.url));

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : sourceFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** `./x.js` → the .ts file it names (or a folder's index.ts); null for anything outside the sources. */
function resolveSpecifier(from: string, specifier: string): string | null {
  const base = path.resolve(path.dirname(from), specifier);
  const candidates = [base.replace(/\.js$/, '.ts'), `${base}.ts`, path.join(base, 'index.ts')];
  return candidates.find((c) => c.endsWith('.ts') && existsSync(c)) ?? null;
}

/** The modules `file` loads when it loads: its static, value-carrying, relative imports and re-exports. */
export function staticImports(file: string, text: string): string[] {
  // Comments may quote code (examples in doc comments): drop them before matching.
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  const found: string[] = [];
  const statement = /^\s*(import|export)\s+([\s\S]*?)\s*from\s*['"](\.{1,2}\/[^'"]+)['"]/gm;
  for (const m of code.matchAll(statement)) {
    const clause = m[2];
    if (/^type\s/.test(clause)) continue; // import type / export type
    const braces = /^\{([\s\S]*)\}$/.exec(clause.trim());
    // `import { type A, type B }` is erased too: only type specifiers
    if (braces && braces[1].split(',').map((s) => s.trim()).filter(Boolean).every((s) => s.startsWith('type '))) continue;
    found.push(m[3]);
  }
  for (const m of code.matchAll(/^\s*import\s*['"](\.{1,2}\/[^'"]+)['"]/gm)) found.push(m[1]); // side-effect import
  return found.map((s) => resolveSpecifier(file, s)).filter((f): f is string => f !== null);
}

/** One cycle per strongly connected component of more than one module (or a module importing itself). */
export function findCycles(graph: Map<string, string[]>): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (graph.get(v) ?? []).includes(v)) components.push(component);
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) visit(v);
  // Name one concrete cycle in each component: a shortest path back to its first module.
  return components.map((component) => {
    const members = new Set(component);
    const start = [...component].sort()[0];
    const previous = new Map<string, string>();
    const queue = [start];
    while (queue.length) {
      const v = queue.shift()!;
      for (const w of graph.get(v) ?? []) {
        if (!members.has(w)) continue;
        if (w === start) {
          const cycle = [v];
          while (cycle[0] !== start) cycle.unshift(previous.get(cycle[0])!);
          return [...cycle, start];
        }
        if (!previous.has(w)) {
          previous.set(w, v);
          queue.push(w);
        }
      }
    }
    return [start, start];
  });
}

test('the cycle finder names a cycle and passes a chain', () => {
  const cyclic = new Map([
    ['a', ['b']],
    ['b', ['c']],
    ['c', ['a', 'd']],
    ['d', []],
  ]);
  assert.deepEqual(findCycles(cyclic), [['a', 'b', 'c', 'a']]);
  assert.deepEqual(findCycles(new Map([['a', ['b']], ['b', ['c']], ['c', []]])), []);
  const imports = staticImports(
    path.join(SRC, 'x.ts'),
    [
      "import type { A } from './jobs/index.js';",
      "import { type B, type C } from './jobs/index.js';",
      'const m = await import("./jobs/index.js");',
      '/** import { D } from "./jobs/index.js" */',
      "import {\n  createJob,\n  type E,\n} from './jobs/index.js';",
      "export { Worker } from './jobs/worker.js';",
    ].join('\n'),
  );
  assert.deepEqual(imports.map((f) => path.relative(SRC, f)), ['jobs/index.ts', 'jobs/worker.ts']);
});

test('src/ has no import cycles', () => {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles(SRC)) graph.set(file, staticImports(file, readFileSync(file, 'utf8')));
  const cycles = findCycles(graph).map((c) => c.map((f) => path.relative(SRC, f)).join(' → '));
  assert.deepEqual(cycles, [], `import cycles in src/:\n${cycles.join('\n')}`);
});

test('only tests import src/testing/ (test helpers never ship in a product code path)', () => {
  const TESTING = path.join(SRC, 'testing') + path.sep;
  const offenders = sourceFiles(SRC)
    .filter((file) => !file.startsWith(TESTING))
    .flatMap((file) => staticImports(file, readFileSync(file, 'utf8')).filter((f) => f.startsWith(TESTING)).map((f) => `${path.relative(SRC, file)} → ${path.relative(SRC, f)}`));
  assert.deepEqual(offenders, []);
});
