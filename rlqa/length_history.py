"""HAPO's per-prompt length history: h_i = the shortest correct response to prompt i seen in earlier steps.

The driver owns one. Each step it reads `lengths_for(prompt_ids)` into the `history_length` reward column *before*
the rewards, then calls `update(...)` with the step's outcomes *after* them, so no response is compared with a
history it helped set. The history is training state: it goes into the checkpoint (`state_dict`).
"""

from collections.abc import Sequence

# JSON keeps str and int apart when they sit in lists, so both survive a checkpoint round trip.
PromptId = str | int


class LengthHistory:
    """Per-prompt minimum token length among correct responses; None for a prompt never answered correctly."""

    def __init__(self) -> None:
        self._shortest: dict[PromptId, int] = {}

    def get(self, prompt_id: PromptId) -> int | None:
        return self._shortest.get(prompt_id)

    def lengths_for(self, prompt_ids: Sequence[PromptId]) -> list[int | None]:
        """h for each prompt id, as it stands now (call before `update` for the step's rewards)."""
        return [self._shortest.get(prompt_id) for prompt_id in prompt_ids]

    def update(self, prompt_ids: Sequence[PromptId], lengths: Sequence[int], correct: Sequence[bool | None]) -> None:
        """h_i ← min(h_i, shortest correct length of prompt i in this step). Wrong and unknown (None) are skipped."""
        for prompt_id, length, is_correct in zip(prompt_ids, lengths, correct, strict=True):
            previous = self._shortest.get(prompt_id)
            if is_correct and (previous is None or length < previous):
                self._shortest[prompt_id] = length

    def state_dict(self) -> dict:
        # Pairs rather than a mapping: JSON object keys are strings, and prompt ids may be ints.
        return {"shortest_correct_length": [[prompt_id, length] for prompt_id, length in self._shortest.items()]}

    def load_state_dict(self, state: dict) -> None:
        self._shortest = {prompt_id: length for prompt_id, length in state["shortest_correct_length"]}
