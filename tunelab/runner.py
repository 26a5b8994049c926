"""The facade a user meets first: Lamini-compatible runners over tunelab's engine."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, overload

from tunelab.config import Settings, load_settings
from tunelab.errors import BatchError, ConfigError, DataError, PromptError, TypedOutputError
from tunelab.inference.engine import InferenceEngine, engine_for
from tunelab.inference.logprobs import Score
from tunelab.inference.options import Completion, GenerationOptions
from tunelab.inference.typed import input_prompt, output_spec, prompt_with_instruction
from tunelab.models.embedded import SMOLLM2
from tunelab.models.resolve import ResolvedModel, resolve
from tunelab.training.data import DataReport, Example, load_records

if TYPE_CHECKING:
    from tunelab.jobs.client import ServerTrainResult
    from tunelab.training.recipe import TrainResult

log = logging.getLogger("tunelab")

DEFAULT_CHAT_MODEL = SMOLLM2.name


class BasicModelRunner:
    """Run a causal language model by name, on one prompt or a batch.

    >>> from tunelab import BasicModelRunner
    >>> base = BasicModelRunner("gemma-3-270m")                  # an embedded base model
    >>> text = base("Tell me how to train my dog to sit")          # str in, str out
    >>> chat = BasicModelRunner("smollm2-135m-instruct", max_new_tokens=128)
    >>> answers = chat(["What do you think of Mars?", "Who is the boss of Twitter?"])  # list in, list out
    >>> record = chat.generate("Tell me how to train my dog to sit", max_new_tokens=5)
    >>> record.finish_reason
    'length'

    Names resolve as described in `tunelab.models.resolve` (embedded, local path, HF cache, alias, remote,
    registry, hub). `template` is "auto" (the model's own chat template, or none for a base model),
    "raw", "llama2", "chatml", or a Jinja string. Generation defaults (`max_new_tokens` or Lamini's
    `max_tokens`, `temperature`, `top_p`, `top_k`, `repetition_penalty`, `presence_penalty`,
    `frequency_penalty`, `stop`, `seed`) can be set here and overridden per call. Greedy by default.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_CHAT_MODEL,
        config: dict[str, Any] | None = None,
        *,
        template: str = "auto",
        system_prompt: str | None = None,
        backend: str | None = None,
        device: str | None = None,
        settings: Settings | None = None,
        **generation_defaults: Any,
    ):
        self.config = dict(config or {})
        # `settings`: already-loaded settings (the server passes its own); otherwise file < env < config
        self.settings: Settings = settings if settings is not None else load_settings(self.config)
        if self.settings.production_key and not self.settings.production_url:
            log.debug("an API key was given but no server URL: running locally, the key is not used")
        self.template = template
        self.system_prompt = system_prompt
        self.backend = backend or self.settings.backend
        self.device = device or self.settings.device
        self.defaults = GenerationOptions.from_kwargs(None, **generation_defaults)
        self.model_name = model_name
        self.data: list[Example] = []  # training examples added by load_data*
        self._resolved: ResolvedModel | None = None
        self._resolved_for: str | None = None
        _ = self.resolved  # resolve now, so a bad name fails here and not at the first call

    @property
    def resolved(self) -> ResolvedModel:
        # `model_name` may be reassigned (Lamini's train() does), so resolve again when it changes.
        if self._resolved is None or self._resolved_for != self.model_name:
            self._resolved = resolve(self.model_name, self.settings)
            self._resolved_for = self.model_name
        return self._resolved

    @property
    def engine(self) -> InferenceEngine:
        return engine_for(self.settings)

    def load(self) -> BasicModelRunner:
        """Load the weights now instead of at the first call."""
        self.engine.load(self.resolved, self.backend, self.device)
        return self

    @overload
    def generate(self, prompt: str, **options: Any) -> Completion: ...
    @overload
    def generate(self, prompt: list, **options: Any) -> list[Completion]: ...

    def generate(self, prompt, *, output_type=None, **options):
        """Completion record(s): text, finish_reason ("stop" | "length"), token counts, model, timing.

        A single bad prompt raises PromptError. In a list, a bad prompt gets a record with
        finish_reason "error" and `error` set; the other prompts are answered.
        With `output_type` (see `__call__`), decoding is constrained to its JSON schema and each
        record's `parsed` holds the validated object (or `error` says why there is none).
        """
        template = options.pop("template", self.template)
        system = options.pop("system_prompt", self.system_prompt)
        spec = output_spec(output_type) if output_type is not None else None
        if spec is not None:
            options["json_schema"] = spec.schema_json
        opts = GenerationOptions.from_kwargs(self.defaults, **options)
        single = not isinstance(prompt, list | tuple)
        prompts = [prompt] if single else list(prompt)
        if spec is not None:  # the model is told what the fields are for; the grammar makes it JSON
            prompts = [prompt_with_instruction(p, spec) if isinstance(p, str) else p for p in prompts]
        completions = self.engine.generate(
            self.resolved,
            prompts,
            options=opts,
            template=template,
            system=system,
            backend=self.backend,
            device=self.device,
        )
        if spec is not None:
            for completion in completions:
                if completion.error is None:
                    try:
                        completion.parsed = spec.parse(
                            completion.text, completion.finish_reason, completion.max_new_tokens
                        )
                    except TypedOutputError as exc:
                        completion.error = str(exc)
        if single:
            if completions[0].error:
                error = TypedOutputError if completions[0].finish_reason != "error" else PromptError
                raise error(completions[0].error)
            return completions[0]
        return completions

    @overload
    def score(self, prompt: str, continuation: str) -> Score: ...
    @overload
    def score(self, prompt: list[str], continuation: list[str]) -> list[Score]: ...

    def score(self, prompt, continuation):
        """The log-likelihood of `continuation` right after `prompt` (raw text, no template): its tokens'
        summed log-probabilities and whether greedy decoding would have written it (lm-eval's
        loglikelihood). Lists score pair by pair, as one batch.

        >>> runner = BasicModelRunner("smollm2")  # doctest: +SKIP
        >>> paris = runner.score("The capital of France is", " Paris")  # doctest: +SKIP
        >>> paris.logprob > runner.score("The capital of France is", " Rome").logprob  # doctest: +SKIP
        True
        """
        single = isinstance(prompt, str)
        prompts, continuations = ([prompt], [continuation]) if single else (list(prompt), list(continuation))
        if len(prompts) != len(continuations):
            raise PromptError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        scores = self.engine.score(
            self.resolved, list(zip(prompts, continuations)), backend=self.backend, device=self.device
        )
        return scores[0] if single else scores

    @overload
    def __call__(self, prompt: str, **options: Any) -> str: ...
    @overload
    def __call__(self, prompt: list, **options: Any) -> list[str]: ...

    def __call__(self, prompt, *, output_type=None, **options):
        """Answer text: a str for a str, a list of str (in order) for a list.

        `output_type` asks for typed output: a pydantic model class (answers are its instances), Lamini's
        field types `{"answer": "str", "confidence": "float"}` or `{"Answer#bool": "description"}`, or a
        JSON schema (answers are dicts). Decoding is constrained to the schema, so the object is valid;
        an answer the token limit cut short raises TypedOutputError instead of a half object.

        >>> runner("Who runs Twitter?", output_type={"name": "str", "sure": "bool"})  # doctest: +SKIP
        {'name': '...', 'sure': False}

        If some prompts of a list are bad, BatchError names them and carries every answer in
        `.completions`, so the good answers are not lost.
        """
        result = self.generate(prompt, output_type=output_type, **options)
        if isinstance(result, Completion):
            return result.parsed if output_type is not None else result.text
        bad = [(i, c.error) for i, c in enumerate(result) if c.error]
        if bad:
            detail = "; ".join(f"#{i}: {err}" for i, err in bad)
            raise BatchError(
                f"{len(bad)} of {len(result)} prompts could not be answered ({detail}); "
                "the other answers are in this error's .completions",
                result,
            )
        return [c.parsed if output_type is not None else c.text for c in result]

    # -- training data (Lamini's names) -------------------------------------------------------

    def _add_data(self, source, fmt: str, input_key: str, output_key: str, strict: bool) -> DataReport:
        report = load_records(source, fmt=fmt, input_key=input_key, output_key=output_key)
        if report.issues and (strict or not report.examples):
            reason = "strict=True" if report.examples else "no record was usable"
            raise DataError(f"training data rejected ({reason}): {report.summary()}", report)
        if report.issues:
            log.warning("training data: %s", report.summary())
        self.data.extend(report.examples)
        return report

    def load_data(
        self, data, input_key: str = "input", output_key: str = "output", *, strict: bool = False
    ) -> DataReport:
        """Add training examples: a list of dicts (input/output, alpaca or OpenAI `messages`), or a path.

        Every bad record is reported with where it is and which field is wrong; the good ones are kept
        and a warning says how many were not (`strict=True` raises DataError instead).
        """
        return self._add_data(data, "auto", input_key, output_key, strict)

    def load_data_from_jsonlines(
        self, file_path, input_key: str = "input", output_key: str = "output", *, strict: bool = False
    ) -> DataReport:
        return self._add_data(file_path, "jsonl", input_key, output_key, strict)

    def load_data_from_csv(
        self, file_path, input_key: str = "input", output_key: str = "output", *, strict: bool = False
    ) -> DataReport:
        return self._add_data(file_path, "csv", input_key, output_key, strict)

    def load_data_from_dataframe(
        self, df, input_key: str = "input", output_key: str = "output", *, strict: bool = False
    ) -> DataReport:
        return self._add_data(df, "auto", input_key, output_key, strict)

    def clear_data(self) -> None:
        self.data = []

    # -- fine-tuning (Lamini's names) ---------------------------------------------------------

    def train(
        self,
        method: str = "lora",
        *,
        epochs: float | None = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        max_seq_len: int | None = None,
        eval_fraction: float | None = None,
        seed: int | None = None,
        resume: bool = False,
        is_public: bool = False,
        progress: bool = True,
        **settings: Any,
    ) -> TrainResult | ServerTrainResult:
        """Fine-tune this runner's model on the loaded data; afterwards the runner answers with the result.

        >>> runner = BasicModelRunner("smollm2-135m-instruct")
        >>> runner.load_data(load_dataset("new_facts"))             # doctest: +SKIP
        >>> result = runner.train()                                 # doctest: +SKIP
        >>> runner.model_name == result.model_id                    # doctest: +SKIP
        True

        `method` is "lora" (default) or "full". Other settings (`lora_rank`, `micro_batch_size`,
        `checkpoint_every`, ...) are the fields of `tunelab.training.recipe.TrainConfig`. The model is
        saved in tunelab's registry under `result.model_id`; `resume=True` continues an interrupted run
        of the same model, data and settings from its last checkpoint.

        With a server URL configured (`production.url`, TUNELAB_URL), the data is uploaded and trained
        by a fine-tuning job on that server (`suffix=` names it), with a progress bar until it ends; the
        server resumes its own jobs after a restart, so `resume` does not apply there.
        """
        from tunelab.training.recipe import make_config
        from tunelab.training.recipe import train as run_training

        if not self.data:
            raise DataError("no training data: add some with load_data(...) first", DataReport())
        if self.template != "auto":
            settings.setdefault("template", self.template)
        chosen = dict(
            method=method,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_seq_len=max_seq_len,
            eval_fraction=eval_fraction,
            seed=seed,
        )
        if self.resolved.source == "server":
            return self._train_on_server(progress=progress, **chosen, **settings)
        config = make_config(**chosen, **settings)
        result = run_training(
            self.resolved,
            self.data,
            self.settings,
            config,
            resume=resume,
            is_public=is_public,
            progress=progress,
        )
        self.model_name = result.model_id  # as Lamini's train(): this runner now answers with the tuned model
        return result

    def _train_on_server(self, *, seed, progress, suffix=None, **values) -> ServerTrainResult:
        """train() with a server URL configured: a fine-tuning job on that server, waited for."""
        from tunelab.jobs.client import train_on_server

        if values.get("epochs") is not None:
            values["n_epochs"] = values.pop("epochs")
        hyperparameters = {k: v for k, v in values.items() if v is not None}
        result = train_on_server(
            self.settings,
            self.model_name,
            self.data,
            hyperparameters,
            suffix=suffix,
            seed=seed,
            progress=progress,
        )
        self.model_name = result.model_id
        return result

    def _evaluation_on_server(self, data, base_model: str | None):
        """(held-out or given examples, base model name) for a model tuned by a server job."""
        from tunelab.jobs.client import client_for, heldout_examples, job_for_model

        client = client_for(self.settings)
        job = job_for_model(client, self.model_name)
        if job is None and (data is None or base_model is None):
            raise ConfigError(
                f"{self.model_name!r} was not made by a fine-tuning job of this key on "
                f"{self.settings.production_url}; pass data=... and base_model=..."
            )
        report = heldout_examples(client, job) if data is None else load_records(data)
        return report, base_model or job.model

    def evaluate(
        self, data=None, *, base_model: str | None = None, max_new_tokens: int = 64
    ) -> dict[str, Any]:
        """The tuned model's and its base's answers to held-out questions, side by side and scored.

        `data` (records or a path, as for load_data) defaults to the examples held out in training.
        `out["eval_results"][i]["outputs"][0]` is the tuned model's answer, `[1]` the base's.
        With a server URL configured, the model is one a job on that server made, and both models
        answer on the server.
        """
        from tunelab.evaluation.tuned_vs_base import evaluate_models
        from tunelab.models.registry import entry

        if self.resolved.source == "server":
            report, base_name = self._evaluation_on_server(data, base_model)
            if data is None and not report.examples:
                raise DataError(
                    f"the job that made {self.model_name!r} held out no examples (eval_fraction 0, or no "
                    "question to hold back); pass data=...",
                    report,
                )
            if report.issues or not report.examples:
                raise DataError(f"evaluation data rejected: {report.summary()}", report)
            base = BasicModelRunner(base_name, self.config, settings=self.settings)
            return evaluate_models(report.examples, self, base, max_new_tokens=max_new_tokens)
        tuned = entry(self.settings, self.model_name)
        record = tuned.record()
        if record is None:
            raise ConfigError(
                f"{self.model_name!r} is not a fine-tuned model in the registry; call train() first "
                "or create the runner with a tuned model id"
            )
        if data is None:
            report = tuned.read_heldout()
        else:
            report = load_records(data)
            if report.issues:
                raise DataError(f"evaluation data rejected: {report.summary()}", report)
        if not report.examples:
            raise DataError(
                f"{self.model_name!r} has no held-out examples (eval_fraction was 0); pass data=...", report
            )
        base = BasicModelRunner(
            base_model or record.base_model, self.config, backend=self.backend, device=self.device
        )
        return evaluate_models(report.examples, self, base, max_new_tokens=max_new_tokens)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name!r}, template={self.template!r})"


class LlamaV2Runner(BasicModelRunner):
    """Lamini's Llama-2 runner: the llama2 `[INST]` template with an optional system prompt."""

    def __init__(
        self,
        model_name: str = "meta-llama/Llama-2-7b-chat-hf",
        config: dict[str, Any] | None = None,
        *,
        system_prompt: str | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("template", "llama2")
        super().__init__(model_name, config, system_prompt=system_prompt, **kwargs)


class LLMEngine(BasicModelRunner):
    """Lamini's `LLMEngine(id=..., config={"production.key": ...})`, run locally on the default chat model.

    >>> llm = LLMEngine(id="example_llm", config={"production.key": "..."})
    >>> llm("What do you think of Mars?")  # doctest: +SKIP
    """

    def __init__(
        self,
        id: str | None = None,
        model_name: str | None = None,
        config: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        self.id = id
        super().__init__(model_name or DEFAULT_CHAT_MODEL, config, **kwargs)

    def __call__(self, input=None, output_type=None, **options):  # noqa: A002 - Lamini's parameter name
        """Lamini's call: `input` a string, a list, a dict or a pydantic instance (its fields and their
        descriptions make the prompt); `output_type` as for BasicModelRunner (typed output)."""
        if input is None:
            raise PromptError("input is required: a string, a list, a dict or a pydantic model instance")
        prompt = [input_prompt(i) for i in input] if isinstance(input, list) else input_prompt(input)
        return super().__call__(prompt, output_type=output_type, **options)
