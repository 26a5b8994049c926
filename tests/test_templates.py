import pytest

from tests.tiny_models import CHATML_TEMPLATE
from tunelab.errors import ConfigError
from tunelab.inference.templates import resolve_template

LLAMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% endif %}{% endfor %}"
)


def test_llama2_wraps_with_inst_tags_and_optional_system():
    t = resolve_template("llama2", model_chat_template=None)
    assert (
        t.render("Tell me how to train my dog to sit") == "[INST] Tell me how to train my dog to sit [/INST]"
    )
    with_system = t.render("Hi", system="Be brief.")
    assert with_system == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"


def test_already_wrapped_prompt_is_not_wrapped_twice():
    t = resolve_template("llama2", model_chat_template=None)
    lesson = "[INST]Tell me how to train my dog to sit[/INST]"
    assert t.render(lesson) == lesson


def test_chatml_template_and_its_stops():
    t = resolve_template("chatml", model_chat_template=None)
    assert t.render("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert "<|im_end|>" in t.stop


def test_auto_uses_the_models_own_template_for_a_chat_model():
    t = resolve_template("auto", model_chat_template=CHATML_TEMPLATE, eos_token="<|im_end|>")
    assert t.name == "chatml (model's own)"
    assert t.render("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # the turn ends at <|im_end|>; a new user turn written by the model is left visible (self-dialogue)
    assert t.stop == ("<|im_end|>",)
    wrapped = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert t.render(wrapped) == wrapped


def test_auto_is_raw_for_a_base_model():
    t = resolve_template("auto", model_chat_template=None, model_name="gemma-3-270m")
    assert t.name == "raw"
    assert t.render("[INST]x[/INST]") == "[INST]x[/INST]"
    assert t.stop == ()


def test_auto_picks_llama2_for_a_llama2_chat_checkpoint_without_a_template():
    t = resolve_template("auto", model_chat_template=None, model_name="meta-llama/Llama-2-7b-chat-hf")
    assert t.name == "llama2"


def test_bos_in_a_model_template_is_left_to_the_backend():
    t = resolve_template(
        "auto", model_chat_template=LLAMA2_CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>", add_bos=True
    )
    assert t.render("Hi") == "[INST] Hi [/INST]"
    assert t.markers == ("[INST] Hi [/INST]".split(" Hi")[0],)


def test_user_jinja_template_plain_and_chat_style():
    plain = resolve_template("Q: {{ prompt }}\nA:", model_chat_template=None)
    assert plain.render("2+2?") == "Q: 2+2?\nA:"
    chat = resolve_template(
        "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}<<assistant>>",
        model_chat_template=None,
    )
    assert chat.render("Hi", system="S") == "<<system>>S<<user>>Hi<<assistant>>"


@pytest.mark.parametrize("bad", ["alpaca", "{% for x in %}"])
def test_unknown_or_broken_template_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="template"):
        resolve_template(bad, model_chat_template=None)


def test_bos_text_is_kept_when_the_backend_does_not_add_bos():
    # SmolLM2's BOS token is <|im_start|> and llama.cpp does not add it: the template's must stay.
    t = resolve_template(
        "auto", model_chat_template=CHATML_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    assert t.render("Hi").startswith("<|im_start|>user\nHi")
    added = resolve_template(
        "auto", model_chat_template=CHATML_TEMPLATE, bos_token="<|im_start|>", add_bos=True
    )
    assert added.render("Hi").startswith("user\nHi")


def test_a_chat_ending_with_an_assistant_message_is_rendered_to_continue_it():
    user = {"role": "user", "content": "Hi"}
    prefill = {"role": "assistant", "content": "The answer is "}
    chatml = resolve_template("auto", model_chat_template=CHATML_TEMPLATE)
    # inside the assistant's turn, its trailing space kept, no <|im_end|> after it
    assert chatml.render_chat([user, prefill]) == chatml.render_chat([user]) + "The answer is "
    assert chatml.render_chat([user, {"role": "assistant", "content": ""}]) == chatml.render_chat([user])
    raw = resolve_template("raw", model_chat_template=None)
    assert raw.render_chat([user, prefill]) == "HiThe answer is "
    llama2 = resolve_template("llama2", model_chat_template=None)
    assert llama2.render_chat([user, prefill]) == "[INST] Hi [/INST] The answer is "
    with pytest.raises(ConfigError, match="must end with a user message"):
        chatml.render_chat([{"role": "system", "content": "Be brief."}])
