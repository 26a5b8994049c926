"""Fine-tuning jobs: the worker that runs them, outside the request handlers, and survives restarts.

A job is a row in the store (status `queued` -> `running` -> `succeeded` | `failed` | `cancelled`).
Worker threads claim queued jobs one at a time (as many at once as configured) and run the ordinary
training recipe (`tunelab.training.recipe.train`) on the job's uploaded file, writing a `metrics` event per
step and a checkpoint record whenever the recipe saves one. A job that was running when the server
stopped is queued again at the next start and resumes from its last checkpoint (the recipe's resume).
Cancelling marks the job `cancelled`; the recipe stops after its current step and keeps its checkpoints.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timezone

from tunelab.config import Settings
from tunelab.errors import ConfigError, TrainingInterrupted, TunelabError
from tunelab.models.registry import entry as registry_entry
from tunelab.models.resolve import resolve
from tunelab.store.db import Store
from tunelab.store.records import JobRecord
from tunelab.training.data import load_records
from tunelab.training.recipe import latest_checkpoint, make_config, run_dir, train

log = logging.getLogger("tunelab")

# OpenAI's hyperparameters, and tunelab's own TrainConfig fields a job may set too
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")


def job_config(hyperparameters: dict, seed: int):
    """TrainConfig for a job's hyperparameters (ConfigError names a bad one)."""
    extra = {k: v for k, v in hyperparameters.items() if k not in OPENAI_HYPERPARAMETERS}
    for name, instead in (("epochs", "n_epochs"), ("seed", "the job's seed")):
        if name in extra:
            raise ConfigError(f"bad training settings: {name}: set {instead} instead")
    epochs = hyperparameters.get("n_epochs", "auto")
    batch = hyperparameters.get("batch_size", "auto")
    config = make_config(
        **extra,
        epochs=None if epochs == "auto" else epochs,  # "auto": the recipe's default, as runner.train()
        batch_size=None if batch == "auto" else batch,
        seed=seed,
    )
    multiplier = hyperparameters.get("learning_rate_multiplier", "auto")
    if multiplier != "auto":
        config = make_config(**(config.model_dump() | {"learning_rate": config.lr * multiplier}))
    return config


def job_model_id(job: JobRecord) -> str:
    """The tuned model's name: the base, the user's suffix, and the job, so two owners never collide."""
    short = job.id.removeprefix("ftjob-")[:10]
    # a path or an org/name id as the base: its last part, so the id is one folder name in the registry
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", job.model.rstrip("/").split("/")[-1]).strip("-.") or "model"
    return f"{base}-ft-{job.suffix}-{short}" if job.suffix else f"{base}-ft-{short}"


class JobWorker:
    def __init__(self, store: Store, settings: Settings, *, concurrency: int = 1, poll_s: float = 0.5):
        self.store, self.settings = store, settings
        self.concurrency, self.poll_s = concurrency, poll_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.recover()
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"tunelab job worker {i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def recover(self) -> None:
        """Jobs the last server left running or validating go back to the queue, to resume."""
        for job in self.store.jobs_with_status("running", "validating_files"):
            step = self._checkpoint_step(job)
            self.store.update_job(job.id, status="queued")
            where = (
                f"from its checkpoint at step {step}" if step else "from the beginning (no checkpoint yet)"
            )
            self.store.add_event(job.id, f"The server restarted during this job; it resumes {where}")

    def _checkpoint_step(self, job: JobRecord) -> int | None:
        checkpoint = latest_checkpoint(run_dir(self.settings, job_model_id(job)))
        return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_job()
            except Exception:  # the database is briefly unavailable: try again
                log.exception("could not claim a job")
                job = None
            if job is None:
                self._stop.wait(self.poll_s)
                continue
            self.run(job)

    def run(self, job: JobRecord) -> None:
        """Train one claimed job to its end, recording what happens in the store."""
        store = self.store
        try:
            file = store.get_file(job.owner, job.training_file)
            if file is None:
                raise TunelabError(f"the training file {job.training_file} no longer exists")
            report = load_records(file.path, fmt="jsonl")
            if not report.examples:
                raise TunelabError(f"the training file has no usable records: {report.summary()}")
            base = resolve(job.model, self.settings)
            config = job_config(job.hyperparameters, job.seed)
            model_id = job_model_id(job)
            resume = self._checkpoint_step(job) is not None
            store.add_event(
                job.id,
                f"Fine-tuning started: {config.method} on {job.model}, {len(report.examples)} examples"
                + (f", resuming from step {self._checkpoint_step(job)}" if resume else ""),
            )

            def on_step(record: dict) -> bool:
                data = {k: v for k, v in record.items() if k != "checkpoint"}
                if "eval_loss" in data:  # OpenAI's name for the held-out loss
                    data["valid_loss"] = data["eval_loss"]
                heldout = record.get("heldout_accuracy")
                store.add_event(
                    job.id,
                    f"Step {record['step']}/{record['total_steps']}: "
                    f"training loss={record['train_loss']:.4f}"
                    + (f", held-out accuracy={heldout:.0%}" if heldout is not None else "")
                    + (f"; stopped: {record['stopped']}" if "stopped" in record else ""),
                    type="metrics",
                    data=data,
                )
                if "checkpoint" in record:
                    store.add_checkpoint(job.id, record["step"], data)
                current = store.get_job(None, job.id)
                return current is not None and current.status == "running" and not self._stop.is_set()

            result = train(
                base,
                report.examples,
                self.settings,
                config,
                resume=resume,
                progress=False,
                model_id=model_id,
                on_step=on_step,
            )
        except TrainingInterrupted as exc:
            current = store.get_job(None, job.id)
            if current is not None and current.status == "cancelled":
                store.add_event(job.id, f"The job was cancelled ({exc}); its last checkpoint is kept")
            else:  # the server is stopping: leave it running, the next start resumes it
                store.add_event(job.id, f"Paused for a server stop ({exc})")
            return
        except Exception as exc:
            if not isinstance(exc, TunelabError):
                log.exception("fine-tuning job %s failed", job.id)
            message = str(exc) if isinstance(exc, TunelabError) else f"{type(exc).__name__}: {exc}"
            store.update_job(
                job.id,
                status="failed",
                error={"code": "training_failed", "message": message, "param": None},
                finished_at=datetime.now(timezone.utc),
                only_if_status=("running",),
            )
            store.add_event(job.id, f"The job failed: {message}", level="error")
            return
        heldout = registry_entry(self.settings, result.model_id).heldout_file
        result_files = []
        if heldout.is_file() and heldout.stat().st_size:
            record = store.add_file(
                job.owner,
                heldout.name,
                "fine-tune-results",
                heldout.stat().st_size,
                str(heldout),
                len(heldout.read_text(encoding="utf-8").splitlines()),
            )
            result_files.append(record.id)
        store.set_owner("model", result.model_id, job.owner)
        done = store.update_job(
            job.id,
            status="succeeded",
            fine_tuned_model=result.model_id,
            finished_at=datetime.now(timezone.utc),
            result_files=result_files,
            only_if_status=("running",),
        )
        if done:
            store.add_event(
                job.id,
                f"The job has successfully completed: {result.model_id} ({result.steps_text}, "
                f"final training loss {result.train_loss:.4f})",
            )
