/**
 * The strings of the stored-report and leaderboard views, in both languages, picked by the console's
 * language (useI18n().lang). Kept here while the i18n tables move to web/src/i18n/; fold them in there
 * (keys eval.report, eval.leaderboard, eval.system, eval.noStored) once that lands.
 */
import { useI18n } from '../i18n';

const TEXT = {
  en: { report: 'Evaluation report', leaderboard: 'Leaderboard', system: 'Model / system', noStored: 'No stored evaluations of this file yet.', openReport: 'Stored report' },
  zh: { report: '评估报告', leaderboard: '排行榜', system: '模型 / 方案', noStored: '该文件还没有保存的评估结果。', openReport: '已保存的报告' },
} as const;

export function useEvalText() {
  return TEXT[useI18n().lang];
}
