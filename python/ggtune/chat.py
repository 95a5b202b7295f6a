"""Chat templates of GGUF models (``tokenizer.chat_template``) and where the assistant's words are.

Templates are Jinja2, rendered in a sandbox with the conventions llama.cpp and Hugging Face share:
variables ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, and the functions
``raise_exception`` and ``strftime_now``; blocks trimmed as HF does (``trim_blocks``, ``lstrip_blocks``).
"""

from __future__ import annotations

import datetime
import functools
import json
import os

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template failed, or a conversation cannot be rendered with it."""


def read_chat_template(model_path: str | os.PathLike) -> str:
    """The chat template stored in a GGUF model's metadata."""
    import gguf

    reader = gguf.GGUFReader(model_path)
    field = reader.fields.get("tokenizer.chat_template")
    if field is None:
        raise ChatTemplateError(f"{os.fspath(model_path)}: the model has no tokenizer.chat_template; "
                                "chat data needs one (use plain-text training data instead)")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _raise_exception(message):
    raise ChatTemplateError(f"chat template raised: {message}")


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


def _tojson(value, indent=None):
    # HF's filter: jinja's own escapes <, >, & and ' for HTML, which chat templates must not do
    return json.dumps(value, ensure_ascii=False, indent=indent)


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not parse: {e}") from e


def check_messages(messages) -> None:
    """A conversation is a list of {"role": str, "content": str}; raises ChatTemplateError otherwise."""
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"messages[{i}] is not an object")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ChatTemplateError(f"messages[{i}] needs a string {key!r}")


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = False,
                bos_token: str = "", eos_token: str = "") -> str:
    """The conversation as text, exactly as the template writes it (special tokens as text)."""
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=bos_token, eos_token=eos_token)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from e


def assistant_spans(template: str, messages: list[dict], *, bos_token: str = "",
                    eos_token: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, for each assistant message, the [start, end) character span
    of what the model has to produce: its content and the end-of-turn marker the template writes
    after it (trailing whitespace after the marker excluded).

    A span is found by difference: the text of messages[:i] with the generation prompt is the
    prefix the model is given, the text of messages[:i+1] ends where its answer ends. This needs a
    template whose renderings of successive prefixes extend each other, which chat templates used
    for training do; otherwise ChatTemplateError says so."""
    check_messages(messages)
    kw = dict(bos_token=bos_token, eos_token=eos_token)
    full = render_chat(template, messages, **kw)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(template, messages[:i], add_generation_prompt=True, **kw)
        through = render_chat(template, messages[: i + 1], **kw)
        if not (through.startswith(prompt) and full.startswith(through)):
            raise ChatTemplateError(
                f"cannot locate assistant message {i}: the chat template renders the conversation "
                "differently depending on what follows, so the answer's tokens cannot be isolated")
        end = max(len(prompt), len(through.rstrip()))
        spans.append((len(prompt), end))
    return full, spans
