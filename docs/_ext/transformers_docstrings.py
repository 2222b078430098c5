"""Griffe extension: read transformers-style docstrings as Google-style ones, without changing the package.

transformers' `@auto_docstring` convention (followed by `modeling_merv.py`, and by `configuration_merv.py` for the
configs) lists a function's or an output's own arguments without an `Args:` header, and links classes as
[`Name`]. mkdocstrings' Google parser would render such a list as one run-on paragraph and the links as literal
brackets. So, before the docstrings are parsed, this extension

* puts a header over a bare argument list (a block of `name (type):` items, each followed by its indented
  description, that runs to the end of the docstring): `Args:` for a function's parameters (griffe checks them
  against the signature), `Keyword Args:` for the ones it takes through `**kwargs`, `Attributes:` for a class
  (config and output fields; `a, b (type):` becomes one item per name);
* writes an item's type without its Markdown (`` `int`, *optional* `` as `int, optional`), which the type
  column would show verbatim;
* turns [`Name`] into a link to the API page when `transformers_merv` exports `Name`, else into `Name`.
"""

from __future__ import annotations

import re

import griffe

ITEM = re.compile(r"^(?P<name>[A-Za-z_][\w, ]*) \(.+\):$")
LINK = re.compile(r"\[`([A-Za-z_]\w*)`\](?![\[(])")
TYPED_ITEM = re.compile(r"^(?P<head> *[A-Za-z_][\w, ]* )\((?P<type>.+)\):$", re.MULTILINE)
TYPE_MARKUP = re.compile(r"[`*]")


class TransformersDocstrings(griffe.Extension):
    def __init__(self, package: str = "transformers_merv") -> None:
        super().__init__()
        self.package = package
        self.exported: set[str] | None = None

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None or not (obj.is_function or obj.is_class):
            return
        text = _add_headers(obj.docstring.value, obj)
        text = TYPED_ITEM.sub(_plain_type, text)
        exported = self._exports(obj)
        obj.docstring.value = LINK.sub(
            lambda m: f"[`{m[1]}`][{self.package}.{m[1]}]" if m[1] in exported else f"`{m[1]}`", text
        )

    def _exports(self, obj: griffe.Object) -> set[str]:
        if self.exported is None:
            names = obj.package.members.get("__all__")
            elements = getattr(getattr(names, "value", None), "elements", [])
            self.exported = {str(element).strip("'\"") for element in elements}
        return self.exported


def _plain_type(match: re.Match) -> str:
    """`name (`int`, *optional*):` as `name (int, optional):`; [`Name`] as `Name`."""
    type_text = TYPE_MARKUP.sub("", LINK.sub(r"\1", match["type"]))
    return f"{match['head']}({type_text}):"


def _add_headers(text: str, obj: griffe.Object) -> str:
    lines = text.split("\n")
    start = next(
        (i for i, line in enumerate(lines) if ITEM.match(line) and (i == 0 or not lines[i - 1].strip())), None
    )
    if start is None:
        return text
    items: list[list[str]] = []
    for line in lines[start:]:
        if ITEM.match(line):
            items.append([line])
        elif not line.strip() or line.startswith(" "):
            items[-1].append(line)
        else:  # prose after the list: not a bare argument list
            return text
    if obj.is_class:
        sections = {"Attributes:": [entry for item in items for entry in _one_per_name(item)]}
    else:
        parameters = obj.parameters
        takes_kwargs = any(p.kind is griffe.ParameterKind.var_keyword for p in parameters)
        through_kwargs = [i for i in items if takes_kwargs and ITEM.match(i[0])["name"] not in parameters]
        sections = {"Args:": [i for i in items if i not in through_kwargs], "Keyword Args:": through_kwargs}
    body = lines[:start]
    for header, section in sections.items():
        if section:
            if body and body[-1].strip():
                body.append("")  # a section starts after a blank line
            body += [header] + [f"    {line}" if line.strip() else line for item in section for line in item]
    return "\n".join(body)


def _one_per_name(item: list[str]) -> list[list[str]]:
    """`a, b (type):` and its description as one item per name (Google style names one attribute per item)."""
    names, rest = item[0].split(" (", 1)
    return [[f"{name.strip()} ({rest}", *item[1:]] for name in names.split(",")]
