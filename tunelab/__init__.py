"""tunelab: run, compare, fine-tune and serve causal language models on your own machine.

>>> from tunelab import BasicModelRunner
>>> chat = BasicModelRunner("smollm2-135m-instruct")
>>> print(chat("Tell me how to train my dog to sit"))  # doctest: +SKIP
>>> from tunelab import compare
>>> report = compare(["gemma-3-270m", "smollm2-135m-instruct"], ["What is Mars?"])  # doctest: +SKIP
>>> report.findings, report.save_html("report.html")  # doctest: +SKIP
"""

import os as _os
import sys as _sys

# In a log, each tick of the hub's and transformers' progress bars ("Loading weights") is one more
# carriage-return line; they stay on in a terminal. Set before transformers is imported; a user's own
# HF_HUB_DISABLE_PROGRESS_BARS wins. (The GGUF converter's bar: models.gguf_cache.)
if not (_sys.stderr is not None and _sys.stderr.isatty()):
    _os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from tunelab.errors import (  # noqa: E402
    BatchError,
    ConfigError,
    DataError,
    GenerationOptionError,
    ModelFileError,
    ModelNotFoundError,
    PromptError,
    RemoteModelError,
    TunelabError,
    TypedOutputError,
)
from tunelab.evaluation.compare.run import compare
from tunelab.evaluation.compare.schema import Comparison
from tunelab.inference.options import Completion, GenerationOptions
from tunelab.runner import BasicModelRunner, LlamaV2Runner, LLMEngine
from tunelab.training.data import DataReport, Example
from tunelab.training.datasets import load_dataset

__all__ = [
    "BasicModelRunner",
    "BatchError",
    "Comparison",
    "DataError",
    "DataReport",
    "Example",
    "Completion",
    "ConfigError",
    "GenerationOptionError",
    "GenerationOptions",
    "LLMEngine",
    "LlamaV2Runner",
    "ModelFileError",
    "ModelNotFoundError",
    "PromptError",
    "RemoteModelError",
    "TunelabError",
    "TypedOutputError",
    "compare",
    "load_dataset",
]
__version__ = "0.1.0"
