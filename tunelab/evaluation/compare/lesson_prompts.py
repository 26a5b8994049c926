"""The lesson's four prompts, and the one answer that can be checked: `tunelab demo` runs them, and the
playground offers them as its first prompts."""

LESSON_PROMPTS = [
    "Tell me how to train my dog to sit",
    "What do you think of Mars?",
    "Who is the boss of Twitter?",
    """Agent: I'm here to help you with your Amazon deliver order.
Customer: I didn't get my item
Agent: I'm sorry to hear that. Which item was it?
Customer: the blanket
Agent:""",
]


# The only lesson prompt with a checkable answer: Twitter (now X) has been Elon Musk's since Oct 2022.
LESSON_EXPECTED = [None, None, "Elon Musk", None]
