"""Prompt strings to token ids for a tokenizer, in its chat template where it has one.

An instruction-tuned model was trained on prompts rendered by its chat template; sampling it on the bare text
answers a prompt layout it has never seen. Every place `oprd` encodes prompts (rollouts, evaluation, SFT, the
teacher's view across tokenizers) goes through here, so each tokenizer renders its own template, and a tokenizer
without one keeps the plain encoding with its special tokens (BOS).

`chat_template` modes: "auto" renders the template when the tokenizer has one (else plain), "on" requires one,
"off" always encodes plainly. A rendered prompt is one user message plus the generation prompt, encoded without
special tokens: the template writes its own BOS, and the tokenizer's would double it. The text is rendered with
`tokenize=False` and encoded here because transformers 5.x changed what `apply_chat_template(tokenize=True)` returns.
"""

from __future__ import annotations

from typing import Sequence

CHAT_TEMPLATE_MODES = ("auto", "on", "off")


def check_chat_template(func: str, value: object, name: str = "chat_template") -> str:
    """`value` when it is one of CHAT_TEMPLATE_MODES, else a ValueError naming `func` and the argument `name`."""
    if not isinstance(value, str) or value not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"{func}: `{name}` must be one of {list(CHAT_TEMPLATE_MODES)}; got {value!r}")
    return value


def uses_template(tokenizer, chat_template: str = "auto", func: str = "uses_template",
                  name: str = "chat_template") -> bool:
    """Whether prompts for `tokenizer` are rendered by its chat template under mode `chat_template`; a ValueError
    naming `func` and the argument `name` for a bad mode, or for "on" and a tokenizer without a template."""
    check_chat_template(func, chat_template, name)
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "on" and not has:
        path = getattr(tokenizer, "name_or_path", "") or ""
        raise ValueError(f"{func}: `{name}` is 'on' but the tokenizer {type(tokenizer).__name__}"
                         f"{f'({path!r})' if path else ''} has no chat template; use 'auto' or 'off', or give the "
                         f"tokenizer one")
    return has and chat_template != "off"


def encode_prompt_texts(tokenizer, prompts: Sequence[str], chat_template: str = "auto", *,
                        func: str = "encode_prompt_texts", **kwargs):
    """`tokenizer(...)` on the prompts as `chat_template` says (rendered, without special tokens; or plain, with
    them). `kwargs` go to the tokenizer call (padding, return_tensors)."""
    listed = isinstance(prompts, Sequence) and not isinstance(prompts, str)
    if not listed or any(not isinstance(p, str) for p in prompts):
        held = f" holding {sorted({type(p).__name__ for p in prompts})}" if listed else ""
        raise TypeError(f"{func}: `prompts` must be a sequence of str; got {type(prompts).__name__}{held}")
    if not uses_template(tokenizer, chat_template, func):
        return tokenizer(list(prompts), add_special_tokens=True, **kwargs)
    texts = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        if not isinstance(text, str):
            raise TypeError(f"{func}: the tokenizer's apply_chat_template(tokenize=False) gave a "
                            f"{type(text).__name__}, not the rendered str")
        texts.append(text)
    return tokenizer(texts, add_special_tokens=False, **kwargs)


def prompt_ids(tokenizer, prompts: Sequence[str], chat_template: str = "auto", *,
               func: str = "prompt_ids") -> list[list[int]]:
    """The token ids of each prompt, unpadded (module docstring: which encoding each mode gives). `func` names the
    caller in error messages."""
    return [list(ids) for ids in encode_prompt_texts(tokenizer, prompts, chat_template, func=func)["input_ids"]]
