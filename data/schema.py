"""The schema of a settings file is its settings dataclasses: `setting(...)` fields and one generic reader.

A field a file may set is declared with `setting(doc, default, ...)`. Its type says what it accepts (`int`,
`float`, `bool`, `str`, `Path`, a `Literal`'s choices, `X | None`, a tuple as a YAML list, a dataclass as a
mapping); its `Setting` metadata says the rest (bounds, list rules, whether a search may sample it, where it
sits in the file). A field without `setting` is not in the file. `Reader.read` validates one mapping into its
dataclass with the dataclass's defaults; every fault is an InputError of one line:
`<file>: <section.field>: expected <what>, got <value>` (or `unknown field`, `missing`, in the same shape).
What ties a dataclass's own fields together it checks in `__post_init__`, raising FieldError.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, Union

from data.errors import InputError

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Rule:
    """What one value must be: the words that say it, its test, the typed value it becomes, how it may be searched."""

    expected: str
    ok: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda v: v
    samplers: tuple[str, ...] = ()  # the distributions that may sample a value of this rule


@dataclass(frozen=True)
class Setting:
    """A field's schema beyond its type (the `metadata` of a `setting` field)."""

    doc: str  # one line of meaning
    low: float | None = None  # a number (each number of a list): at least this
    above: float | None = None  # ... more than this
    high: float | None = None  # ... at most this
    ordered: bool = False  # a list: non-decreasing
    distinct: bool = False  # a list: no repeats
    empty: bool = False  # a string may be ""
    required: bool = False  # a file must give it, though code may build the dataclass without it
    searchable: bool = False  # a search may sample it: {loguniform | uniform | int | choice: ..., default: ...}
    key: str | None = None  # where it sits in its section when not at its name; dotted for a sub-mapping
    inline: bool = False  # a dataclass whose own fields sit in this section, at their keys
    tagged: bool = False  # an optional dataclass written `none` or `{<its tag>: {...}}`
    rule: Rule | None = None  # the whole value's rule, when its type does not say it
    item: Rule | None = None  # each item's rule, for a list whose item type does not say it
    choices: Callable[[], Sequence[str]] | None = None  # a string's choices, from a registry
    default_text: str | Callable[[], str] | None = None  # the default as docs state it, when resolved at load


def setting(doc: str, default: Any = _MISSING, *, factory: Callable[[], Any] = _MISSING, **schema: Any) -> Any:
    """A dataclass field that a settings file may set: its one-line doc, its default and its rules (`Setting`)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"schema": Setting(doc, **schema)})


class FieldError(InputError):
    """A fault a dataclass finds among its own fields (in `__post_init__`); the reader adds the file and section."""

    def __init__(self, field: str, expected: str, got: Any = _MISSING):
        self.field = field
        self.message = f"missing; expected {expected}" if got is _MISSING else f"expected {expected}, got {show(got)}"
        super().__init__(f"{field}: {self.message}")


@dataclass(frozen=True)
class Distribution:
    """A searched setting: `kind` in DISTRIBUTIONS; `values` is (low, high), or the options of a choice."""

    kind: str
    values: tuple
    default: Any


@dataclass(frozen=True)
class Entry:
    """One field of a file's section: its dataclass field name, type, schema and key path in the section."""

    name: str
    type: Any
    setting: Setting
    default: Any  # the dataclass default (called, for a factory), or _MISSING

    @property
    def path(self) -> tuple[str, ...]:
        return tuple((self.setting.key or self.name).split("."))


# ---- rules -------------------------------------------------------------------------------------------------


def show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def one_of(choices: Sequence[Any]) -> Rule:
    return Rule(f"one of {', '.join(map(str, choices))}", lambda v: v in choices, samplers=("choice",))


def list_of(item: Rule, length: int | None = None, ordered: bool = False, distinct: bool = False) -> Rule:
    """A non-empty list of values matching `item`: of `length`, non-decreasing if `ordered`, no repeats if `distinct`."""
    size = f"a list of {length}" if length else "a non-empty list of"
    words = (f"{size} values, each {item.expected}" + (", low <= high" if ordered else "")
             + (", no repeats" if distinct else ""))

    def ok(v: Any) -> bool:
        return (
            isinstance(v, list) and bool(v) and (length is None or len(v) == length) and all(item.ok(x) for x in v)
            and (not ordered or all(a <= b for a, b in zip(v, v[1:])))
            and (not distinct or len(set(map(repr, v))) == len(v))
        )

    return Rule(words, ok, lambda v: tuple(item.convert(x) for x in v))


def _bounds(s: Setting) -> tuple[str, Callable[[Any], bool]]:
    words = [f">= {s.low:g}"] if s.low is not None else [f"> {s.above:g}"] if s.above is not None else []
    words += [f"<= {s.high:g}"] if s.high is not None else []

    def ok(v: Any) -> bool:
        return ((s.low is None or v >= s.low) and (s.above is None or v > s.above)
                and (s.high is None or v <= s.high))

    return (" " + " and ".join(words) if words else ""), ok


def _resolve(value: str | Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path.cwd() / path


def _scalar(tp: Any, s: Setting) -> Rule:
    words, within = _bounds(s)
    if typing.get_origin(tp) is Literal:
        return one_of(typing.get_args(tp))
    if tp is bool:
        return Rule("true or false", lambda v: isinstance(v, bool))
    if tp is int:
        return Rule(f"an integer{words}", lambda v: _is_int(v) and within(v), samplers=("int", "choice"))
    if tp is float:
        return Rule(f"a number{words}", lambda v: _is_number(v) and within(v), float, DISTRIBUTIONS)
    if tp is Path:
        return Rule("a path", lambda v: isinstance(v, str) and bool(v), _resolve)
    if tp is str and s.choices is not None:
        return one_of(s.choices())
    if tp is str:
        return Rule("a string" if s.empty else "a non-empty string",
                    lambda v: isinstance(v, str) and (s.empty or bool(v)), samplers=("choice",))
    raise TypeError(f"no rule for a setting of type {tp!r}")


def _members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


def _scalars(tp: Any) -> list[Any]:
    """The members of a type that are not dataclasses (nor None)."""
    return [m for m in _members(tp) if m is not type(None) and not dataclasses.is_dataclass(m)]


def _optional(tp: Any) -> Any | None:
    """`X` of `X | None`; None for a type that is not optional."""
    members = _members(tp)
    if type(None) not in members:
        return None
    rest = tuple(m for m in members if m is not type(None))
    return rest[0] if len(rest) == 1 else Union[rest]


def sections(tp: Any) -> tuple[type, ...]:
    """The dataclasses a value of type `tp` may be (a mapping in the file), `X | None` included."""
    return tuple(m for m in _members(tp) if dataclasses.is_dataclass(m))


def listed(tp: Any) -> type | None:
    """The dataclass of a `tuple[Dataclass, ...]` type (a list of mappings in the file), else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def rule_of(tp: Any, s: Setting) -> Rule:
    """The rule of a non-mapping value of type `tp`: a scalar, an optional one, or a tuple as a list."""
    if s.rule is not None:
        return s.rule
    inner = _optional(tp)
    if inner is not None and s.required:
        return rule_of(inner, s)
    if inner is not None:
        rule = rule_of(inner, s)
        return Rule(f"{rule.expected} or null", lambda v: v is None or rule.ok(v),
                    lambda v: None if v is None else rule.convert(v), rule.samplers)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        length = None if args[-1] is Ellipsis else len(args)
        return list_of(s.item or rule_of(args[0], dataclasses.replace(s, item=None)), length, s.ordered, s.distinct)
    return _scalar(_scalars(tp)[0], s)


def entries(cls: type) -> list[Entry]:
    """The fields of `cls` that a file may set, in order."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if "schema" in f.metadata:
            default = f.default_factory() if f.default_factory is not _MISSING else f.default
            found.append(Entry(f.name, hints[f.name], f.metadata["schema"], default))
    return found


def keys(cls: type) -> dict[str, list[str] | None]:
    """The keys of `cls`'s section, in order: a field's key (None), or a sub-mapping's (its keys)."""
    found: dict[str, list[str] | None] = {}
    for e in entries(cls):
        if e.setting.inline:
            found.update(keys(e.type))
        elif len(e.path) == 1:
            found[e.path[0]] = None
        else:
            found.setdefault(e.path[0], []).append(e.path[1])
    return found


def describe(cls: type) -> str:
    return f"a mapping with the fields {', '.join(keys(cls))}"


def tagged_words(tp: Any) -> str:
    return "none or " + " or ".join(f"{{{c.tag}: {{{', '.join(keys(c))}}}}}" for c in sections(tp))


def words(e: Entry) -> str:
    """What a field accepts, in the words of its errors."""
    if e.setting.tagged:
        return tagged_words(e.type)
    if listed(e.type) is not None:
        return f"a non-empty list of {{{', '.join(keys(listed(e.type)))}}}"
    if dataclasses.is_dataclass(e.type):
        return describe(e.type)
    classes = sections(e.type)
    if classes and not _scalars(e.type):
        return describe(classes[0]) + (" or null" if _optional(e.type) is not None else "")
    return rule_of(e.type, e.setting).expected + "".join(f" or {describe(c)}" for c in classes)


def nested(e: Entry) -> list[tuple[str, type]]:
    """The mappings inside a field, each with what its path adds to the field's: a section (nothing), a list's items
    (`[]`), a tagged variant (`.<tag>`)."""
    if e.setting.tagged:
        return [(f".{c.tag}", c) for c in sections(e.type)]
    if listed(e.type) is not None:
        return [("[]", listed(e.type))]
    return [("", c) for c in sections(e.type)]


def join(where: str, key: Any) -> str:
    return ".".join(str(part) for part in (where, key) if part != "")


# ---- the reader ----------------------------------------------------------------------------------------------


class Reader:
    """Reads the sections of one file into their dataclasses; `searched` collects the distributions it meets."""

    def __init__(self, path: Path):
        self.path = path
        self.searched: dict[str, Distribution] = {}

    def error(self, where: str, expected: str, got: Any) -> InputError:
        return InputError(f"{self.path}: {where or '(top level)'}: expected {expected}, got {show(got)}")

    def missing(self, where: str, expected: str) -> InputError:
        return InputError(f"{self.path}: {where}: missing; expected {expected}")

    def read(self, cls: type, raw: Any, where: str = "", **extra: Any) -> Any:
        """`raw` (one mapping of the file, at `where`) as a `cls`; `extra` sets the fields the file does not."""
        self._check_keys(cls, raw, where)
        values = {e.name: self._entry(e, raw, where) for e in entries(cls)}
        try:
            return cls(**values, **extra)
        except FieldError as err:
            raise InputError(f"{self.path}: {join(where, err.field)}: {err.message}") from None

    def _check_keys(self, cls: type, raw: Any, where: str) -> None:
        known = keys(cls)
        if not isinstance(raw, Mapping):
            raise self.error(where, describe(cls), raw)
        for key, value in raw.items():
            if key not in known:
                raise InputError(f"{self.path}: {join(where, key)}: unknown field; expected one of {', '.join(known)}")
            inner = known[key]
            if inner is None:
                continue
            if not isinstance(value, Mapping):
                raise self.error(join(where, key), f"a mapping with the fields {', '.join(inner)}", value)
            for name in value:
                if name not in inner:
                    raise InputError(f"{self.path}: {join(where, f'{key}.{name}')}: unknown field; "
                                     f"expected one of {', '.join(inner)}")

    def _entry(self, e: Entry, raw: Mapping, where: str) -> Any:
        if e.setting.inline:
            own = keys(e.type)
            return self.read(e.type, {k: v for k, v in raw.items() if k in own}, where)
        at = join(where, ".".join(e.path))
        value = raw
        for part in e.path:
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is not _MISSING:
            return self._value(e, value, at)
        if e.default is _MISSING or e.setting.required:
            if dataclasses.is_dataclass(e.type):
                raise InputError(f"{self.path}: {at}: missing section; expected {describe(e.type)}")
            raise self.missing(at, words(e))
        return _resolve(e.default) if isinstance(e.default, Path) else e.default  # a default path as a given one

    def _value(self, e: Entry, value: Any, at: str) -> Any:
        s, classes = e.setting, sections(e.type)
        if s.tagged:
            return self._tagged(e, value, at)
        item = listed(e.type)
        if item is not None:
            if not isinstance(value, list) or not value:
                raise self.error(at, words(e), value)
            return tuple(self.read(item, raw, f"{at}[{i}]") for i, raw in enumerate(value))
        if classes and isinstance(value, Mapping):
            return self.read(classes[0], value, at)
        if classes and not _scalars(e.type):
            if value is None and _optional(e.type) is not None:
                return None
            raise self.error(at, words(e), value)
        rule = rule_of(e.type, s)
        if s.searchable and isinstance(value, Mapping):
            dist = self._distribution(at, value, rule)
            self.searched[e.name] = dist
            return e.default if dist.default is None else rule.convert(dist.default)
        if not rule.ok(value):
            raise self.error(at, words(e), value)
        return rule.convert(value)

    def _tagged(self, e: Entry, value: Any, at: str) -> Any:
        if value in ("none", None):
            return None
        by_tag = {c.tag: c for c in sections(e.type)}
        if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in by_tag:
            raise self.error(at, tagged_words(e.type), value)
        (tag, inner), = value.items()
        return self.read(by_tag[tag], {} if inner is None else inner, join(at, tag))

    def _distribution(self, at: str, raw: Mapping, rule: Rule) -> Distribution:
        """A searched setting: exactly one distribution the rule allows, its values and optional default."""
        found = [k for k in DISTRIBUTIONS if k in raw]
        if len(found) != 1 or found[0] not in rule.samplers:
            raise self.error(at, f"{rule.expected}, or {{{' | '.join(rule.samplers)}: ..., default: ...}} to search it",
                             dict(raw))
        kind = found[0]
        unknown = [k for k in raw if k not in (kind, "default")]
        if unknown:
            raise InputError(f"{self.path}: {join(at, unknown[0])}: unknown field; expected one of {kind}, default")
        if kind == "choice":
            values = tuple(self._get(raw, at, "choice", list_of(rule, distinct=True)))
            among = Rule(f"one of {list(values)}", lambda v: rule.ok(v) and v in values)
            default = self._get(raw, at, "default", among, values[0])
            return Distribution(kind, values, default)
        both = Rule(f"{rule.expected} and an integer", lambda v: rule.ok(v) and _is_int(v)) if kind == "int" else rule
        log = kind == "loguniform"
        pair = Rule(
            f"[low, high] with low < high{', low > 0' if log else ''}, each {both.expected}",
            lambda v: (isinstance(v, list) and len(v) == 2 and all(both.ok(x) for x in v) and v[0] < v[1]
                       and (not log or v[0] > 0)),
        )
        low, high = self._get(raw, at, kind, pair)
        within = Rule(f"{both.expected} within [{low}, {high}]", lambda v: both.ok(v) and low <= v <= high)
        return Distribution(kind, (low, high), self._get(raw, at, "default", within, None))

    def _get(self, raw: Mapping, where: str, key: str, rule: Rule, default: Any = _MISSING) -> Any:
        if key not in raw:
            if default is _MISSING:
                raise self.missing(join(where, key), rule.expected)
            return default
        if not rule.ok(raw[key]):
            raise self.error(join(where, key), rule.expected, raw[key])
        return raw[key]

