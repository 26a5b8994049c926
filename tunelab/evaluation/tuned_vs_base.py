"""Did the fine-tune work? The tuned and the base model answer held-out questions side by side, scored.

The result has Lamini's shape, so the course's loop runs unchanged::

    out = runner.evaluate()
    for row in out["eval_results"]:
        row["input"], row["outputs"][0]["output"], row["outputs"][1]["output"]   # tuned, base

tunelab adds, beside those keys: each row's ``expected`` answer and ``scores`` (per model: ``exact`` and
``contained``, both after normalising case, punctuation, articles and spaces), and ``totals`` per model.
"""

from __future__ import annotations

from typing import Any

from tunelab.evaluation.scoring import score
from tunelab.training.data import Example


def evaluate_models(
    examples: list[Example],
    tuned,  # a BasicModelRunner on the tuned model
    base,  # a BasicModelRunner on its base (or any model to compare with)
    *,
    max_new_tokens: int = 64,
) -> dict[str, Any]:
    """Answer every example's question with both runners (one batch each) and score the answers."""
    prompts = [example.prompt for example in examples]
    runs = [(tuned.model_name, tuned.generate(prompts, max_new_tokens=max_new_tokens))]
    runs.append((base.model_name, base.generate(prompts, max_new_tokens=max_new_tokens)))
    rows = []
    for i, example in enumerate(examples):
        expected = example.expected or example.answer
        outputs, scores = [], {}
        for name, completions in runs:
            text = completions[i].text
            outputs.append(
                {"model_name": name, "output": text, "finish_reason": completions[i].finish_reason}
            )
            scores[name] = score(text, expected)
        rows.append(
            {
                "input": example.prompt,
                "outputs": outputs,
                "expected": expected,
                "scores": scores,
                "source": example.source,
            }
        )
    n = max(len(rows), 1)
    totals = {
        name: {
            "exact": sum(r["scores"][name]["exact"] for r in rows) / n,
            "contained": sum(r["scores"][name]["contained"] for r in rows) / n,
            "stopped": sum(c.finish_reason == "stop" for c in completions) / n,  # ended, not cut
        }
        for name, completions in runs
    }
    return {
        "job_id": tuned.model_name,
        "eval_results": rows,
        "totals": totals,
        "models": {"tuned": tuned.model_name, "base": base.model_name},
        "n": len(rows),
    }
