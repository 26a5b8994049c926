"""Diagnostics on constructed answers: each flag is raised where a person would raise it, and only there."""

from tunelab.evaluation.diagnostics import diagnose
from tunelab.evaluation.scoring import token_f1

DOG = "Tell me how to train my dog to sit"
GOOD = (
    "Hold a treat close to your dog's nose, move your hand up so its head follows and its bottom lowers, "
    "then say 'sit' and give the treat once it sits. Repeat a few times a day."
)
AGENT = "Agent: How can I help?\nCustomer: I didn't get my blanket\nAgent:"


def test_an_echoing_continuation_is_flagged_and_a_real_answer_is_not():
    base = " on a chair? I'm not sure how to train my dog to sit on a chair. Tell me how to train my dog"
    assert "echo" in diagnose(DOG, base, "stop").flags
    good = diagnose(DOG, GOOD, "stop")
    assert "echo" not in good.flags and good.scores["echo"] < 0.3
    other = diagnose(
        "What is the capital city of France and why?", "What is the capital city of France and why?", "stop"
    )
    assert "echo" in other.flags  # not tuned to the lesson's prompt


def test_looping_text_is_ramble_and_varied_text_is_not():
    loop = "I love my dog. I love my dog very much. " * 8
    assert "ramble" in diagnose(DOG, loop, "length").flags
    assert "ramble" not in diagnose(DOG, GOOD, "stop").flags


def test_truncation_comes_from_the_finish_reason():
    assert "truncated" in diagnose(DOG, GOOD, "length").flags
    assert "truncated" not in diagnose(DOG, GOOD, "stop").flags


def test_writing_the_other_speakers_turns_is_self_dialogue():
    answer = " I'm sorry about that. Let me check.\nCustomer: ok thanks\nAgent: It ships tomorrow."
    flagged = diagnose(AGENT, answer, "stop")
    assert "self_dialogue" in flagged.flags and flagged.scores["self_dialogue"] == 2
    assert (
        "self_dialogue" not in diagnose(AGENT, " I'm sorry. I will send a new blanket today.", "stop").flags
    )
    assert "self_dialogue" in diagnose(DOG, "Sure. [INST] and a cat? [/INST]", "stop").flags
    # the answerer labelling its own one reply is not a dialogue; a turn for someone else is
    assert "self_dialogue" not in diagnose("What is the capital of France?", "Answer: Paris.", "stop").flags
    assert "self_dialogue" not in diagnose(AGENT, "\nAgent: I'm sorry, I will resend it.", "stop").flags
    assert "self_dialogue" in diagnose("What is 2+2?", "A: 4\nQ: and 3+3?\nA: 6", "stop").flags
    # a colon inside an answer ("Note: ...") is not a new turn
    assert "self_dialogue" not in diagnose(DOG, GOOD + "\nNote: be patient.", "stop").flags


def test_expected_answers_are_scored_and_wrong_ones_flagged():
    right = diagnose(
        "Who is the boss of Twitter?", "Elon Musk owns it, since 2022.", "stop", expected="Elon Musk"
    )
    assert right.scores["contained"] == 1.0 and "incorrect" not in right.flags
    wrong = diagnose("Who is the boss of Twitter?", "Jack Dorsey runs Twitter.", "stop", expected="Elon Musk")
    assert wrong.scores["contained"] == 0.0 and "incorrect" in wrong.flags
    assert "incorrect" not in diagnose("Who?", "anything", "stop").flags  # nothing expected, nothing judged
    assert token_f1("the Elon Musk", "Elon Musk") == 1.0 and token_f1("Musk", "Elon Musk") == 2 / 3


def test_going_on_with_the_prompts_unfinished_sentence_is_echo():
    # what SmolLM2 does raw: no words of the prompt repeated, but no answer either
    assert "echo" in diagnose(DOG, ". I want to make sure she's comfortable and happy.", "stop").flags
    assert (
        "echo"
        in diagnose("The best way to learn Python is", " to write small programs every day.", "stop").flags
    )
    # a finished question may be answered in lower case without being continued
    assert "echo" not in diagnose("Who is the boss of Twitter?", "elon musk, since 2022.", "stop").flags
    assert "echo" not in diagnose(DOG, GOOD, "stop").flags
    # through a chat template the prompt's turn is closed: a lower-case start is an answer
    assert "echo" not in diagnose(DOG, "sure! hold a treat above its nose.", "stop", raw=False).flags
    assert "echo" in diagnose(DOG, "sure! hold a treat above its nose.", "stop").flags


def test_saying_nothing_is_flagged_empty():
    assert "empty" in diagnose("What do you think of Mars?", "", "stop").flags
    assert "empty" in diagnose("What do you think of Mars?", " \n ", "stop").flags
    assert "empty" not in diagnose("What do you think of Mars?", "It is red.", "stop").flags


def test_restating_the_question_and_then_answering_is_not_echo():
    answer = (
        "The capital city of France is Paris, a city of two million people on the Seine, and it has been "
        "so since 987."
    )
    assert "echo" not in diagnose("What is the capital city of France?", answer, "stop").flags
    head = (
        "The head of state in Seoul today is the President of South Korea, elected in June 2025 after a "
        "snap vote."
    )
    assert "echo" not in diagnose("Who is the head of state in Seoul today?", head, "stop").flags
    # restating it and adding nothing is echo
    assert (
        "echo"
        in diagnose(
            "Which French side became champion of Europe in May 2025?",
            "The French side became the champion of Europe in May 2025.",
            "stop",
        ).flags
    )
