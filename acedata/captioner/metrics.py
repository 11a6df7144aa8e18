"""Instruction metrics against the reference instruction of a held-out record.

- indicator validity: the prediction uses exactly the indicators the record's inputs call for
  (`{image}` for one input, `{image1}`..`{imageN}` for N) and no others;
- exact match after whitespace/case normalisation;
- normalised edit distance: character Levenshtein / max(len) (0 = equal, 1 = nothing shared);
- BLEU (sacrebleu, corpus level) and ROUGE-L F1 (rouge-score), maintained implementations;
- sentence similarity: cosine of MiniLM embeddings (the model the rewrite filter uses).
"""

from __future__ import annotations

import re

from acedata.instruct.templates import indicators_for

INDICATOR = re.compile(r"\{image\d*\}")


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def indicator_valid(prediction: str, n_inputs: int) -> bool:
    return set(INDICATOR.findall(prediction)) == set(indicators_for(n_inputs))


def exact_match(prediction: str, reference: str) -> bool:
    return normalise(prediction) == normalise(reference)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute each cost 1), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalised_edit_distance(prediction: str, reference: str) -> float:
    a, b = normalise(prediction), normalise(reference)
    return edit_distance(a, b) / max(len(a), len(b)) if (a or b) else 0.0


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100), sacrebleu's default 13a tokenisation, one reference per record."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (0-1)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    if not predictions:
        return 0.0
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


def sentence_similarity(predictions: list[str], references: list[str], embedder=None) -> list[float]:
    if embedder is None:
        from acedata.instruct.embedder import get_embedder

        embedder = get_embedder()
    a, b = embedder.encode(predictions), embedder.encode(references)
    return [float(x) for x in (a * b).sum(axis=1)]


def summarise(predictions: list[str], references: list[str], n_inputs: list[int], embedder=None) -> dict[str, float]:
    n = len(predictions)
    if n == 0:
        return {"records": 0}
    sims = sentence_similarity(predictions, references, embedder)
    return {
        "records": n,
        "indicator_valid": sum(indicator_valid(p, k) for p, k in zip(predictions, n_inputs)) / n,
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
        "edit_distance": sum(normalised_edit_distance(p, r) for p, r in zip(predictions, references)) / n,
        "bleu": bleu(predictions, references),
        "rouge_l": rouge_l(predictions, references),
        "minilm_similarity": sum(sims) / n,
    }
