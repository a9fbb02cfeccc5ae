"""A custom reward, loaded by recipes/custom_reward.yaml as "my_reward.py:repeated_lines"."""


def repeated_lines(completions: list[str], prompts: list[str], **columns) -> list[float]:
    """-0.1 for each line that repeats an earlier line of the same completion: small models fall into loops.

    >>> repeated_lines(["1+2=3\\n1+2=3\\n\\\\boxed{3}", "1+2=3\\n\\\\boxed{3}"], ["1+2=?\\n"] * 2)
    [-0.1, 0.0]
    """
    rewards = []
    for completion in completions:
        lines = [line.strip() for line in completion.splitlines() if line.strip()]
        rewards.append((len(set(lines)) - len(lines)) / 10)
    return rewards
