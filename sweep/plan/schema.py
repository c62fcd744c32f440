"""The building blocks of the spec's pydantic models, and the one place their errors are worded.

Sections are pydantic dataclasses (`section`): strict scalars (no "3" for 3, no 1 for true),
unknown keys refused. Every error is turned into "key.path: what was expected, got what" from
the model's own JSON schema, so a message always names the allowed values that editors see.
"""

from __future__ import annotations

import functools
import reprlib
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, Union

import pydantic
import pydantic.dataclasses
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Discriminator, Field, Strict, Tag, TypeAdapter
from pydantic_core import PydanticCustomError

AUTO = "auto"
MAX_ERRORS = 5  # a spec written from scratch can be wrong everywhere; the first few are enough


class SpecError(ValueError):
    """A malformed sweep spec or setting; the message names the key path and what was expected."""


T = TypeVar("T")
section = functools.partial(pydantic.dataclasses.dataclass, frozen=True,
                            config=ConfigDict(extra="forbid", use_attribute_docstrings=True))

Flag = Annotated[bool, Strict()]


class WrittenNumber(float):
    """A number a YAML spec wrote in exponent notation (1e-3), which PyYAML's YAML 1.1 rules read as
    text: a number field takes the float, a text field the text as written (a sweep named 1e5)."""

    def __new__(cls, text: str) -> WrittenNumber:
        number = super().__new__(cls, text.replace("_", ""))
        number.text = text
        return number


def _as_written(value: Any) -> Any:
    return value.text if isinstance(value, WrittenNumber) else value


Text = Annotated[str, BeforeValidator(_as_written), Strict(), Field(min_length=1)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Count = Annotated[int, Strict(), Field(ge=0)]  # zero allowed
PositiveNumber = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
Share = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def at_least(minimum: int) -> Any:
    return Annotated[int, Strict(), Field(ge=minimum)]


def invalid(message: str, key: str = "") -> PydanticCustomError:
    """An error for a rule the types cannot say; `key` extends the path (a field of the section)."""
    return PydanticCustomError("spec", "{message}", {"message": message, "key": key})


def _distinct(values: tuple) -> tuple:
    if len(set(values)) == len(values):
        return values
    again = next(v for i, v in enumerate(values) if v in values[:i])
    # None is a grid's full batch, which a spec may write as null or "full"
    written = ["full" if v is None else v for v in values]
    twice = 'full batch (null and "full" are the same)' if again is None else shown(again)
    raise invalid(f"duplicate values in {shown(written)}: {twice} is there twice; give each once")


def grid_list(item: Any) -> Any:
    """A grid axis: a non-empty list of distinct values."""
    return Annotated[tuple[item, ...], Field(min_length=1), AfterValidator(_distinct)]


def or_auto(kind: Any, json_type: str) -> Any:
    """`kind` or the string "auto" (the planner chooses)."""
    return Annotated[Union[Annotated[Literal["auto"], Tag("=auto")], Annotated[kind, Tag(f"={json_type}")]],
                     Discriminator(lambda v: "=auto" if v == AUTO else f"={json_type}")]


def one_of(*branches: tuple[str, Any], choose: Callable[[Any], str]) -> Any:
    """A union that validates against one branch only, chosen from the value (`choose` returns
    the branch's JSON type, e.g. "object" or "array"), so an error speaks of that branch alone."""
    return Annotated[Union[tuple(Annotated[kind, Tag(f"={name}")] for name, kind in branches)],
                     Discriminator(lambda v: f"={choose(v)}")]


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 80, 80


def shown(value: Any) -> str:
    """A bounded repr: a YAML alias bomb shares its parts, and a full repr would expand them all."""
    text = _SHORT.repr(value)
    return text if len(text) <= 200 else text[:199] + "…"


def validate(kind: type[T], raw: Any, where: str = "") -> T:
    """`raw` (Python values from YAML, TOML or a command line) as a `kind`, or SpecError with one
    line per problem (at most MAX_ERRORS), each "path: message"; `where` is the path of `raw`
    itself in a spec (e.g. "scoring"), empty for a whole spec."""
    adapter = _adapter(kind)
    try:
        return adapter.validate_python(raw)
    except pydantic.ValidationError as exc:
        errors = _without_echoes(exc.errors(include_url=False))
        schema = _schema(kind)
        lines = [_line(error, schema, where) for error in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            lines.append(f"… and {len(errors) - MAX_ERRORS} more")
        raise SpecError("\n".join(lines)) from None


def _without_echoes(errors: list[dict]) -> list[dict]:
    """Drop "too short" for a list whose items failed: it counts only the valid ones."""
    failed = {error["loc"][:i] for error in errors for i in range(len(error["loc"]))}
    return [e for e in errors if not (e["type"] == "too_short" and e["loc"] in failed)]


@functools.cache
def _adapter(kind: type) -> TypeAdapter:
    return TypeAdapter(kind)


@functools.cache
def _schema(kind: type) -> dict:
    return _adapter(kind).json_schema()


def json_schema(kind: type) -> dict:
    return _schema(kind)


# ---- error wording ---------------------------------------------------------------------------

def _line(error: dict, root: dict, where: str) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "spec" and ctx.get("key"):
        loc = (*loc, ctx["key"])
    path = ".".join(p for p in (where, _path(loc)) if p).replace(".[", "[") or "spec"
    if kind == "spec":
        return f"{path}: {ctx['message']}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = sorted(_holding(root, _node(root, root, loc[:-1]), "properties").get("properties", {}))
        return f"{path}: unknown key; allowed keys: {', '.join(allowed)}"
    node = _node(root, root, loc)
    if kind == "too_short" and node.get("type") == "array":
        return f"{path}: must not be empty (give at least one value)"
    choices = node.get("enum") or ([node["const"]] if "const" in node else None)
    if kind in ("literal_error", "enum") and choices:
        return f"{path}: unknown value {shown(value)}; choose one of {', '.join(map(str, choices))}"
    return f"{path}: expected {_expected(root, node)}, got {shown(value)}"


def _path(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]" and not str(part).startswith("="):
            text += f".{part}" if text else str(part)
    return text


def _node(root: dict, node: dict, loc: tuple) -> dict:
    """The JSON schema of the value at `loc` (branch tags pick a union's branch)."""
    node = _resolve(root, node)
    for part in loc:
        if isinstance(part, str) and part.startswith("="):
            branches = [_resolve(root, b) for b in node.get("oneOf", node.get("anyOf", []))]
            node = next((b for b in branches if _branch_name(b) == part[1:]), node)
        elif part == "[key]":
            node = node.get("propertyNames", {})
        elif isinstance(part, int):
            node = _resolve(root, _holding(root, node, "items").get("items", {}))
        else:
            inner = _holding(root, node, "properties", "additionalProperties")
            props = inner.get("properties", {})
            node = _resolve(root, props.get(part, inner.get("additionalProperties") or {}))
    return node


def _branch_name(node: dict) -> str:
    return str(node["const"]) if "const" in node else node.get("type", "")


def _resolve(root: dict, node: dict) -> dict:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _holding(root: dict, node: dict, *keys: str) -> dict:
    """The branch of a union (an optional value, a name or a mapping) that has one of `keys`, for
    walking into it."""
    branches = [_resolve(root, b) for b in node.get("anyOf", node.get("oneOf", ()))]
    return next((b for b in branches if any(k in b for k in keys)), node)


def _expected(root: dict, node: dict) -> str:
    node = _resolve(root, node)
    branches = node.get("anyOf") or node.get("oneOf")
    if branches:
        return " or ".join(dict.fromkeys(_expected(root, b) for b in branches))
    if "const" in node:
        return repr(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(map(str, node["enum"]))
    kind = node.get("type")
    if kind == "integer":
        low = node.get("minimum")
        return "an integer" if low is None else "a positive integer" if low == 1 else f"an integer ≥ {low}"
    if kind == "number":
        return _number(node)
    return {"boolean": "true or false", "string": "a non-empty string", "array": "a list", "null": "null",
            "object": "a mapping of keys to values"}.get(kind, "a valid value")


def _number(node: dict) -> str:
    low, high = node.get("minimum", node.get("exclusiveMinimum")), node.get("maximum", node.get("exclusiveMaximum"))
    if low is not None and high is not None:
        return f"a number in {'[' if 'minimum' in node else '('}{low}, {high}{']' if 'maximum' in node else ')'}"
    if high is not None:
        return f"a number {'≤' if 'maximum' in node else '<'} {high}"
    if "exclusiveMinimum" in node:
        return "a positive number" if low == 0 else f"a number > {low}"
    return "a number" if low is None else f"a number ≥ {low}"
