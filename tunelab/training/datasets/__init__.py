"""Training data sets that ship with tunelab, one JSON record per line.

- ``new_facts``: questions about true facts from after the embedded models' training cut-off (who runs
  Twitter, who won the 2024 US election, who the pope is since May 2025, ...). Each record is
  ``{"fact_id", "input", "output", "answer", "split"}``: ``answer`` is the short key phrase a correct
  answer must contain, and every fact has differently worded ``train`` and ``heldout`` questions, so a
  model fine-tuned on the train questions can be tested on questions it never saw.
- ``tunelab_docs``: questions a user asks about tunelab, with answers (``{"input", "output", "split"}``),
  in the spirit of Lamini's ``lamini_docs``.
- ``replay_prompts``: general prompts (``{"input"}``, no answers, split ``all``): training asks the base
  model these and mixes its own answers in, so a fine-tune keeps the model's general behaviour. Both
  kinds a fact set disturbs: requests for longer help ("How do I fix a flat tire?") and short general
  questions of the form fact data takes ("What is the capital of Canada?").
- ``general_probes``: easy general questions with the key phrase a right answer contains
  (``{"input", "answer"}``; ``answer`` may list alternatives), asked before and after a fine-tune to
  see that general knowledge survived (none of them is a replay prompt).

Records are plain input/output dicts, so they load straight into a runner:

>>> from tunelab import load_dataset
>>> train = load_dataset("new_facts", split="train")
>>> sorted(train[0])
['answer', 'fact_id', 'input', 'output', 'split']
>>> {r["split"] for r in load_dataset("tunelab_docs", split="heldout")}
{'heldout'}
>>> runner.load_data(train)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import pathlib
from importlib import resources
from typing import Any

from tunelab.errors import ConfigError

DATASETS = ("new_facts", "tunelab_docs")  # training data
PROMPT_SETS = ("replay_prompts", "general_probes")  # prompts training uses itself (split "all")
SPLITS = ("train", "heldout", "all")


def dataset_path(name: str) -> pathlib.Path:
    """The JSONL file of the bundled data set `name` (one of DATASETS)."""
    if name not in DATASETS + PROMPT_SETS:
        raise ConfigError(f"unknown data set {name!r}; the bundled data sets are {', '.join(DATASETS)}")
    return pathlib.Path(str(resources.files(__name__) / f"{name}.jsonl"))


def load_dataset(name: str, split: str = "train") -> list[dict[str, Any]]:
    """The records of data set `name` in `split` ("train", "heldout" or "all"), as stored, in file order."""
    path = dataset_path(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for data set {name!r}; choose one of {', '.join(SPLITS)}")
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    if split == "all":
        return records
    return [r for r in records if r.get("split") == split]
