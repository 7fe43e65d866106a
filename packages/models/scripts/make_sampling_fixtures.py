"""Golden outputs of transformers' logits processors, written in plain torch (no transformers on this machine).

The formulas are those of transformers' RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
TopKLogitsWarper, TopPLogitsWarper and MinPLogitsWarper (generation/logits_process.py), applied in the order
`generate` applies them. Writes test/fixtures/sampling.json; src/sampling.test.ts compares against it.

    /usr/bin/python3 packages/models/scripts/make_sampling_fixtures.py packages/models/test/fixtures/sampling.json
"""
import json
import sys

import torch

NEG = -float("inf")


def repetition_penalty(scores, input_ids, penalty):
    score = torch.gather(scores, 1, input_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(1, input_ids, score)


def top_k(scores, k):
    k = min(k, scores.size(-1))
    remove = scores < torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(remove, NEG)


def top_p(scores, p, min_keep=1):
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[..., -min_keep:] = 0
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, NEG)


def min_p(scores, mp, min_keep=1):
    probs = torch.softmax(scores, dim=-1)
    top, _ = probs.max(dim=-1, keepdim=True)
    remove = probs < mp * top
    sorted_indices = torch.argsort(scores, descending=True, dim=-1)
    remove_sorted = torch.gather(remove, dim=-1, index=sorted_indices)
    remove_sorted[..., :min_keep] = False
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, NEG)


def process(logits, seen, o):
    x = logits[None, :].clone()
    if o.get("repetitionPenalty", 1) != 1 and len(seen) > 0:
        x = repetition_penalty(x, torch.tensor([seen]), o["repetitionPenalty"])
    x = x / o.get("temperature", 1.0) if o.get("temperature", 1.0) != 1.0 else x
    if o.get("topK"):
        x = top_k(x, o["topK"])
    if "topP" in o:
        x = top_p(x, o["topP"])
    if "minP" in o:
        x = min_p(x, o["minP"])
    return x[0]


def main(out):
    g = torch.Generator().manual_seed(1234)
    cases = []
    for i in range(24):
        vocab = int(torch.randint(8, 200, (1,), generator=g))
        logits = (torch.randn(vocab, generator=g) * (1 + i % 4)).float()
        seen = torch.randint(0, vocab, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g).tolist()
        o = {"doSample": True, "repetitionPenalty": [1.0, 1.1, 1.5, 0.8][i % 4]}
        if i % 2 == 0:
            o["temperature"] = [0.5, 0.7, 1.3][i % 3]
        if i % 3 != 2:
            o["topK"] = int(torch.randint(1, vocab + 5, (1,), generator=g))
        if i % 4 != 3:
            o["topP"] = [0.3, 0.8, 0.95, 0.5][i % 4]
        if i % 5 in (0, 2):
            o["minP"] = [0.05, 0.2, 0.5][i % 3]
        x = process(logits, seen, o)
        cases.append({
            "logits": logits.tolist(),
            "seen": seen,
            "options": o,
            "expected": [None if v == NEG else v for v in x.tolist()],
        })
    with open(out, "w") as f:
        json.dump({"made_by": "scripts/make_sampling_fixtures.py", "torch": torch.__version__, "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
