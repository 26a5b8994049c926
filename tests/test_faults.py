"""Faults (issue 19): a full disk while writing a checkpoint or a registry record, damaged registry
entries, a truncated GGUF, a database file that is not one. What must hold: a clear error that names the
file, the previous checkpoint or record still valid, nothing half-written listed, and the server starting
and serving everything else. (kill -9 in the middle of training is tests/test_finetune.py's
test_resume_after_kill_9_equals_an_uninterrupted_run.)

The full disk is real: the writing runs in a child process whose file-size limit (RLIMIT_FSIZE) is
smaller than what it writes, so the kernel refuses the write (EFBIG) as it does when a disk is full."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.remote_server import RunningServer, _free_port, start_tunelab_serve
from tunelab.config import Settings
from tunelab.errors import ConfigError, ModelFileError
from tunelab.models.registry import ModelRecord, list_entries, load_record, save_record
from tunelab.server.service import Service
from tunelab.store.db import Store

ROOT = Path(__file__).resolve().parent.parent


def record(model_id: str, **metrics) -> ModelRecord:
    return ModelRecord(
        model_id=model_id,
        base_model="smollm2-135m-instruct",
        method="lora",
        template_name="chatml",
        template_source="{{ messages }}",
        data_hash="0" * 16,
        n_train=3,
        n_eval=1,
        hyperparameters={"epochs": 1},
        metrics=metrics,
    )


def run_with_a_full_disk(script: str, limit_bytes: int) -> subprocess.CompletedProcess:
    """`script` in a child process that cannot write a file past `limit_bytes` (as on a full disk)."""
    prologue = f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))
    """
    code = textwrap.dedent(prologue) + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_full_disk_while_writing_a_record_leaves_the_previous_one(tmp_path):
    entry = tmp_path / "registry" / "tuned-1"
    entry.mkdir(parents=True)
    save_record(entry, record("tuned-1", accuracy=0.5))
    child = run_with_a_full_disk(
        f"""
        from pathlib import Path
        from tests.test_faults import record
        from tunelab.errors import WriteFailed
        from tunelab.models.registry import save_record
        try:
            save_record(Path({str(entry)!r}), record("tuned-1", history=["x" * 100] * 1000))
        except WriteFailed as exc:
            print("refused:", exc)
        """,
        limit_bytes=4096,
    )
    refused = f"refused: {entry / 'tunelab.json'} could not be written (File too large"
    assert refused in child.stdout, child.stdout + child.stderr
    assert load_record(entry).metrics == {"accuracy": 0.5}  # the previous record, whole
    assert [p.name for p in entry.iterdir()] == ["tunelab.json"]  # no partial file left beside it


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path):
    run = tmp_path / "run"
    script = f"""
        import torch
        from pathlib import Path
        from tunelab.errors import WriteFailed
        from tunelab.training.recipe import latest_checkpoint, load_checkpoint, save_checkpoint

        def parts(width):
            model = torch.nn.Linear(width, width)
            optimizer = torch.optim.AdamW(model.parameters())
            return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

        run = Path({str(run)!r})
        save_checkpoint(run, 10, *parts(8), metrics=[{{"step": 10}}])
        try:
            save_checkpoint(run, 20, *parts(256), metrics=[{{"step": 20}}])  # 256 KB of weights: too big
        except WriteFailed as exc:
            print("refused:", exc)
        print("latest:", latest_checkpoint(run).name)
        print("resumes at:", load_checkpoint(latest_checkpoint(run), *parts(8))[0])
    """
    child = run_with_a_full_disk(script, limit_bytes=64 * 1024)
    out = child.stdout + child.stderr
    assert "could not be written (" in out and "File too large (os error 27)" in out, out
    assert "the previous one is kept" not in out  # step-20 is new: nothing of it was written
    assert "latest: step-10" in out and "resumes at: 10" in out, out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-10"]


def test_a_full_disk_while_exporting_a_gguf_leaves_no_file_and_the_previous_export(tmp_path, tiny_chat_dir):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"the previous export")
    child = run_with_a_full_disk(
        f"""
        from pathlib import Path
        from tunelab.errors import WriteFailed
        from tunelab.export.gguf import export_gguf
        try:
            export_gguf(Path({str(tiny_chat_dir)!r}), Path({str(out)!r}), overwrite=True)
        except WriteFailed as exc:
            print("refused:", exc)
        """,
        limit_bytes=32 * 1024,  # the tiny model's GGUF is larger than this
    )
    out_text = child.stdout + child.stderr
    assert f"refused: {out} could not be written (" in out_text and "the previous one is kept" in out_text, (
        out_text
    )
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no partial file beside it


def damaged_registry(home: Path) -> dict[str, Path]:
    """A registry with one good entry and three damaged ones, as a crash or a bad copy leaves them."""
    registry = home / "registry"
    entries = {name: registry / name for name in ("good", "cut-short", "not-utf8", "wrong-fields")}
    for name, path in entries.items():
        path.mkdir(parents=True)
        save_record(path, record(name))
    text = (entries["cut-short"] / "tunelab.json").read_text()
    (entries["cut-short"] / "tunelab.json").write_text(text[: len(text) // 2])
    (entries["not-utf8"] / "tunelab.json").write_bytes(b"\xff\xfe" + text.encode())
    (entries["wrong-fields"] / "tunelab.json").write_text(json.dumps({"model_id": "wrong-fields"}))
    return entries


def test_damaged_registry_entries_are_named_left_out_and_the_server_serves_the_rest(tmp_path, caplog):
    entries = damaged_registry(tmp_path)
    settings = Settings(home=tmp_path)
    with caplog.at_level(logging.WARNING, logger="tunelab"):
        assert [e.name for e in list_entries(settings)] == ["good"]
    for name in ("cut-short", "not-utf8", "wrong-fields"):
        assert f"{entries[name] / 'tunelab.json'}: the registry entry {name!r} is damaged" in caplog.text
        with pytest.raises(ModelFileError, match=f"registry entry '{name}' is damaged"):
            load_record(entries[name])
    store = Store.open(settings, f"sqlite:///{tmp_path / 'tunelab.db'}")
    key = store.create_key("me")[1]
    with RunningServer(Service(settings, store, job_workers=0)) as running:
        headers = {"Authorization": f"Bearer {key}"}
        listed = httpx.get(running.url + "/v1/models", headers=headers, timeout=30).json()["data"]
        names = {m["id"] for m in listed}
        assert "good" in names and "smollm2-135m-instruct" in names
        assert not names & {"cut-short", "not-utf8", "wrong-fields"}
        body = {"model": "cut-short", "messages": [{"role": "user", "content": "hi"}]}
        asked = httpx.post(running.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert asked.status_code == 404 and asked.json()["error"]["code"] == "model_not_found"


def test_a_truncated_gguf_and_a_database_that_is_not_one_are_refused_by_name(tmp_path, tiny_gguf):
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend

    data = Path(tiny_gguf).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=f"{cut}: not a valid GGUF model file"):
        LlamaCppBackend(cut)
    not_a_db = tmp_path / "tunelab.db"
    not_a_db.write_bytes(b"not sqlite at all " * 64)
    with pytest.raises(
        ConfigError, match="cannot open the tunelab database .*tunelab.db: file is not a database"
    ):
        Store.open(Settings(home=tmp_path), f"sqlite:///{not_a_db}")


# -- the server process: SIGTERM drains, kill -9 loses nothing stored ------------------------------------


def start_serve(home: Path, port: int, model: str) -> subprocess.Popen:
    return start_tunelab_serve(home, port, model, "--job-workers", "0", "--drain-timeout", "60")


def test_sigterm_lets_a_stream_finish_and_kill_9_loses_no_key_or_file(tiny_chat_dir, tmp_path):
    home, port, model = tmp_path / "home", _free_port(), str(tiny_chat_dir)
    store = Store.open(Settings(home=home), None)
    key = store.create_key("me")[1]
    store.close()
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    chat = url + "/v1/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    line = json.dumps({"input": "q", "output": "a"}).encode() + b"\n"

    server = start_serve(home, port, model)
    uploaded = httpx.post(
        url + "/v1/files", headers=headers, files={"file": ("d.jsonl", line)}, data={"purpose": "fine-tune"}
    ).json()["id"]
    with httpx.stream("POST", chat, json=body, headers=headers, timeout=120) as stream:
        lines = stream.iter_lines()
        assert next(x for x in lines if x.startswith("data:"))
        server.send_signal(signal.SIGTERM)  # mid-stream
        rest = list(lines)
    assert "data: [DONE]" in rest  # the stream in flight finished
    # then the server stopped: uvicorn re-raises the signal it caught once it has shut down
    assert server.wait(timeout=60) in (0, -signal.SIGTERM)

    server = start_serve(home, port, model)
    half = socket.create_connection(("127.0.0.1", port))  # an upload whose body is half sent
    half.sendall(
        f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 4000000\r\n\r\n"
        '--zz\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'.encode()
        + line * 30_000
    )
    try:
        with httpx.stream("POST", chat, json=body, headers=headers, timeout=120) as s:
            assert next(x for x in s.iter_lines() if x.startswith("data:"))
            server.send_signal(signal.SIGKILL)  # mid-stream and mid-upload: no chance to clean up
    except httpx.HTTPError:
        pass  # the connection died with the server: expected
    assert server.wait(timeout=30) == -signal.SIGKILL
    half.close()
    server = start_serve(home, port, model)
    try:
        files = httpx.get(url + "/v1/files", headers=headers, timeout=30).json()["data"]
        assert [f["id"] for f in files] == [uploaded]  # the key and the file survived both stops
        assert [p.name for p in (home / "files").iterdir()] == [f"{uploaded}.jsonl"]  # no half upload
        again = {**body, "stream": False, "max_tokens": 3}
        assert httpx.post(chat, json=again, headers=headers, timeout=60).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
