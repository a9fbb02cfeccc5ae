"""What a reward reads from a completion, in either of the shapes TRL passes: a string (standard data) or a chat
message list such as `[{"role": "assistant", "content": "..."}]` (conversational data)."""


def completion_text(completion: str | list[dict[str, str]]) -> str:
    """The completion's text: the string itself, or the content of its last message.

    >>> completion_text("so 4"), completion_text([{"role": "assistant", "content": "so 4"}])
    ('so 4', 'so 4')
    """
    return completion if isinstance(completion, str) else completion[-1]["content"]
