"""The command line shared by the experiment scripts.

A config dataclass is the single description of its flags: ``add_config_flags`` turns each
field into ``--field-name`` with the field's type, its default and its comment as the help text,
and ``config_from_flags`` builds the dataclass back from the parsed namespace.

    @dataclasses.dataclass(frozen=True)
    class Config:
        epochs: int = 10  # passes over the training split
        hidden: tuple[int, ...] = (400,)  # hidden widths
        data_dir: str | None = None  # where the data lives (None: the default place)

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Config)  # --epochs EPOCHS, --hidden HIDDEN [HIDDEN ...], --data-dir
    config = config_from_flags(parser.parse_args(argv), Config)

The mapping, by field type: ``int``, ``float``, ``str`` take one value; ``X | None`` takes an X
(the default None means "not given"); ``tuple[X, ...]`` takes one or more values; ``bool`` is a
switch (``--flag`` when the default is False, ``--flag / --no-flag`` otherwise);
``typing.Literal[...]`` restricts the values to its choices. A field whose type is itself a
dataclass is a section: its fields become flags too, under their own (flat) names, grouped in
``--help`` under the section's name and the first line of its docstring. A field's flat name is
its name, or ``metadata["flat_name"]`` where the section sets one (``jaxvae.ModelConfig.name``
is ``--model``).

The help text is the comment after the field; comment lines right below it that start with
``#`` and at least two more spaces continue it.

``parser`` makes a script's parser, ``script_main`` runs the script: bad input is one line
``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m <module>``, described by the script's docstring."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def flag_name(field_name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


def flat_name(field: dataclasses.Field) -> str:
    """The flag's (and the namespace's) name of a dataclass field."""
    return field.metadata.get("flat_name", field.name)


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> Mapping[str, str]:
    """The comment after each field of the class ``cls`` (with its continuation lines), by name
    (read-only: one parse of the source per class, shared by every parser built from it).

    Fields without a comment are left out; so is everything when the source is not available.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return types.MappingProxyType({})
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        line = node.end_lineno
        if line not in comments:
            continue
        parts = [comments[line][1:].strip()]
        line += 1
        while (line in comments and lines[line - 1].lstrip().startswith("#")
               and comments[line].startswith("#  ")):
            parts.append(comments[line][1:].strip())
            line += 1
        out[node.target.id] = " ".join(parts)
    return types.MappingProxyType(out)


def _section_type(tp) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _summary(cls: type) -> str:
    """The first paragraph of the class's own docstring ("" for dataclasses without one)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses write in its place
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def _strip_optional(tp):
    """``X | None`` -> X; anything else unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _argparse_kwargs(name: str, tp, default) -> dict:
    """The add_argument keywords of one field (without help)."""
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        if default is True:
            return {"action": argparse.BooleanOptionalAction, "default": True}
        return {"action": "store_true", "default": bool(default)}
    if origin is typing.Literal:
        values = typing.get_args(tp)
        return {"type": type(values[0]), "choices": list(values), "default": default}
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis or args[0] not in (int, float, str):
            raise TypeError(f"field {name}: no flag for type {tp!r}; use tuple[int, ...], "
                            "tuple[float, ...] or tuple[str, ...]")
        return {"type": args[0], "nargs": "+",
                "default": None if default is None else list(default)}
    if tp in (int, float, str):
        return {"type": tp, "default": default}
    raise TypeError(f"field {name}: no flag for type {tp!r}; use int, float, str, bool, "
                    "X | None, tuple[X, ...] or a Literal")


def _default_text(default) -> str:
    if isinstance(default, (tuple, list)):
        return " ".join(str(v) for v in default)
    return str(default)


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_cls: type,
                     *, choices: Mapping[str, Sequence] | None = None) -> None:
    """Adds one flag per field of the dataclass ``config_cls`` (sections walked, flat names).

    Args:
      parser: the parser (or argument group) that receives the flags.
      config_cls: a dataclass whose every field has a default.
      choices: allowed values of some fields, by flat name, where another module defines
        them (a registry of models, say) rather than the field's type.
    """
    unused = dict(choices or {})
    _add_fields(parser, config_cls, unused)
    if unused:
        raise TypeError(f"choices for {sorted(unused)}: {config_cls.__name__} has no such field")


def _add_fields(parser, config_cls: type, choices: dict) -> None:
    hints = typing.get_type_hints(config_cls)
    comments = field_comments(config_cls)
    for field in dataclasses.fields(config_cls):
        section = _section_type(hints[field.name])
        if section is not None:
            doc = _summary(section)
            group = parser.add_argument_group(field.name, doc or None) \
                if isinstance(parser, argparse.ArgumentParser) else parser
            _add_fields(group, section, choices)
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            raise TypeError(f"field {field.name} of {config_cls.__name__} needs a default to "
                            "become a flag")
        name = flat_name(field)
        kwargs = _argparse_kwargs(name, hints[field.name], default)
        if name in choices:
            kwargs["choices"] = list(choices.pop(name))
        text = comments.get(field.name, "")
        if default is not None and not isinstance(default, bool):
            text = f"{text} (default: {_default_text(default)})".strip()
        kwargs["help"] = text.replace("%", "%%")
        parser.add_argument(flag_name(name), dest=name, **kwargs)


def config_from_flags(args: argparse.Namespace, config_cls: type):
    """The dataclass ``config_cls`` filled from the flags of ``add_config_flags``."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for field in dataclasses.fields(config_cls):
        section = _section_type(hints[field.name])
        if section is not None:
            values[field.name] = config_from_flags(args, section)
            continue
        value = getattr(args, flat_name(field))
        if isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return config_cls(**values)


def check_positive(args: argparse.Namespace, names) -> None:
    """Raises ValueError naming the first flag of ``names`` (attribute names) below 1."""
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"{flag_name(name)} must be >= 1, got {getattr(args, name)}")


def check_outside(path, flag: str, outdir) -> None:
    """ValueError when ``path`` (an input of the script) is ``outdir`` or lies inside it, whose
    files --overwrite deletes. A path that does not exist (or None) passes."""
    if path is None or not Path(path).exists():
        return
    run_dir, inside = Path(outdir).resolve(), Path(path).resolve()
    if inside == run_dir or run_dir in inside.parents:
        raise ValueError(f"{flag} {path} lies inside --outdir {outdir}, whose files "
                         "--overwrite deletes: move it or choose another --outdir")


_NOT_GIVEN = object()


def given_flags(build_parser: Callable[[], argparse.ArgumentParser], argv=None) -> frozenset[str]:
    """The destinations (field names) of the flags given in ``argv`` (default sys.argv[1:]).

    A flag given with its default value counts as given; one left out does not, whatever the
    parser's defaults. Parses ``argv`` with a fresh parser whose every default is a marker.
    """
    p = build_parser()
    for action in p._actions:
        if action.dest != argparse.SUPPRESS and action.default != argparse.SUPPRESS:
            action.default = _NOT_GIVEN
    p._defaults = {}
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return frozenset(name for name, value in vars(args).items() if value is not _NOT_GIVEN)


def script_main(build_parser: Callable, run: Callable, argv=None,
                errors: tuple[type[BaseException], ...] = (ValueError, TypeError)) -> int:
    """Parses ``argv``, calls ``run(args)``; an exception in ``errors``: `error: ...`, returns 2."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
