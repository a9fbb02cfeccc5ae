"""Tools as plain typed functions (issue 27): their schemas, the calls parsed from a model's text, running them where
a raising, hanging or crashing tool only costs an error message, the recipe keys, and bad specs at `rlqa check`."""

import os
import time

import pytest
import yaml

from rlqa.cli import main
from rlqa.recipe_files import validate_recipe
from rlqa.errors import UserError
from rlqa.rollout.types import Rollout
from rlqa.stages import tool_metrics
from rlqa.tools.hermes import BadCall, ToolCall, parse_tool_calls, tools_block, with_tools_system_message
from rlqa.tools.registry import load_tools, tool_schemas
from rlqa.tools.runner import ToolRunner, python_limits

TOOLS = '''
import os
import time


def add(a: int, b: int = 1) -> int:
    """Add two integers.

    Args:
        a: the first integer
        b: the second integer
    """
    return a + b


def fail(x: str) -> str:
    """Always raises.

    Args:
        x: anything
    """
    raise ValueError(f"bad input {x}")


def hang(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "woke"


def crash() -> str:
    """Kills its own interpreter."""
    os._exit(3)


def table(n: int) -> dict:
    """A dict result.

    Args:
        n: a number
    """
    return {"n": n, "square": n * n}
'''
CHAT = {"task": "arithmetic", "chat_template": True}
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the python tool's sandbox needs root")


@pytest.fixture
def tools_dir(tmp_path):
    (tmp_path / "mytools.py").write_text(TOOLS)
    return tmp_path


def recipe_with(tools_dir, **rollout):
    raw = {"data": {"train": CHAT, "test": {**CHAT, "split": "test"}}, "rollout": {"max_turns": 3, **rollout}}
    return validate_recipe(raw, source="r.yaml", base_dir=tools_dir)


def runner_for(tools_dir, tools, **rollout):
    recipe = recipe_with(tools_dir, tools=tools, **rollout)
    cfg = recipe.rollout
    return ToolRunner(list(cfg.tools), tools_dir, cfg.tool_deadline_s, python_limits(cfg))


# -- schemas -----------------------------------------------------------------------------------------------------------


def test_a_typed_function_becomes_the_schema_a_template_renders(tools_dir):
    [(spec, fn, schema)] = load_tools(["mytools.py:add"], tools_dir)
    assert spec == f"{tools_dir / 'mytools.py'}:add" and fn(2, 3) == 5
    # written out by hand from add's signature and docstring: a required, b has a default; no return entry
    assert schema == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "the first integer"},
                    "b": {"type": "integer", "description": "the second integer"},
                },
                "required": ["a"],
            },
        },
    }


def test_the_python_tool_states_the_recipes_limits(tools_dir):
    recipe = recipe_with(tools_dir, tools=["python"], tool_deadline_s=3, python={"memory_mb": 512, "max_output_bytes": 2048})
    [schema] = tool_schemas(recipe.rollout, tools_dir)
    description = schema["function"]["description"]
    # 3 s wall, 512 MB (not a whole GB), 2048 bytes = 2 KB
    assert "under limits of\n3 seconds, 512 MB of memory and 2 KB of output." in description
    assert schema["function"]["name"] == "python"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("calculator", "'calculator' is not a built-in tool (built-ins: python)"),
        ("no_such_module_xyz:f", "'no_such_module_xyz:f': no module named 'no_such_module_xyz'"),
        ("missing.py:f", "no such file"),
        ("mytools.py:subtract", "has no attribute 'subtract'"),
        ("untyped.py:f", "'untyped.py:f': Argument x is missing a type hint in function f"),
        ("untyped.py:g", "'untyped.py:g': Cannot generate JSON schema for g because it has no docstring!"),
    ],
)
def test_a_bad_spec_is_one_user_error_naming_it(tools_dir, spec, message):
    (tools_dir / "untyped.py").write_text('def f(x):\n    """F.\n\n    Args:\n        x: a value\n    """\n\n\ndef g(x: int):\n    return x\n')
    with pytest.raises(UserError, match="rollout.tools: ") as err:
        load_tools([spec], tools_dir)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_two_tools_of_one_name_clash(tools_dir):
    (tools_dir / "other.py").write_text('def add(a: int) -> int:\n    """Other.\n\n    Args:\n        a: x\n    """\n    return a\n')
    with pytest.raises(UserError) as err:
        load_tools(["mytools.py:add", "other.py:add"], tools_dir)
    assert str(err.value) == "rollout.tools: 'mytools.py:add' and 'other.py:add' are both named 'add'; a model calls a tool by its name"


def check_error(capsys, tools_dir, rollout: dict) -> str:
    recipe = tools_dir / "recipe.yaml"
    raw = {"data": {"train": CHAT, "test": {**CHAT, "split": "test"}}, "rollout": {"max_turns": 2, **rollout}}
    recipe.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["check", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlqa: error: "), err
    return err.strip().removeprefix("rlqa: error: ")


def test_rlqa_check_exits_2_with_one_line_on_a_bad_tool(tools_dir, capsys):
    (tools_dir / "untyped.py").write_text('def f(x):\n    """F.\n\n    Args:\n        x: a value\n    """\n')
    (tools_dir / "shadow.py").write_text('def python(code: str) -> str:\n    """Mine.\n\n    Args:\n        code: x\n    """\n')
    assert check_error(capsys, tools_dir, {"tools": ["nope_xyz:f"]}) == "rollout.tools: 'nope_xyz:f': no module named 'nope_xyz'"
    assert check_error(capsys, tools_dir, {"tools": ["untyped.py:f"]}) == "rollout.tools: 'untyped.py:f': Argument x is missing a type hint in function f"
    line = check_error(capsys, tools_dir, {"tools": ["python", "shadow.py:python"]})
    assert line == "rollout.tools: 'python' and 'shadow.py:python' are both named 'python'; a model calls a tool by its name"
    line = check_error(capsys, tools_dir, {"tools": ["python"], "backend": "vllm", "gpus_per_worker": 1})
    assert line == f"{tools_dir / 'recipe.yaml'}: rollout.tools: the vllm backend does not run tools; use backend: hf"
    # train refuses it the same way, before anything is written
    run_dir = tools_dir / "run"
    (tools_dir / "recipe.yaml").write_text(yaml.safe_dump({"data": {"train": CHAT, "test": {**CHAT, "split": "test"}}, "rollout": {"max_turns": 2, "tools": ["untyped.py:f"]}}))
    capsys.readouterr()
    assert main(["train", str(tools_dir / "recipe.yaml"), "--run-dir", str(run_dir)]) == 2
    assert capsys.readouterr().err == "rlqa: error: rollout.tools: 'untyped.py:f': Argument x is missing a type hint in function f\n"
    assert not run_dir.exists()
    # and a good one passes, printing the resolved recipe
    assert main(["check", str(tools_dir / "recipe.yaml"), "rollout.backend=hf", "rollout.gpus_per_worker=0", "rollout.tools=[mytools.py:add]"]) == 0


@pytest.mark.parametrize(
    "rollout, message",
    [
        ({"max_turns": 3}, "rollout.max_turns: a turn ends at a tool call, so more than one needs rollout.tools or rollout.environment"),
        ({"max_total_tokens": 100}, "rollout.max_total_tokens: bounds a multi-turn rollout, which needs rollout.tools or rollout.environment"),
        ({"tools": ["python"]}, "rollout.max_turns: a tool's result is read in the next turn; set max_turns >= 2 with rollout.tools"),
        ({"tools": ["python", "python"], "max_turns": 2}, "rollout.tools: a tool is listed twice"),
    ],
)
def test_the_schema_refuses_turns_and_tools_that_do_not_go_together(rollout, message):
    with pytest.raises(UserError) as err:
        validate_recipe({"data": {"train": CHAT, "test": {**CHAT, "split": "test"}}, "rollout": rollout}, source="r.yaml", base_dir=".")
    assert str(err.value) == f"r.yaml: {message}"


def test_tools_need_chat_rendered_prompts():
    with pytest.raises(UserError) as err:
        validate_recipe({"rollout": {"tools": ["python"], "max_turns": 2}}, source="r.yaml", base_dir=".")
    assert "data.train.chat_template: rollout.tools needs chat-rendered prompts" in str(err.value)


def test_the_total_token_limit_defaults_to_max_new_tokens_per_turn(tools_dir):
    assert recipe_with(tools_dir, tools=["python"], max_new_tokens=40).rollout.total_token_limit() == 120  # 40 x 3 turns
    assert recipe_with(tools_dir, tools=["python"], max_total_tokens=50).rollout.total_token_limit() == 50


# -- parsing -----------------------------------------------------------------------------------------------------------


def test_calls_are_read_in_the_hermes_convention():
    text = (
        'Let me add.<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
        '<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call><|im_end|>'
    )
    assert parse_tool_calls(text) == [ToolCall("add", {"a": 2, "b": 3}), ToolCall("python", {"code": "print(1)"})]
    # SmolLM2's list form; a call without arguments
    assert parse_tool_calls('<tool_call>[{"name": "a", "arguments": {}}, {"name": "b"}]</tool_call>') == [ToolCall("a"), ToolCall("b")]
    assert parse_tool_calls("The answer is 5.") == []


def test_malformed_calls_become_errors_the_model_reads():
    calls = parse_tool_calls(
        '<tool_call>{"name": "add", "arguments": {"a": 2</tool_call>'  # cut JSON
        '<tool_call>{"arguments": {}}</tool_call>'  # no name
        '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'  # arguments not an object
        '<tool_call>{"name": "add"'  # never closed
    )
    assert calls == [
        # json: '{"name": "add", "arguments": {"a": 2' is 36 characters and ends inside an object
        BadCall("the tool call is not valid JSON (Expecting ',' delimiter at character 36)"),
        BadCall('a tool call is {"name": <function-name>, "arguments": {...}} inside <tool_call></tool_call>'),
        BadCall("the arguments of add are not a JSON object", "add"),
        BadCall("the tool call is not closed with </tool_call>"),
    ]


def test_the_tools_section_is_qwens_and_lands_in_the_system_message():
    schema = {"type": "function", "function": {"name": "f", "description": "F.", "parameters": {"type": "object", "properties": {}}}}
    block = tools_block([schema])
    assert block.startswith("# Tools\n\nYou may call one or more functions to assist with the user query.")
    assert '\n<tools>\n{"type": "function", "function": {"name": "f", ' in block and block.endswith("</tool_call>")
    user = {"role": "user", "content": "hi"}
    assert with_tools_system_message([user], [schema]) == [{"role": "system", "content": block}, user]
    system = {"role": "system", "content": "Be brief."}
    assert with_tools_system_message([system, user], [schema]) == [{"role": "system", "content": "Be brief.\n\n" + block}, user]


# -- running them ------------------------------------------------------------------------------------------------------


def test_tool_calls_run_and_failures_become_error_messages(tools_dir):
    runner = runner_for(tools_dir, ["mytools.py:add", "mytools.py:fail", "mytools.py:crash", "mytools.py:table"])
    try:
        outcomes = runner.run([
            ToolCall("add", {"a": 2, "b": 3}),
            ToolCall("fail", {"x": "7"}),
            ToolCall("crash"),
            ToolCall("table", {"n": 4}),
            ToolCall("subtract", {"a": 1}),
            ToolCall("add", {"c": 1}),
            BadCall("the tool call is not closed with </tool_call>"),
        ])
        assert [(o.name, o.content, o.status) for o in outcomes[:2]] == [("add", "5", "ok"), ("fail", "Error: ValueError: bad input 7", "error")]  # 2 + 3
        assert outcomes[2].status == "error" and outcomes[2].content.startswith("Error: crash crashed (") and "code 3" in outcomes[2].content
        assert (outcomes[3].content, outcomes[3].status) == ('{"n": 4, "square": 16}', "ok")  # 4 * 4
        assert (outcomes[4].content, outcomes[4].status) == ("Error: there is no tool named 'subtract' (tools: add, fail, crash, table)", "error")
        assert (outcomes[5].content, outcomes[5].status) == ("Error: add: missing a required argument: 'a'", "error")
        assert (outcomes[6].content, outcomes[6].status) == ("Error: the tool call is not closed with </tool_call>", "error")
        # the pool replaced the crashed worker: the next call runs
        assert runner.run([ToolCall("add", {"a": 40, "b": 2})])[0].content == "42"
    finally:
        runner.close()


def test_a_hanging_tool_times_out_at_its_deadline(tools_dir):
    runner = runner_for(tools_dir, ["mytools.py:hang", "mytools.py:add"], tool_deadline_s=1.0)
    try:
        started = time.monotonic()
        hung, quick = runner.run([ToolCall("hang", {"seconds": 60}), ToolCall("add", {"a": 1})])
        took = time.monotonic() - started
        assert (hung.content, hung.status) == ("Error: hang did not finish within 1 s", "timeout")
        assert (quick.content, quick.status) == ("2", "ok")  # 1 + the default 1
        assert took < 10, took  # killed at 1 s, not after the 60 s sleep
    finally:
        runner.close()


@ROOT_ONLY
def test_the_python_tool_runs_in_its_sandbox_with_the_recipes_limits(tools_dir):
    runner = runner_for(tools_dir, ["python"], tool_deadline_s=2.0, python={"memory_mb": 256, "cpu_s": 1})
    ok, raised, forever, greedy, spinning, untyped = runner.run([
        ToolCall("python", {"code": "print(6 * 7)"}),
        ToolCall("python", {"code": "1 / 0"}),
        ToolCall("python", {"code": "import time\ntime.sleep(60)"}),
        ToolCall("python", {"code": "b = bytearray(512 * 1024 * 1024)"}),
        ToolCall("python", {"code": "while True: pass"}),
        ToolCall("python", {"code": 5}),
    ])
    assert (ok.content, ok.status) == ("42", "ok")  # 6 * 7
    # the model's code raising is the tool's output, not a tool error
    assert raised.status == "ok" and raised.content.endswith("ZeroDivisionError: division by zero\n[exit status 1]")
    assert (forever.content, forever.status) == ("[timed out: the program was killed after 2 s]", "timeout")  # tool_deadline_s
    assert greedy.status == "ok" and "MemoryError" in greedy.content  # 512 MB > memory_mb 256
    assert spinning.content == "[CPU time limit of 1 s exceeded: the program was killed]"  # cpu_s 1, before the 2 s wall
    assert (untyped.content, untyped.status) == ("Error: python: code must be a string", "error")
    loud = runner_for(tools_dir, ["python"], python={"max_output_bytes": 16}).run([ToolCall("python", {"code": "print('x' * 100)"})])[0]
    # 16 bytes of output, then stopped: max_output_bytes
    assert (loud.content, loud.status) == ("x" * 16 + "\n[output truncated at 16 bytes: the program was stopped]", "ok")


def test_tool_metrics_count_every_generated_rollout():
    def rollout(turns, calls, errors, timeouts):
        return Rollout("p", 0, [1], [2, 3], [0.0, 0.0], "stop", 0, loss_mask=[1, 0], turns=turns, tool_calls=calls,
                       tool_errors=errors, tool_timeouts=timeouts)

    metrics = tool_metrics([rollout(3, 2, 1, 0), rollout(1, 0, 0, 0), rollout(2, 3, 1, 1)])
    # calls 2 + 0 + 3 = 5; errors 1 + 0 + 1 = 2; timeouts 1; turns (3 + 1 + 2) / 3 = 2
    assert metrics == {"tools/calls": 5.0, "tools/errors": 2.0, "tools/timeouts": 1.0, "tools/environment_errors": 0.0, "rollout/turns": 2.0}
    assert tool_metrics([Rollout("p", 0, [1], [2], [0.0], "stop", 0)]) == {}  # single-turn: no tool metrics at all
