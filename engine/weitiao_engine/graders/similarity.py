"""`text_similarity`: how close an answer is to a reference, in [0, 1].

- fuzzy_match: rapidfuzz's `fuzz.ratio` (normalised Indel similarity of the two strings, by character);
- bleu: sacrebleu's sentence BLEU (exp smoothing, effective order; tokenizer `13a`, or `zh` for CJK text);
- gleu: nltk's sentence GLEU (n = 1..4);
- meteor: nltk's METEOR with exact and Porter-stem matches (no WordNet synonyms: there is no corpus offline);
- rouge_1..rouge_5: n-gram overlap F1; rouge_l: longest-common-subsequence F1 (as Google's rouge-score);
- cosine: cosine similarity of a local embedding model's vectors (embeddings.py).

Word metrics on text with CJK characters score by character (a Chinese sentence has no spaces, so its
"words" would be whole clauses); latin words inside it stay words. The result's notes say so.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Any, Callable, Optional

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f"
_HAS_CJK = re.compile(f"[{_CJK}]")
# A CJK character alone, else a run of letters/digits (underscore is punctuation here, as in rouge-score).
_CHAR_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
_WORD_TOKEN = re.compile(r"[^\W_]+")

WORD_METRICS = {"bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"}


def has_cjk(*texts: str) -> bool:
    return any(_HAS_CJK.search(t) for t in texts)


def tokenize(text: str, by_character: bool) -> list[str]:
    """Lower-cased words; with by_character, every CJK character is a token of its own."""
    return (_CHAR_TOKEN if by_character else _WORD_TOKEN).findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: float, n_hyp: int, n_ref: int) -> float:
    if overlap <= 0 or n_hyp == 0 or n_ref == 0:
        return 0.0
    precision, recall = overlap / n_hyp, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def rouge_n(hyp: list[str], ref: list[str], n: int) -> float:
    h, r = _ngrams(hyp, n), _ngrams(ref, n)
    return _f1(sum((h & r).values()), sum(h.values()), sum(r.values()))


def rouge_l(hyp: list[str], ref: list[str]) -> float:
    from rapidfuzz.distance import LCSseq

    return _f1(LCSseq.similarity(hyp, ref), len(hyp), len(ref))


@lru_cache(maxsize=4)
def _bleu(tokenizer: str):
    from sacrebleu.metrics import BLEU

    # sacrebleu.sentence_bleu's own settings: exp smoothing, effective order.
    return BLEU(tokenize=tokenizer, effective_order=True)


def bleu(hypothesis: str, reference: str, cjk: bool) -> float:
    return _bleu("zh" if cjk else "13a").sentence_score(hypothesis, [reference]).score / 100


class _NoSynonyms:
    """A WordNet stand-in with no synsets: METEOR keeps its exact and stem stages."""

    @staticmethod
    def synsets(_word: str) -> list[Any]:
        return []


def meteor(hyp: list[str], ref: list[str]) -> float:
    from nltk.stem.porter import PorterStemmer
    from nltk.translate.meteor_score import single_meteor_score

    if not hyp or not ref:
        return 0.0
    return float(single_meteor_score(ref, hyp, stemmer=PorterStemmer(), wordnet=_NoSynonyms()))


def gleu(hyp: list[str], ref: list[str]) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    if not hyp or not ref:
        return 0.0
    return float(sentence_gleu([ref], hyp, min_len=1, max_len=4))


def fuzzy_match(hypothesis: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(hypothesis, reference) / 100


def similarity(
    metric: str, hypothesis: str, reference: str, embed: Optional[Callable[[list[str]], Any]] = None
) -> tuple[float, dict[str, Any]]:
    """(score, notes) for one metric; `embed` (texts -> unit vectors) is needed for cosine only."""
    notes: dict[str, Any] = {"evaluation_metric": metric}
    if metric == "fuzzy_match":
        return fuzzy_match(hypothesis, reference), notes
    if metric == "cosine":
        if embed is None:
            raise ValueError("cosine needs an embedding model, and none is registered / cosine 需要嵌入模型，但尚未注册")
        a, b = embed([hypothesis, reference])
        return max(0.0, min(1.0, float((a * b).sum()))), notes
    cjk = has_cjk(hypothesis, reference)
    if cjk:
        notes["tokenization"] = "character"
        notes["note"] = "CJK text: scored by character / 含中日韩文字：按字计分"
    else:
        notes["tokenization"] = "word"
    if metric == "bleu":
        return bleu(hypothesis, reference, cjk), notes
    hyp, ref = tokenize(hypothesis, cjk), tokenize(reference, cjk)
    if metric == "gleu":
        return gleu(hyp, ref), notes
    if metric == "meteor":
        return meteor(hyp, ref), notes
    if metric == "rouge_l":
        return rouge_l(hyp, ref), notes
    if metric.startswith("rouge_"):
        return rouge_n(hyp, ref, int(metric[-1])), notes
    raise ValueError(f"unknown evaluation_metric {metric!r}")
