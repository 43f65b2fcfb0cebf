"""Loading a user's local model and tokenizer directories for the CLI: a failure is one error line naming the key."""

from __future__ import annotations

from pathlib import Path


def load_model(path: str, key: str, dtype=None):
    """The model of a directory the preflight has checked; a failure that only loading reveals is one error line."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from oprd.cli.preflight import one_line

    try:
        return AutoModelForCausalLM.from_pretrained(Path(path), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(f"`{key}` {path}: the model does not load ({one_line(exc)})") from None


def load_tokenizer(path: str, key: str):
    from transformers import AutoTokenizer

    from oprd.cli.preflight import one_line

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # a user's files: any failure to read them is reported, not raised as a traceback
        raise ValueError(f"`{key}` {path}: the tokenizer does not load ({one_line(exc)})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def teacher_tokenizer_for(student_tokenizer, teacher_dir: str, key: str = "model.teacher"):
    """The teacher directory's own tokenizer when it has one whose vocabulary is not the student's (a teacher of
    another tokenizer, for OPRD-Bridge), else None: the teacher reads the student's token ids."""
    from oprd.cli.model_files import TOKENIZER_FILES

    if not any((Path(teacher_dir) / name).is_file() for name in TOKENIZER_FILES):
        return None
    tokenizer = load_tokenizer(teacher_dir, key)
    return None if tokenizer.get_vocab() == student_tokenizer.get_vocab() else tokenizer
