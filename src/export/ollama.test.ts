// The Modelfile TEMPLATE of each family renders what its Jinja chat template renders (the engine's tiny
// models' templates, which are the real families' templates), through the minimal Go-template evaluator.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { checkTemplate } from './internal/check.js';
import { executeGoTemplate, modelfile, ollamaTemplate, renderJinja, renderOllama, templateFamily } from './internal/ollama.js';

// Verbatim from engine/weitiao_engine/tiny.py (Qwen2.5-style ChatML, Meta-Llama-3-8B-Instruct, glm-4-9b-chat).
const CHATML =
  "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}" +
  "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
const LLAMA3 =
  "{% set loop_messages = messages %}{% for message in loop_messages %}" +
  "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}" +
  "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const GLM4 =
  "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n工具{% endif %}{% if item['content'] %}" +
  "<|{{ item['role'] }}|>{{ item['metadata'] }}\n{{ item['content'] }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}<|assistant|>{% endif %}";

const SYSTEM = '你是一位外卖评论好评差评评论专家。';
const conversations = [
  [{ role: 'system', content: SYSTEM }, { role: 'user', content: '送餐很快，味道不错' }],
  [{ role: 'user', content: '太咸了 too salty' }],
  [
    { role: 'system', content: SYSTEM },
    { role: 'user', content: '第一句' },
    { role: 'assistant', content: '好评' },
    { role: 'user', content: '第二句' },
  ],
];

describe('Ollama TEMPLATE', () => {
  for (const [name, jinja] of [['chatml', CHATML], ['llama3', LLAMA3], ['glm4', GLM4]] as const) {
    test(`${name}: the Go template renders every conversation exactly as the Jinja template`, () => {
      assert.equal(templateFamily(jinja), name);
      const go = ollamaTemplate(jinja);
      for (const messages of conversations) {
        const expected = renderJinja(jinja, messages, { addGenerationPrompt: true });
        assert.equal(renderOllama(go, messages), expected, JSON.stringify(messages));
      }
      // And checkTemplate, as the post-export check calls it, with the Modelfile's SYSTEM filling in.
      const report = checkTemplate({ template: go, system: SYSTEM, chatTemplate: jinja }, conversations.map((c) => [...c, { role: 'assistant', content: 'x' }]));
      assert.deepEqual(report, { status: 'passed', first_difference: null });
    });
  }

  test('ChatML keeps the default system turn the Jinja template writes when there is none', () => {
    const out = renderOllama(ollamaTemplate(CHATML), [{ role: 'user', content: 'hi' }]);
    assert.equal(out, '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n');
  });

  test('a template that renders differently is reported with both renderings', () => {
    const wrong = ollamaTemplate(CHATML).replace('<|im_start|>user\n', '<|im_start|>human\n');
    const report = checkTemplate({ template: wrong, system: null, chatTemplate: CHATML }, [[...conversations[0], { role: 'assistant', content: '好评' }]]);
    assert.equal(report.status, 'failed');
    assert.equal(report.first_difference!.index, 0);
    assert.match(report.first_difference!.ollama, /<\|im_start\|>human\n送餐很快/);
    assert.match(report.first_difference!.jinja, /<\|im_start\|>user\n送餐很快/);
  });

  test('unknown chat templates are refused with a clear, bilingual error', () => {
    assert.throws(() => templateFamily('{{ messages[0].content }}'), (e: any) => e.code === 'unprocessable' && /ChatML/.test(e.message) && /模板/.test(e.message));
    assert.throws(() => templateFamily(null), (e: any) => e.code === 'unprocessable');
  });

  test('the Modelfile: FROM, TEMPLATE, one PARAMETER stop per end-of-turn token, SYSTEM', () => {
    const text = modelfile({ chatTemplate: CHATML, stopTokens: ['<|im_end|>', '<|endoftext|>'], system: SYSTEM });
    const lines = text.split('\n');
    assert.equal(lines[0], 'FROM ./model.gguf');
    assert.ok(text.includes(`TEMPLATE """${ollamaTemplate(CHATML)}"""`));
    assert.deepEqual(lines.filter((l) => l.startsWith('PARAMETER stop')), ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|endoftext|>"']);
    assert.equal(lines.filter((l) => l.startsWith('SYSTEM')).join('\n'), `SYSTEM """${SYSTEM}"""`);
  });

  test('the evaluator rejects what it does not implement instead of guessing', () => {
    assert.throws(() => executeGoTemplate('{{ index .Messages 0 }}', { Messages: [] }), /unsupported template function: index/);
    assert.throws(() => executeGoTemplate('{{ if .System }}x', { System: 'a' }), /.+/);
    assert.equal(executeGoTemplate('a  {{- " b " -}}  c', {}), 'a b c');
  });
});
