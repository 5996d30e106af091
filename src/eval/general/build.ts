/**
 * The general-ability set of the forgetting check, written by this script (no third-party data, so no
 * licence question): arithmetic, common facts and instruction following, in Chinese and English, 300 items.
 * Deterministic: the same seed gives the same file byte for byte (a test rebuilds it and compares).
 *
 *   npx tsx src/eval/general/build.ts        # rewrites src/eval/general/general.jsonl
 *
 * Every answer is short and unambiguous, so "the answer appears in the reply" scores it fairly for a chatty
 * model too (the check's grader is string_check `ilike` against the answer).
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { mulberry32 } from '../../data/index.js';

export interface GeneralItem {
  messages: [{ role: 'user'; content: string }, { role: 'assistant'; content: string }];
  category: 'arithmetic' | 'facts' | 'instructions';
  language: 'zh' | 'en';
}

// Found from the repo root, so the compiled CLI (dist/eval/general/, where tsc copies no .jsonl) reads the same file.
export const GENERAL_SET_FILE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'eval', 'general', 'general.jsonl');

// Facts anyone can check, written for this set.
const FACTS_ZH: [string, string][] = [
  ['中国的首都是哪座城市？', '北京'], ['一年有几个月？只回答数字。', '12'], ['一周有几天？只回答数字。', '7'],
  ['水在标准大气压下的沸点是多少摄氏度？只回答数字。', '100'], ['太阳从哪个方向升起？', '东'],
  ['地球上最大的大洋是什么？', '太平洋'], ['一天有多少小时？只回答数字。', '24'], ['日本的首都是哪座城市？', '东京'],
  ['法国的首都是哪座城市？', '巴黎'], ['长城位于哪个国家？', '中国'], ['一小时有多少分钟？只回答数字。', '60'],
  ['冰是什么物质的固态？', '水'], ['人有几只眼睛？只回答数字。', '2'], ['彩虹通常有几种颜色？只回答数字。', '7'],
  ['中国最长的河流是哪条？', '长江'], ['熊猫最爱吃什么植物？', '竹'], ['一个三角形有几条边？只回答数字。', '3'],
  ['英国的首都是哪座城市？', '伦敦'], ['一年有多少个季节？只回答数字。', '4'], ['地球绕着哪颗恒星转？', '太阳'],
  ['春节是哪个国家最重要的传统节日？', '中国'], ['正方形有几个角？只回答数字。', '4'], ['一分钟有多少秒？只回答数字。', '60'],
  ['月饼通常在哪个节日吃？', '中秋'], ['端午节吃的传统食物是什么？', '粽子'], ['一打是多少个？只回答数字。', '12'],
  ['俄罗斯的首都是哪座城市？', '莫斯科'], ['人类呼吸需要的气体是什么？', '氧气'], ['一米等于多少厘米？只回答数字。', '100'],
  ['一公斤等于多少克？只回答数字。', '1000'], ['蜜蜂酿的是什么？', '蜂蜜'], ['植物进行光合作用需要什么光？', '阳光'],
  ['篮球比赛中每队上场几名队员？只回答数字。', '5'], ['德国的首都是哪座城市？', '柏林'], ['一个世纪是多少年？只回答数字。', '100'],
  ['闰年的二月有多少天？只回答数字。', '29'], ['意大利的首都是哪座城市？', '罗马'], ['蜘蛛有几条腿？只回答数字。', '8'],
  ['汉字“木”加上“木”是什么字？', '林'], ['中国的国旗上有几颗星？只回答数字。', '5'],
];
const FACTS_EN: [string, string][] = [
  ['What is the capital of France?', 'Paris'], ['How many days are in a week? Answer with the number only.', '7'],
  ['How many months are in a year? Answer with the number only.', '12'], ['What is the capital of Japan?', 'Tokyo'],
  ['What gas do humans need to breathe?', 'oxygen'], ['Which star does the Earth orbit?', 'Sun'],
  ['How many hours are in a day? Answer with the number only.', '24'], ['What is the largest ocean on Earth?', 'Pacific'],
  ['What is frozen water called?', 'ice'], ['How many legs does a spider have? Answer with the number only.', '8'],
  ['What is the capital of Italy?', 'Rome'], ['How many sides does a triangle have? Answer with the number only.', '3'],
  ['What color is a clear daytime sky?', 'blue'], ['How many minutes are in an hour? Answer with the number only.', '60'],
  ['What is the capital of the United Kingdom?', 'London'], ['How many centimeters are in a meter? Answer with the number only.', '100'],
  ['What do bees make?', 'honey'], ['In which direction does the sun rise?', 'east'],
  ['How many grams are in a kilogram? Answer with the number only.', '1000'], ['What is the capital of Germany?', 'Berlin'],
  ['How many seconds are in a minute? Answer with the number only.', '60'], ['What is the capital of China?', 'Beijing'],
  ['How many continents are there? Answer with the number only.', '7'], ['Which planet do we live on?', 'Earth'],
  ['How many players per team are on a basketball court? Answer with the number only.', '5'],
  ['What is the opposite of hot?', 'cold'], ['How many years are in a century? Answer with the number only.', '100'],
  ['What is the capital of Russia?', 'Moscow'], ['How many days does February have in a leap year? Answer with the number only.', '29'],
  ['What animal is known as the king of the jungle?', 'lion'], ['How many wheels does a bicycle have? Answer with the number only.', '2'],
  ['What is the capital of Spain?', 'Madrid'], ['Water boils at how many degrees Celsius at sea level? Answer with the number only.', '100'],
  ['What is the color of ripe bananas?', 'yellow'], ['How many items are in a dozen? Answer with the number only.', '12'],
  ['What is the capital of Egypt?', 'Cairo'], ['How many seasons are in a year? Answer with the number only.', '4'],
  ['What do plants need from the sun to grow?', 'light'], ['What is the first letter of the English alphabet?', 'A'],
  ['How many corners does a square have? Answer with the number only.', '4'],
];

const WORDS_EN = ['apple', 'river', 'garden', 'window', 'planet', 'silver', 'orange', 'forest', 'pencil', 'rocket'];
const WORDS_ZH = ['外卖平台', '红烧肉', '北京烤鸭', '西红柿炒蛋', '火锅', '小笼包', '宫保鸡丁', '麻婆豆腐', '蛋炒饭', '酸辣汤'];

function item(category: GeneralItem['category'], language: GeneralItem['language'], question: string, answer: string): GeneralItem {
  return { messages: [{ role: 'user', content: question }, { role: 'assistant', content: answer }], category, language };
}

function arithmetic(random: () => number, language: 'zh' | 'en'): GeneralItem {
  const int = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const op = int(0, 2);
  const [a, b] = op === 2 ? [int(2, 19), int(2, 12)] : [int(10, 99), int(10, 99)];
  const [x, y] = op === 1 && b > a ? [b, a] : [a, b]; // subtraction stays non-negative
  const symbol = ['+', '-', '×'][op];
  const answer = String(op === 0 ? x + y : op === 1 ? x - y : x * y);
  const question = language === 'zh' ? `计算：${x} ${symbol} ${y} = ？只回答数字。` : `What is ${x} ${symbol} ${y}? Answer with the number only.`;
  return item('arithmetic', language, question, answer);
}

function instruction(random: () => number, language: 'zh' | 'en', i: number): GeneralItem {
  const pick = <T>(xs: T[]) => xs[Math.floor(random() * xs.length)];
  const kind = i % 5;
  if (language === 'en') {
    const word = pick(WORDS_EN);
    if (kind === 0) return item('instructions', 'en', `Write the word "${word}" in capital letters. Reply with the word only.`, word.toUpperCase());
    if (kind === 1) return item('instructions', 'en', `Spell the word "${word}" backwards. Reply with the result only.`, [...word].reverse().join(''));
    if (kind === 2) return item('instructions', 'en', `How many letters are in the word "${word}"? Answer with the number only.`, String(word.length));
    const nums = [0, 1, 2].map(() => 1 + Math.floor(random() * 50));
    if (kind === 3) return item('instructions', 'en', `Sort these numbers from smallest to largest, separated by commas: ${nums.join(', ')}`, [...nums].sort((p, q) => p - q).join(', '));
    return item('instructions', 'en', `Is ${nums[0]} greater than ${nums[1]}? Answer yes or no.`, nums[0] > nums[1] ? 'yes' : 'no');
  }
  const word = pick(WORDS_ZH);
  if (kind === 0) return item('instructions', 'zh', `“${word}”有几个汉字？只回答数字。`, String([...word].length));
  if (kind === 1) return item('instructions', 'zh', `把“${word}”倒过来写，只输出结果。`, [...word].reverse().join(''));
  if (kind === 2) return item('instructions', 'zh', `请原样重复下面的词，不要添加任何内容：${word}`, word);
  const nums = [0, 1, 2].map(() => 1 + Math.floor(random() * 50));
  if (kind === 3) return item('instructions', 'zh', `把这些数字从小到大排列，用逗号分隔：${nums.join('，')}`, [...nums].sort((p, q) => p - q).join('，'));
  return item('instructions', 'zh', `${nums[0]} 大于 ${nums[1]} 吗？只回答“是”或“否”。`, nums[0] > nums[1] ? '是' : '否');
}

/** The 300 items: per language 60 arithmetic, 40 facts, 50 instructions. */
export function buildGeneralSet(seed = 16): GeneralItem[] {
  const random = mulberry32(seed);
  const out: GeneralItem[] = [];
  for (const language of ['zh', 'en'] as const) {
    for (let i = 0; i < 60; i++) out.push(arithmetic(random, language));
    for (const [q, a] of language === 'zh' ? FACTS_ZH : FACTS_EN) out.push(item('facts', language, q, a));
    for (let i = 0; i < 50; i++) out.push(instruction(random, language, i));
  }
  return out;
}

export function generalSetText(seed = 16): string {
  return buildGeneralSet(seed).map((x) => JSON.stringify(x)).join('\n') + '\n';
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  writeFileSync(GENERAL_SET_FILE, generalSetText());
  console.log(`wrote ${GENERAL_SET_FILE}`);
}
