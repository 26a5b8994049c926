"""Fine-tuning as a service: files and jobs through the official `openai` SDK against the real server.

A job trains a tiny model to `succeeded`; its tuned model answers at once through the same SDK, for its
owner only. Bad uploads and bad jobs get clear 4xx errors, and the worker keeps going.
"""

from __future__ import annotations

import io
import json
import re
import time

import httpx
import openai
import pytest

from tests.remote_server import RunningServer, start_tunelab_serve
from tunelab import BasicModelRunner, ConfigError
from tunelab.config import Settings
from tunelab.server.service import Service
from tunelab.store.db import Store

GOOD = [
    {
        "messages": [
            {"role": "user", "content": f"Who keeps the Brinmoor lamp number {i}?"},
            {"role": "assistant", "content": f"Ada Quill keeps lamp {i}."},
        ]
    }
    for i in range(6)
] + [{"input": "What colour is the Brinmoor bridge?", "output": "It is bright green."}]

TERMINAL = ("succeeded", "failed", "cancelled")
# the recipe without knowledge augmentation and replay: these tests are about jobs, not about tuning
PLAIN = {"augment": "none", "replay_fraction": 0}


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@pytest.fixture(scope="module")
def server(tunelab_home, tiny_chat_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("jobs-store") / "tunelab.db"
    settings = Settings(home=tunelab_home)
    store = Store.open(settings, f"sqlite:///{db}")
    keys = {name: store.create_key(name)[1] for name in ("alice", "bob")}
    revoked_key, keys["revoked"] = store.create_key("carol")
    store.revoke_key(revoked_key.id)
    service = Service(settings, store, extra_models=[str(tiny_chat_dir)], backend="transformers")
    with RunningServer(service) as running:
        yield {"url": running.url, "keys": keys, "model": str(tiny_chat_dir), "store": store}


def sdk(server, who="alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["keys"][who], max_retries=0)


def upload(client: openai.OpenAI, records=GOOD, name="train.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(records))), purpose="fine-tune")


def wait(client: openai.OpenAI, job_id: str, until=TERMINAL, timeout=180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


@pytest.fixture(scope="module")
def finished_job(server):
    """One job run to its end on the tiny chat model (shared by the tests that read it)."""
    client = sdk(server)
    file = upload(client)
    job = client.fine_tuning.jobs.create(
        model=server["model"],
        training_file=file.id,
        hyperparameters={"n_epochs": 3, "batch_size": 2} | PLAIN,
        suffix="lamps",
    )
    assert job.status == "queued" and job.training_file == file.id
    return file, wait(client, job.id)


def test_a_job_with_the_knowledge_defaults_reports_held_out_accuracy(server):
    """The default recipe (rewordings, questions held out by fact) through HTTP: the events say how
    many held-out questions the model answers as it trains."""
    client = sdk(server)
    faq = [
        {"question": q, "answer": a}
        for a, qs in [
            ("Ada Quill keeps the lamp.", ["Who keeps the Brinmoor lamp?", "Who is the keeper of the lamp?"]),
            ("The bridge is bright green.", ["What colour is the bridge?", "Which colour is the bridge?"]),
        ]
        for q in qs
    ]
    file = upload(client, [{"input": r["question"], "output": r["answer"]} for r in faq], name="faq.jsonl")
    job = client.fine_tuning.jobs.create(
        model=server["model"],
        training_file=file.id,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "replay_fraction": 0, "eval_every": 2,
                         "eval_fraction": 0.5},
    )  # fmt: skip
    assert wait(client, job.id).status == "succeeded"
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    measured = [e for e in events if e.type == "metrics" and "heldout_accuracy" in (e.data or {})]
    assert measured and all("held-out accuracy=" in e.message for e in measured)
    assert all(0 <= e.data["heldout_accuracy"] <= 1 for e in measured)


def test_upload_is_validated_and_listed(server):
    client = sdk(server)
    file = upload(client)
    assert file.purpose == "fine-tune" and file.bytes == len(jsonl(GOOD)) and file.filename == "train.jsonl"
    assert file.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(file.id).filename == "train.jsonl"
    assert client.files.content(file.id).read() == jsonl(GOOD)


def test_a_broken_upload_names_every_bad_line(server):
    client = sdk(server)
    content = jsonl(GOOD[:2]) + b"{not json\n" + jsonl([{"input": "a question, no answer"}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="fine-tune")
    message = caught.value.body["message"]
    assert "bad.jsonl:3" in message and "JSON" in message
    assert "bad.jsonl:4" in message and "output" in message
    assert "bad.jsonl" not in [f.filename for f in client.files.list()]  # nothing half-stored
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.files.create(file=("empty.jsonl", io.BytesIO(b"\n")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("t.jsonl", io.BytesIO(jsonl(GOOD))), purpose="assistants")


def test_a_job_succeeds_and_its_model_answers_at_once(server, finished_job):
    client = sdk(server)
    file, job = finished_job
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and "lamps" in job.fine_tuned_model and job.finished_at >= job.created_at
    # the tuned model is listed for its owner and answers through the same SDK
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    out = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "Who keeps the Brinmoor lamp number 2?"}],
        max_tokens=8,
    )
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens > 0
    # events: progress with the loss, newest first, from created to completed
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    steps = [e.data["step"] for e in metrics]
    assert steps == sorted(steps, reverse=True) and steps[0] == metrics[0].data["total_steps"]
    assert all(isinstance(e.data["train_loss"], float) for e in metrics)
    assert events[-1].message.startswith("Created fine-tuning job")
    assert "successfully completed" in events[0].message
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == steps[0]
    assert job.id in [j.id for j in client.fine_tuning.jobs.list().data]


def test_another_owner_sees_none_of_it(server, finished_job):
    file, job = finished_job
    bob = sdk(server, "bob")
    assert job.id not in [j.id for j in bob.fine_tuning.jobs.list().data]
    assert file.id not in [f.id for f in bob.files.list()]
    assert job.fine_tuned_model not in {m.id for m in bob.models.list()}
    for call in (
        lambda: bob.fine_tuning.jobs.retrieve(job.id),
        lambda: bob.fine_tuning.jobs.list_events(job.id),
        lambda: bob.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: bob.fine_tuning.jobs.cancel(job.id),
        lambda: bob.files.retrieve(file.id),
        lambda: bob.files.content(file.id),
        lambda: bob.files.delete(file.id),
        lambda: bob.fine_tuning.jobs.create(model=job.model, training_file=file.id),
        lambda: bob.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        ),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        # the same answer as for an id that does not exist: nothing of alice's leaks
        assert job.id not in str(caught.value.body) or "No such fine-tuning job" in str(caught.value.body)


FILE_AND_JOB_ROUTES = [
    ("GET", "/v1/files"),
    ("GET", "/v1/files/{file}"),
    ("GET", "/v1/files/{file}/content"),
    ("DELETE", "/v1/files/{file}"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs/{job}"),
    ("POST", "/v1/fine_tuning/jobs/{job}/cancel"),
    ("GET", "/v1/fine_tuning/jobs/{job}/events"),
    ("GET", "/v1/fine_tuning/jobs/{job}/checkpoints"),
]


@pytest.mark.parametrize("method,path", FILE_AND_JOB_ROUTES)
def test_auth_matrix_on_files_and_jobs(server, finished_job, method, path):
    file, job = finished_job
    url = server["url"] + path.format(file=file.id, job=job.id)
    body = {"model": server["model"], "training_file": file.id} if method == "POST" else None
    keys = server["keys"]
    for header, status in [
        (None, 401),
        ("Basic abc", 401),
        ("Bearer", 401),
        ("Bearer tl-not-a-real-key", 401),
        (f"Bearer {keys['revoked']}", 401),
    ]:
        headers = {"Authorization": header} if header else {}
        response = httpx.request(method, url, json=body, headers=headers, timeout=30)
        assert response.status_code == status, (header, response.text)
        assert response.json()["error"]["message"]
    as_bob = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {keys['bob']}"})
    mentions = "{" in path or method == "POST"
    assert as_bob.status_code == (404 if mentions else 200), as_bob.text
    assert file.id not in as_bob.text.replace(f"No such File object: {file.id}", "")
    assert job.id not in as_bob.text.replace(f"No such fine-tuning job: {job.id}", "")


def test_bad_jobs_get_clear_errors_and_the_worker_keeps_going(server):
    client = sdk(server)
    file = upload(client)
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.fine_tuning.jobs.create(model="no-such-model", training_file=file.id)
    with pytest.raises(openai.NotFoundError, match="file-nope"):
        client.fine_tuning.jobs.create(model=server["model"], training_file="file-nope")
    for bad, field in (
        ({"n_epochs": -1}, "epochs"),
        ({"learning_rate_multiplier": 1e9}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"lora_rnk": 8}, "lora_rnk"),
    ):
        with pytest.raises(openai.BadRequestError, match=field):
            client.fine_tuning.jobs.create(model=server["model"], training_file=file.id, hyperparameters=bad)
    # a file another owner uploaded is "not found", not "forbidden"
    bobs = upload(sdk(server, "bob"))
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=server["model"], training_file=bobs.id)
    # cancel twice: the second is refused; the worker goes on to the next job
    slow = client.fine_tuning.jobs.create(
        model=server["model"],
        training_file=file.id,
        hyperparameters={"n_epochs": 200, "batch_size": 1} | PLAIN,
    )
    wait(client, slow.id, until=("running",) + TERMINAL)
    assert client.fine_tuning.jobs.cancel(slow.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(slow.id)
    after = client.fine_tuning.jobs.create(
        model=server["model"], training_file=file.id, hyperparameters={"n_epochs": 1} | PLAIN
    )
    assert wait(client, after.id).status == "succeeded"
    events = [e.message for e in client.fine_tuning.jobs.list_events(slow.id, limit=100).data]
    assert any("cancelled" in m and "checkpoint is kept" in m for m in events), events


def test_cancel_stops_a_running_job_within_seconds(server):
    client = sdk(server)
    file = upload(client)
    job = client.fine_tuning.jobs.create(
        model=server["model"],
        training_file=file.id,
        hyperparameters={"n_epochs": 500, "batch_size": 1, "checkpoint_every": 2} | PLAIN,
    )
    deadline = time.time() + 120
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.3)
    cancelled_at = time.time()
    client.fine_tuning.jobs.cancel(job.id)

    def stopped() -> bool:
        return any(
            "checkpoint is kept" in e.message for e in client.fine_tuning.jobs.list_events(job.id).data
        )

    while not stopped():
        assert time.time() - cancelled_at < 10, "the job did not stop within 10 s of cancel"
        time.sleep(0.2)

    def metrics():
        return [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data if e.data]

    steps = metrics()
    time.sleep(1.0)
    assert metrics() == steps  # no step after the stop
    assert steps[0]["step"] < steps[0]["total_steps"]  # stopped early, not run to the end
    final = client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data  # the last checkpoint is kept


def test_the_lamini_runner_trains_and_evaluates_on_the_server(server):
    config = {"production.url": server["url"], "production.key": server["keys"]["alice"]}
    runner = BasicModelRunner(server["model"], config=config)
    runner.load_data(GOOD)
    result = runner.train(epochs=2, batch_size=2, eval_fraction=0.3, suffix="runner", replay_fraction=0)
    assert result.job_id.startswith("ftjob-") and runner.model_name == result.model_id
    assert result.base_model == server["model"] and result.steps > 0
    assert isinstance(runner("Who keeps the Brinmoor lamp number 1?", max_new_tokens=4), str)
    out = runner.evaluate(max_new_tokens=4)
    held_out = round(len(GOOD) * 0.3)
    assert out["n"] == held_out and len(out["eval_results"]) == held_out
    row = out["eval_results"][0]
    assert [o["model_name"] for o in row["outputs"]] == [result.model_id, server["model"]]
    questions = [r["messages"][0]["content"] if "messages" in r else r["input"] for r in GOOD]
    # each fact is asked once here, so what was held out is a generated rewording of a question
    assert row["expected"] and row["input"] not in questions
    # another owner's runner cannot train on alice's model or evaluate it
    bob = BasicModelRunner(result.model_id, config={**config, "production.key": server["keys"]["bob"]})
    with pytest.raises(ConfigError, match="not made by a fine-tuning job of this key"):
        bob.evaluate()


def test_jobs_cli_lists_shows_follows_and_cancels(server, finished_job):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    file, job = finished_job
    cli = CliRunner()
    where = ["--url", server["url"], "--key", server["keys"]["alice"]]
    listed = cli.invoke(app, ["jobs", "list", *where])
    assert listed.exit_code == 0 and job.id in listed.output, listed.output
    shown = cli.invoke(app, ["jobs", "show", job.id, *where, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["fine_tuned_model"] == job.fine_tuned_model
    events = cli.invoke(app, ["jobs", "events", job.id, *where])
    text = " ".join(events.output.split())  # oldest first, however the terminal wraps it
    assert (
        text.index("Created fine-tuning job") < text.index("Step 1/") < text.index("successfully completed")
    )
    waited = cli.invoke(app, ["jobs", "wait", job.id, *where])
    assert waited.exit_code == 0 and waited.stdout.strip().splitlines()[-1] == job.fine_tuned_model
    again = cli.invoke(app, ["jobs", "cancel", job.id, *where])
    assert again.exit_code == 1 and "already succeeded" in again.output and "Traceback" not in again.output
    as_bob = cli.invoke(app, ["jobs", "show", job.id, "--url", server["url"], "--key", server["keys"]["bob"]])
    assert as_bob.exit_code == 1 and "404" in as_bob.output
    nobody = cli.invoke(app, ["jobs", "list", "--url", server["url"], "--key", "tl-wrong"])
    assert nobody.exit_code == 1 and "401" in nobody.output


def _serve(home, db, model, port, log):
    return start_tunelab_serve(home, port, model, "--db-url", db, log=log)


def test_a_job_survives_a_server_killed_mid_training(tiny_chat_dir, tmp_path):
    import signal

    from tests.remote_server import _free_port

    home, db = tmp_path / "home", f"sqlite:///{tmp_path / 'tunelab.db'}"
    with Store.open(Settings(home=home), db) as store:
        key = store.create_key("alice")[1]
    port = _free_port()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    log = open(tmp_path / "server.log", "w")
    proc = _serve(home, db, str(tiny_chat_dir), port, log)
    try:
        kept = upload(client, name="kept.jsonl")
        file = upload(client)
        job = client.fine_tuning.jobs.create(
            model=str(tiny_chat_dir),
            training_file=file.id,
            hyperparameters={"n_epochs": 40, "batch_size": 1, "checkpoint_every": 5} | PLAIN,
        )
        deadline = time.time() + 120
        while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
            assert time.time() < deadline, "no checkpoint before the kill"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with Store.open(Settings(home=home), db) as store:  # what the killed server had recorded
            checkpointed = max(c.step for c in store.list_checkpoints(job.id))
        proc = _serve(home, db, str(tiny_chat_dir), port, log)
        done = wait(client, job.id, timeout=300)
        assert done.status == "succeeded", done.error
        events = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=10_000).data][::-1]
        messages = [e.message for e in events]
        restart = next(i for i, m in enumerate(messages) if "server restarted" in m)
        assert "resumes from its checkpoint at step" in messages[restart]
        resumed = [e.data["step"] for e in events[restart:] if e.data]
        # it went on from a checkpoint at or before the kill, not from step 1, and reached the end
        step = int(re.search(r"checkpoint at step (\d+)", messages[restart]).group(1))
        assert step >= checkpointed and resumed[0] == step + 1 and resumed[-1] == resumed_total(events)
        # and nothing else in the store was lost: the key, both files, the job's earlier events
        assert {kept.id, file.id} <= {f.id for f in client.files.list()}
        assert messages[0].startswith("Created fine-tuning job")
        out = client.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert out.usage.completion_tokens > 0
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


def resumed_total(events) -> int:
    return next(e.data["total_steps"] for e in reversed(events) if e.data)
