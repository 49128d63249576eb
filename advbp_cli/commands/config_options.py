"""Command-line options for the config, generated from the pydantic models in advbp_cli.config, in one place.

Every field of every section of RunConfig becomes a flag named after it (`train.adv_weight` -> `--adv-weight`,
`model.hidden` -> `--hidden`, a bool -> `--x/--no-x`), and every field can also be set as
`--set SECTION.FIELD=VALUE` (`--set train.momentum=0.9`, `--set model.hidden=800,800`). Both give the same
text to the same parser (`parse_text`, chosen by the field's annotation), and the values are validated by the
pydantic models together with the preset, so a bad value is one line naming the option the user typed
(`config.one_line` with `ConfigOverrides.origin`). Click choices come from the Literal (or the `Choices` registry
marker) of the field, help texts from its description, default and `paper` note. A field added to a model is a
flag of `advbp train` and `advbp sweep` without touching this file.

Why not pydanclick: it builds the model from the options alone (we layer defaults <- preset <- options, and a
preset's values must not be replaced by option defaults), takes lists as JSON (`--hidden '[800, 800]'`, not
`800,800`), names nested fields with prefixes (`--train-eps`), and has no `--set`; wrapping it would take more
code than this module.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field

import click
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from ..config import Choices, RunConfig, option_name
from ..errors import UsageProblem

SECTION_TITLES = {
    "model": "Network (config section [model])",
    "train": "Training (config section [train])",
    "data": "Data (config section [data])",
    "runtime": "Runtime (config section [runtime])",
}
NONE_WORDS = ("none", "null", "off")


# ------------------------------------------------------------------------------------------------ the fields
@dataclass(frozen=True)
class ConfigField:
    section: str
    name: str
    info: FieldInfo

    @property
    def flag(self) -> str:
        return option_name(self.section, self.name)

    @property
    def dest(self) -> str:  # the click parameter name; prefixed so it never meets a command's own parameters
        return f"cfg__{self.section}__{self.name}"

    @property
    def key(self) -> tuple[str, str]:
        return self.section, self.name

    @property
    def shape(self) -> "ValueShape":
        return value_shape(self.info.annotation)

    def convert(self, value, where: str):
        """The typed value (e.g. "0.9" -> 0.9, ["800", "800"] -> [800, 800]) by the field's own type and bounds,
        as recorded in sweep.json and config.json; the section's cross-field checks run later with the preset."""
        adapter = TypeAdapter(typing.Annotated[self.info.annotation, self.info], config=ConfigDict(allow_inf_nan=False))
        try:  # in JSON form (a tuple as a list), as sweep.json records it and compares it on --resume
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as err:
            msg = err.errors()[0]["msg"].removeprefix("Value error, ")
            raise UsageProblem(f"invalid value for {where}: {msg} (got {value!r}; expected "
                               f"{self.shape.metavar()})") from None

    def choices(self) -> list[str] | None:
        for meta in self.info.metadata:
            if isinstance(meta, Choices):
                return list(meta.values())
        inner = self.shape.item
        if typing.get_origin(inner) is typing.Literal:
            return [str(a) for a in typing.get_args(inner)]
        return None


def sections() -> dict[str, type[BaseModel]]:
    """The config sections: every field of RunConfig whose type is a model."""
    return {name: info.annotation for name, info in RunConfig.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)}


def config_fields() -> list[ConfigField]:
    return [ConfigField(sec, name, info) for sec, model in sections().items() for name, info in model.model_fields.items()]


def find_field(section: str, name: str) -> ConfigField:
    for f in config_fields():
        if f.key == (section, name):
            return f
    raise KeyError((section, name))


# ------------------------------------------------------------------------------------------------ text -> value
@dataclass(frozen=True)
class ValueShape:
    kind: str  # "bool" | "scalar" | "list" | "scalar_or_list"
    optional: bool
    item: object  # the scalar type (int, float, str, a Literal) or the list's item type
    length: int | None = None  # a fixed-length tuple's length

    def metavar(self) -> str:
        name = _metavar(self.item)
        if self.kind == "list":
            name = ",".join([name] * self.length) if self.length else f"{name},{name},..."
        elif self.kind == "scalar_or_list":
            name = f"{name}[,{name},...]"
        return name + ("|none" if self.optional else "")


def _metavar(t) -> str:
    if typing.get_origin(t) is typing.Literal:
        return "|".join(map(str, typing.get_args(t)))
    if typing.get_origin(t) in (typing.Union, types.UnionType):  # e.g. "auto" | int: auto|INT
        return "|".join(_metavar(a) for a in typing.get_args(t))
    return {int: "INT", float: "FLOAT", str: "TEXT", bool: "BOOL"}.get(t, "TEXT")


def value_shape(annotation) -> ValueShape:
    args = typing.get_args(annotation)
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
        args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return ValueShape("bool", optional, bool)
    if origin in (list, tuple):
        fixed = len(args) if origin is tuple and Ellipsis not in args else None
        return ValueShape("list", optional, next(a for a in args if a is not Ellipsis), fixed)
    if origin in (typing.Union, types.UnionType):
        lists = [a for a in args if typing.get_origin(a) in (list, tuple)]
        if lists:  # e.g. float | list[float]: one value or one per layer
            scalar = next(a for a in args if typing.get_origin(a) not in (list, tuple))
            return ValueShape("scalar_or_list", optional, scalar)
        return ValueShape("scalar", optional, annotation)  # e.g. "auto" | int: one value of either kind
    return ValueShape("scalar", optional, annotation)


def parse_text(text: str, shape: ValueShape, where: str):
    """The value of an option's text, for pydantic to validate: lists split at commas ("800,800", "[800, 800]";
    for integer lists also "800x800"), "none" for an optional field; numbers stay text and pydantic converts
    them, so a bad number gets the same message from a flag and from --set."""
    t = str(text).strip()
    if shape.optional and t.lower() in NONE_WORDS:
        return None
    if shape.kind in ("list", "scalar_or_list"):
        bracketed = t[:1] in "[(" and t[-1:] in "])"
        body = t[1:-1] if bracketed else t
        sep = r"[,x]" if shape.item is int else r","
        items = [p.strip() for p in re.split(sep, body)]
        if not body.strip() or any(not p for p in items):
            raise UsageProblem(f"invalid value for {where}: {text!r} (expected comma-separated values, e.g. "
                               f"{_example(shape)})")
        if shape.kind == "scalar_or_list" and len(items) == 1 and not bracketed:
            return items[0]
        return items
    return t


def _example(shape: ValueShape) -> str:
    return {int: "400,400", float: "0.5,0.25"}.get(shape.item, "a,b")  # type: ignore[call-overload]


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def help_text(f: ConfigField, default_note: str | None = None) -> str:
    desc = (f.info.description or f.name.replace("_", " ")).rstrip(".")
    default = default_note or _show(f.info.default)
    paper = (f.info.json_schema_extra or {}).get("paper") if isinstance(f.info.json_schema_extra, dict) else None
    return f"{desc}. Default: {default}" + (f"; paper: {paper}." if paper else ".")


# ------------------------------------------------------------------------------------------------ click options
class ConfigOption(click.Option):
    """A click option that sets one config field; its section titles its group in --help."""

    def __init__(self, *args, config_field: ConfigField, **kwargs):
        super().__init__(*args, **kwargs)
        self.config_field = config_field
        self.help_section = SECTION_TITLES.get(config_field.section, f"[{config_field.section}]")


def field_option(f: ConfigField, dest: str | None = None, default_note: str | None = None) -> click.Option:
    """The click option of one field: a Choice for a Literal or registry, a --x/--no-x pair for a bool, text for
    the rest (parsed by parse_text, validated by pydantic)."""
    dest = dest or f.dest
    common = dict(default=None, help=help_text(f, default_note), config_field=f)
    if f.shape.kind == "bool":
        return ConfigOption([f"{f.flag}/--no-{f.flag[2:]}", dest], **common)
    choices = f.choices()
    if choices is not None and f.shape.kind == "scalar":
        return ConfigOption([f.flag, dest], type=click.Choice(choices), **common)
    return ConfigOption([f.flag, dest], metavar=f.shape.metavar(), **common)


SET_HELP = ("Set any config field: SECTION.FIELD=VALUE, e.g. train.momentum=0.9 or model.hidden=800,800 (lists "
            "comma-separated, 'none' for an optional field). Repeatable. The fields are the flags below; "
            "`advbp presets show NAME` prints them all.")


class SectionedCommand(click.Command):
    """--help with the config flags grouped by section, after the command's own options. A config field whose
    flag is also one of the command's own options (a field named `out`, say) stops the import: click would
    silently let one shadow the other."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        seen: dict[str, str] = {}
        for p in self.params:
            for opt in [*p.opts, *p.secondary_opts]:
                if opt in seen:
                    raise RuntimeError(f"advbp {self.name}: option {opt} is defined twice ({seen[opt]} and {p.name}); "
                                       "rename the config field or the command's option")
                seen[opt] = p.name or opt

    def format_options(self, ctx, formatter):
        groups: dict[str, list] = {"Options": []}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None:
                groups.setdefault(getattr(p, "help_section", "Options"), []).append(record)
        for title, rows in groups.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


# ------------------------------------------------------------------------------------------------ the overrides
@dataclass
class ConfigOverrides:
    """What the command line set: nested values for build_config and, per (section, field), the option that set
    it (for error messages and for what --resume may change)."""

    values: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)

    def set(self, f: ConfigField, value, where: str) -> None:
        if f.key in self.origin:
            raise UsageProblem(f"{self.origin[f.key]} and {where} both set {f.section}.{f.name}; give it once")
        self.values.setdefault(f.section, {})[f.name] = value
        self.origin[f.key] = where


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def parse_set(item: str, excluded: dict[tuple[str, str], str]) -> tuple[ConfigField, str]:
    """`SECTION.FIELD=VALUE` -> (field, value text); unknown names get a did-you-mean."""
    if "=" not in item:
        raise UsageProblem(f"invalid value for --set: {item!r} (expected SECTION.FIELD=VALUE, e.g. train.momentum=0.9)")
    name, text = item.split("=", 1)
    name = name.strip()
    fields = config_fields()
    secs = list(sections())
    by_name = {f.name: f for f in fields}
    if "." not in name:
        hint = f"did you mean '{by_name[name].section}.{name}'? " if name in by_name else ""
        raise UsageProblem(f"invalid value for --set: {name!r} names no config field ({hint}give SECTION.FIELD, "
                           f"sections: {', '.join(secs)})")
    sec, key = name.split(".", 1)
    if sec not in secs:
        raise UsageProblem(f"invalid value for --set {name}: no config section {sec!r} ({_suggest(sec, secs)}"
                           f"sections: {', '.join(secs)})")
    in_section = {f.name: f for f in fields if f.section == sec}
    if key not in in_section:
        if key in by_name:
            hint = f"did you mean '{by_name[key].section}.{key}'? "
        else:
            hint = _suggest(key, in_section)
        listing = hint.removesuffix(" ") if hint else f"fields: {', '.join(in_section)}"
        raise UsageProblem(f"invalid value for --set {name}: [{sec}] has no field {key!r} ({listing})")
    if (sec, key) in excluded:
        raise UsageProblem(f"--set {name} cannot be given here: {excluded[(sec, key)]}")
    return in_section[key], text


def collect(params: dict, set_items, excluded: dict[tuple[str, str], str]) -> ConfigOverrides:
    """The ConfigOverrides of a command's parsed flags (their dests) and --set items."""
    out = ConfigOverrides()
    for f in config_fields():
        value = params.get(f.dest)
        if value is None or f.key in excluded:
            continue
        text = value if isinstance(value, bool) else parse_text(value, f.shape, f.flag)
        out.set(f, f.convert(text, f.flag), f.flag)
    for item in set_items or ():
        f, text = parse_set(item, excluded)
        where = f"--set {f.section}.{f.name}"
        out.set(f, f.convert(parse_text(text, f.shape, where), where), where)
    return out


def config_options(excluded: dict[tuple[str, str], str] | None = None):
    """Decorator: one flag per config field (except `excluded`: (section, field) -> why) plus --set; the command
    receives a single `config: ConfigOverrides` argument instead of the flags."""
    excluded = dict(excluded or {})
    fields = [f for f in config_fields() if f.key not in excluded]

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            items = kwargs.pop("config_set", ())
            parsed = {f.dest: kwargs.pop(f.dest, None) for f in fields}
            kwargs["config"] = collect(parsed, items, excluded)
            return func(*args, **kwargs)

        for f in reversed(fields):
            wrapper = _attach(wrapper, field_option(f))
        wrapper = click.option("--set", "config_set", multiple=True, metavar="SECTION.FIELD=VALUE", help=SET_HELP)(wrapper)
        return wrapper

    return decorate


def _attach(func, option: click.Option):
    if not hasattr(func, "__click_params__"):
        func.__click_params__ = []
    func.__click_params__.append(option)
    return func


def runtime_options(*names: str, default_note: str = "the run's"):
    """The runtime fields' flags (e.g. --backend, --device) for commands that read a run (eval, attack, report):
    generated as above, but handed to the command as plain values named after the field."""

    def decorate(func):
        for name in reversed(names):
            func = _attach(func, field_option(find_field("runtime", name), dest=name, default_note=default_note))
        return func

    return decorate
