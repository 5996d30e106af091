// The two sides of the engine protocol agree: JSON Schema from src/engine/protocol.ts (zod 4's
// z.toJSONSchema, input side: a defaulted field is optional) and from engine/weitiao_engine/protocol.py
// (pydantic's model_json_schema(), validation side) are reduced to one description per field — required,
// types, literals, defaults, bounds, nullability; titles and descriptions left out — and must be equal.
// A field changed on one side only fails here, naming the command and the field.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { z } from 'zod';
import { ENGINE_DIR, enginePython } from './index.js';
import { ChatExample, COMMANDS, PreferenceExample, ServeRequest } from './protocol.js';

type Schema = { [key: string]: unknown };

/** Every request the engine reads, by command, plus the two JSONL record shapes both sides validate. */
const TYPESCRIPT: Record<string, z.ZodType> = {
  ...Object.fromEntries(Object.entries(COMMANDS).map(([command, { request }]) => [command, request])),
  serve: ServeRequest,
  'record:chat': ChatExample,
  'record:preference': PreferenceExample,
};

const PYTHON_SCHEMAS = `
import json
from weitiao_engine import protocol
schemas = {name: model.model_json_schema(mode="validation") for name, model in protocol.REQUESTS.items()}
schemas["record:chat"] = protocol.ChatExample.model_json_schema(mode="validation")
schemas["record:preference"] = protocol.PreferenceExample.model_json_schema(mode="validation")
print(json.dumps(schemas))
`;

// zod writes JavaScript's safe-integer range on every .int(); pydantic's int has no such bound.
const SAFE_INTEGER_BOUNDS: Record<string, number> = { minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER };
const BOUNDS = ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'minItems', 'maxItems', 'minLength', 'maxLength'];

/** What a value may be: its literal values, the other types it may have (with their bounds), whether null is allowed. */
interface Shape {
  nullable: boolean;
  literals: unknown[];
  types: string[];
  objects: Schema[];
  items: Schema[];
}

function resolve(node: Schema, root: Schema): Schema {
  const ref = node.$ref as string | undefined;
  if (!ref) return node;
  const target = ref.replace(/^#\//, '').split('/').reduce<Schema>((at, key) => at[key] as Schema, root);
  const { $ref: _, ...rest } = node;
  return { ...resolve(target, root), ...rest };
}

function shape(node: Schema, root: Schema, into: Shape = { nullable: false, literals: [], types: [], objects: [], items: [] }): Shape {
  node = resolve(node, root);
  for (const alternative of [...((node.anyOf as Schema[]) ?? []), ...((node.oneOf as Schema[]) ?? [])]) shape(alternative, root, into);
  if ('const' in node) into.literals.push(node.const);
  else if (Array.isArray(node.enum)) into.literals.push(...node.enum);
  else if (node.type !== undefined) {
    for (const type of Array.isArray(node.type) ? node.type : [node.type]) {
      if (type === 'null') into.nullable = true;
      else {
        const bounds = BOUNDS.filter((b) => b in node && node[b] !== SAFE_INTEGER_BOUNDS[b]).map((b) => `${b}=${node[b]}`);
        const items = type === 'array' ? `<${describeShape(shape(node.items as Schema, root))}>` : '';
        into.types.push(`${type}${items}${bounds.length ? `(${bounds.join(',')})` : ''}`);
        if (type === 'object') into.objects.push(node);
        if (type === 'array') into.items.push(node.items as Schema);
      }
    }
  }
  return into;
}

function describeShape(s: Shape): string {
  const literals = s.literals.map((v) => JSON.stringify(v)).sort();
  return [...(literals.length ? [`one of ${literals.join('|')}`] : []), ...[...s.types].sort(), ...(s.nullable ? ['null'] : [])].join(' or ');
}

/** JSON with sorted keys, so that two equal defaults print the same. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Schema).sort(([a], [b]) => a.localeCompare(b));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** field path -> {attribute -> value}: every property of the schema, nested objects and array items included. */
function fieldTable(schema: Schema, root: Schema = schema, prefix = '', table = new Map<string, Map<string, string>>()) {
  const s = shape(schema, root);
  for (const object of s.objects) {
    const required = new Set((object.required as string[]) ?? []);
    for (const [name, raw] of Object.entries((object.properties as Record<string, Schema>) ?? {})) {
      const property = resolve(raw, root);
      const path = prefix + name;
      const fieldShape = shape(property, root);
      const attributes = new Map<string, string>([
        ['required', String(required.has(name))],
        ['type', describeShape(fieldShape)],
        ['default', 'default' in property ? canonical(property.default) : '(none)'],
      ]);
      table.set(path, attributes);
      fieldTable(property, root, `${path}.`, table);
    }
  }
  for (const items of s.items) fieldTable(items, root, `${prefix.replace(/\.$/, '')}[].`, table);
  return table;
}

/** One line per difference: `command: field: attribute: TypeScript … / Python …`. */
function differences(typescript: Record<string, Schema>, python: Record<string, Schema>): string[] {
  const out: string[] = [];
  for (const command of [...new Set([...Object.keys(typescript), ...Object.keys(python)])].sort()) {
    if (!(command in python)) out.push(`${command}: only in src/engine/protocol.ts`);
    if (!(command in typescript)) out.push(`${command}: only in engine/weitiao_engine/protocol.py`);
    if (!(command in python) || !(command in typescript)) continue;
    const ts = fieldTable(typescript[command]);
    const py = fieldTable(python[command]);
    for (const field of [...new Set([...ts.keys(), ...py.keys()])].sort()) {
      const a = ts.get(field);
      const b = py.get(field);
      if (!a || !b) {
        out.push(`${command}: ${field}: only in ${a ? 'src/engine/protocol.ts' : 'engine/weitiao_engine/protocol.py'}`);
        continue;
      }
      for (const [attribute, value] of a) {
        if (b.get(attribute) !== value) out.push(`${command}: ${field}: ${attribute}: TypeScript ${value} / Python ${b.get(attribute)}`);
      }
    }
  }
  return out;
}

function typescriptSchemas(): Record<string, Schema> {
  return Object.fromEntries(Object.entries(TYPESCRIPT).map(([name, schema]) => [name, z.toJSONSchema(schema, { io: 'input' }) as Schema]));
}

let engineSchemas: Record<string, Schema> | undefined;

/** The engine's schemas, dumped once by its own Python (pydantic is the engine's; nothing else is imported). */
function pythonSchemas(): Record<string, Schema> {
  engineSchemas ??= JSON.parse(
    execFileSync(enginePython(), ['-c', PYTHON_SCHEMAS], { cwd: ENGINE_DIR, env: { ...process.env, PYTHONPATH: ENGINE_DIR }, encoding: 'utf8' }),
  ) as Record<string, Schema>;
  return engineSchemas;
}

test('every engine request has the same fields, types, literals, defaults, bounds and nullability on both sides', () => {
  const typescript = typescriptSchemas();
  const engine = pythonSchemas();
  assert.ok(fieldTable(typescript.train).has('hyperparameters.weight_decay'), 'the table reaches nested fields');
  assert.ok(fieldTable(engine['record:chat']).has('messages[].role'), 'and array items');
  const found = differences(typescript, engine);
  assert.deepEqual(found, [], `src/engine/protocol.ts and engine/weitiao_engine/protocol.py disagree:\n  ${found.join('\n  ')}`);
});

test('a field changed on one side only is named with its command', () => {
  const typescript = typescriptSchemas();
  const changed = structuredClone(pythonSchemas());
  const hyperparameters = (changed.train.$defs as Record<string, Schema>).TrainHyperparameters;
  (hyperparameters.properties as Record<string, Schema>).weight_decay.default = 0.01;
  delete (hyperparameters.properties as Record<string, Schema>).seed;
  assert.deepEqual(differences(typescript, changed), [
    'train: hyperparameters.seed: only in src/engine/protocol.ts',
    'train: hyperparameters.weight_decay: default: TypeScript 0 / Python 0.01',
  ]);
});
