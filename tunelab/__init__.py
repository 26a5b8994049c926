"""tunelab: run, compare, fine-tune and serve causal language models on your own machine.

>>> from tunelab import BasicModelRunner
>>> chat = BasicModelRunner("smollm2-135m-instruct")
>>> print(chat("Tell me how to train my dog to sit"))  # doctest: +SKIP
>>> from tunelab import compare
>>> report = compare(["gemma-3-270m", "smollm2-135m-instruct"], ["What is Mars?"])  # doctest: +SKIP
>>> report.findings, report.save_html("report.html")  # doctest: +SKIP
"""

from tunelab.errors import (
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
