import pytest

from ggtune.chat import ChatTemplateError, assistant_spans, read_chat_template, render_chat

CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And <b>3+3</b>?"},
    {"role": "assistant", "content": "It is 6.\nSure."},
]


@pytest.fixture(scope="module")
def smollm2_template(smollm2_path):
    return read_chat_template(smollm2_path)


def test_smollm2_render_exact(smollm2_template):
    text = render_chat(smollm2_template, CONVERSATION[:1], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_assistant_spans(smollm2_template):
    text, spans = assistant_spans(smollm2_template, CONVERSATION)
    assert [text[a:b] for a, b in spans] == ["4.<|im_end|>", "It is 6.\nSure.<|im_end|>"]
    # everything before each span is exactly the prompt the model would be given
    assert text[: spans[0][0]].endswith("<|im_start|>assistant\n")
    assert text[: spans[1][0]] == render_chat(smollm2_template, CONVERSATION[:3], add_generation_prompt=True)


def test_system_message_kept(smollm2_template):
    msgs = [{"role": "system", "content": "Be terse."}] + CONVERSATION[:2]
    text, spans = assistant_spans(smollm2_template, msgs)
    assert text.startswith("<|im_start|>system\nBe terse.<|im_end|>\n")
    assert "helpful AI" not in text
    assert [text[a:b] for a, b in spans] == ["4.<|im_end|>"]


def test_conventions_bos_raise_tojson():
    template = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}"
                "{{ raise_exception('no tools') }}{% endif %}{{ m.content | tojson }}{{ eos_token }}"
                "{% endfor %}")
    out = render_chat(template, [{"role": "user", "content": "<é>"}], bos_token="<s>", eos_token="</s>")
    assert out == '<s>"<é>"</s>'
    with pytest.raises(ChatTemplateError, match="no tools"):
        render_chat(template, [{"role": "tool", "content": "x"}])


def test_sandbox_blocks_unsafe_attributes():
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [])


def test_bad_messages_and_templates():
    with pytest.raises(ChatTemplateError, match=r"messages\[1\] needs a string 'content'"):
        assistant_spans("{{ messages }}", [{"role": "user", "content": "a"}, {"role": "assistant"}])
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat("{% for %}", [])
    # a template that reorders turns cannot be used to locate answers
    reversing = "{% for m in messages | reverse %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="cannot locate assistant message 1"):
        assistant_spans(reversing, CONVERSATION[:2])
