"""Reading recipes: YAML (duplicate keys refused), dotted command-line overrides, validation against the schema in
rlqa.config, the paths a recipe names, and the generated key reference (docs/recipe.md).

Unknown keys and wrong types are `UserError`s that name the file and the key path.
"""

from __future__ import annotations

import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from rlqa.config import BoundsPhase, Recipe, RewardTermConfig, Section
from rlqa.errors import UserError, read_user_text


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, where PyYAML keeps the last one silently."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise UserError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def parse_yaml(text: str):
    """YAML as the recipe reads it: safe types only, a duplicate key a UserError naming its line."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def apply_override(raw: dict, override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`3`, `0.5`, `true`, `[1, 2]`)."""
    if "=" not in override:
        raise UserError(f"override '{override}': expected key.path=value")
    key, _, text = override.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override '{override}': empty key in '{key}'")
    if not text.strip():  # `model.path=` would be null, i.e. the default, which is never what was meant
        raise UserError(f"override '{override}': empty value (write {key.strip()}=null to mean null)")
    try:
        value = parse_yaml(text)
    except UserError as err:
        raise UserError(f"override '{override}': {err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"override '{override}': value is not valid YAML ({err.problem})") from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"override '{override}': {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _describe(error: dict) -> str:
    # leave out validator and union-member tags ("function-after[...]", "list[BoundsPhase]")
    path = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-after") and "[" not in str(p))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    return f"{path}: {message}" if path else message


def validate_recipe(raw: dict, *, source: str, base_dir: Path) -> Recipe:
    """Validate a raw recipe dict; a mistake becomes a one-line UserError naming `source` and the key path."""
    raw = {**raw, "base_dir": str(base_dir)}
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{source}: {_describe(err.errors()[0])}") from None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe YAML, apply `key.path=value` overrides, and validate."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    text = read_user_text(path)  # not UTF-8: one line naming the file and the byte
    try:
        raw = parse_yaml(text) or {}
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise UserError(f"{path}: {where}invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    base_dir = path.resolve().parent
    if raw.get("base_dir") is not None:  # a run directory's recipe.yaml keeps the directory it was launched from
        base_dir = base_dir / str(raw.pop("base_dir"))
    raw.pop("base_dir", None)
    for override in overrides:
        apply_override(raw, override)
    return validate_recipe(raw, source=str(path), base_dir=base_dir)


def check_paths(recipe: Recipe) -> None:
    """Every file and directory the recipe names exists, so that `rlqa check` catches a typo that `rlqa train`
    would meet only after starting Ray (and writing a run directory): a UserError naming the first missing one."""
    model = recipe.model.path
    if model is not None and not (resolve_path(recipe, model) / "config.json").is_file():
        raise UserError(f"model.path: {resolve_path(recipe, model)} is not a Hugging Face model directory (no config.json)")
    datasets = {"data.train": recipe.data.train, "data.test": recipe.data.test}
    if recipe.sft is not None and recipe.sft.data is not None:
        datasets["sft.data"] = recipe.sft.data
    for where, spec in datasets.items():
        if spec.path is not None and not resolve_path(recipe, spec.path).exists():
            raise UserError(f"{where}.path: file not found: {resolve_path(recipe, spec.path)}")
    critic = recipe.algorithm.critic
    if critic is not None and critic.kind == "separate" and critic.path is not None:
        if not (Path(critic.path).expanduser() / "config.json").is_file():  # the critic loads it as given
            raise UserError(f"algorithm.critic.path: {critic.path} is not a Hugging Face model directory (no config.json)")


def resolve_path(recipe: Recipe, path: str) -> Path:
    """A path from the recipe, relative to the recipe's directory unless absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(recipe.base_dir) / p


def to_yaml(recipe: Recipe, *, with_base_dir: bool = False) -> str:
    """The resolved recipe as YAML (what `rlqa check` prints). The run directory's copy keeps `base_dir`, so its
    relative paths still resolve against the directory of the recipe the run was launched from."""
    data = recipe.model_dump(mode="json", exclude=None if with_base_dir else {"base_dir"})
    return yaml.safe_dump(data, sort_keys=False)


def reference_markdown() -> str:
    """Every recipe key with its type, default and help, for docs/recipe.md (`python -m rlqa.recipe_files`)."""
    lines = ["# Recipe reference", "", "Generated from the schema in `rlqa/config.py` by `python -m rlqa.recipe_files > docs/recipe.md`.", ""]

    def walk(model: type[BaseModel], defaults: BaseModel | None, prefix: str, title: str) -> None:
        rows, nested = [], []
        for name, field in model.model_fields.items():
            if name == "base_dir":
                continue
            section = _section_type(field.annotation)
            default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
            if section is not None and typing.get_origin(field.annotation) is not list:
                nested.append((section, default if isinstance(default, BaseModel) else None, f"{prefix}{name}.", field.description))
                continue
            if default is PydanticUndefined:
                shown = "required"
            else:
                shown = "`" + yaml.safe_dump(_plain(default), default_flow_style=True, width=1000).strip().removesuffix("...").strip() + "`"
            rows.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {shown} | {field.description or ''} |")
        if rows:
            lines.extend([f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for section, value, sub, description in nested:
            walk(section, value, sub, f"`{sub.rstrip('.')}`" + (f": {description}" if description else ""))

    walk(Recipe, None, "", "top level")
    walk(RewardTermConfig, None, "rewards.terms[].", "`rewards.terms[]`: one reward term")
    walk(BoundsPhase, None, "sampler.bounds_schedule[].", "`sampler.bounds_schedule[]`: one phase of the bounds schedule")
    return "\n".join(lines)


def _type_name(annotation) -> str:
    """`str or None`, `Literal['e3']`, `list[BoundsPhase]`: a field's type as the reference shows it."""
    if typing.get_origin(annotation) is typing.Union:  # a union with a Literal in it is typing's, not `|`'s
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    name = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return name.replace("rlqa.config.", "").replace("__main__.", "").replace("|", "or")


def _section_type(annotation) -> type[BaseModel] | None:
    """The section class inside an annotation like `SFTConfig | None`, or None for a plain value."""
    if typing.get_origin(annotation) is list:
        return None
    for candidate in typing.get_args(annotation) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def _plain(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


if __name__ == "__main__":
    print(reference_markdown())
