"""The rule condition language: a small expression language over ``user.*`` and ``event.*``.

A condition such as ``user.deposit_count > 1 and user.country in ["CA", "US"]`` is compiled once, when
its rule is loaded, into a tree of plain Python closures. Compiling type-checks every field against a
:data:`Schema` (dotted path -> :class:`FieldType`), so a typo or a type mismatch is reported, with the
column it starts at, before the rule ever runs. Evaluating a compiled :class:`Condition` never raises:
a missing value (``None``, an absent map key) or a value of an unexpected type makes the comparison it
is in false.

Pipeline: ``_tokenize`` (text -> tokens) -> ``_Parser`` (tokens -> AST with positions) -> ``_infer``
(type check, fields read) -> ``_compile`` (AST -> closures, constants folded). The rule author's
reference, with the grammar and every error message, is ``docs/conditions.md``.
"""

from __future__ import annotations

import difflib
import math
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

import pydantic

from smartico_stream.events.types import parse_utc_timestamp

__all__ = [
    "ALWAYS",
    "Condition",
    "ConditionError",
    "FieldType",
    "Schema",
    "compile_condition",
    "event_schema",
    "model_schema",
]


class FieldType(StrEnum):
    """The type of a field a condition can read."""

    NUMBER = "number"  # Decimal (int fields too); literals are Decimal, never float
    STRING = "string"  # str, StrEnum (compared by value), identifiers
    BOOL = "bool"
    TIMESTAMP = "timestamp"  # aware UTC datetime
    STRING_SET = "string_set"  # set/frozenset/list of str: `contains`, `in`, len()
    NUMBER_MAP = "number_map"  # dict[str, Decimal], indexed like user.deposit_total["EUR"]
    ANY_MAP = "any_map"  # dict of JSON values (event.extra); indexed values type-check as "any"


Schema = Mapping[str, FieldType]
"""Known fields by dotted path, e.g. ``{"user.country": FieldType.STRING, "event.amount": ...}``."""

# Types that exist only inside expressions.
_DURATION: Final = "duration"
_ANY: Final = "any"  # a value read from an any_map: compatible with everything, checked at run time
_NUMBER: Final = FieldType.NUMBER.value
_STRING: Final = FieldType.STRING.value
_BOOL: Final = FieldType.BOOL.value
_TIMESTAMP: Final = FieldType.TIMESTAMP.value
_STRING_SET: Final = FieldType.STRING_SET.value
_NUMBER_MAP: Final = FieldType.NUMBER_MAP.value
_ANY_MAP: Final = FieldType.ANY_MAP.value
_EQUATABLE: Final = frozenset({_NUMBER, _STRING, _BOOL, _TIMESTAMP, _DURATION})
_ORDERABLE: Final = frozenset({_NUMBER, _STRING, _TIMESTAMP, _DURATION})

MAX_DEPTH: Final = 32
"""How deeply a condition may nest (parentheses, operators, calls); deeper text is a ConditionError."""


def _list_type(element: str) -> str:
    return f"list[{element}]"


def _element_type(type_: str) -> str | None:
    return type_[5:-1] if type_.startswith("list[") else None


def _describe_type(type_: str) -> str:
    element = _element_type(type_)
    return f"list of {element}" if element else type_


# Errors ----------------------------------------------------------------------------------------


class ConditionError(ValueError):
    """A condition that cannot be compiled: what is wrong, what was expected, and where.

    ``str(err)`` shows the message, the 1-based column, the expression and a caret under the column::

        unknown field user.contry; did you mean user.country? (column 1)
          user.contry == "CA"
          ^
    """

    def __init__(self, message: str, expression: str, column: int) -> None:
        self.message = message
        self.expression = expression
        self.column = column
        super().__init__(message, expression, column)

    def __str__(self) -> str:
        return f"{self.message} (column {self.column})\n  {self.expression}\n  {' ' * (self.column - 1)}^"


class _Problem(Exception):
    """Raised inside the compiler with a 0-based offset; turned into a ConditionError at the top."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


# Tokens ----------------------------------------------------------------------------------------

_KEYWORDS: Final = frozenset({"and", "or", "not", "in", "contains", "true", "false"})
_TWO_CHAR_OPS: Final = frozenset({"==", "!=", "<=", ">="})
_ONE_CHAR_OPS: Final = frozenset("<>+-*/()[],.")
_COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})
_DIGITS: Final = frozenset("0123456789")
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ESCAPES: Final = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_MISTAKES: Final = {
    "=": "use '==' to compare",
    "!": "use 'not' to negate, or '!=' to compare",
    "&": "use 'and'",
    "&&": "use 'and'",
    "|": "use 'or'",
    "||": "use 'or'",
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number" | "duration" | "string" | "name" | "op" | "end"
    text: str
    value: Any
    pos: int


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of input"
    if token.kind == "string":
        return f"string {token.text}"
    if token.kind in ("number", "duration"):
        return f"{token.kind} {token.text}"
    return f"'{token.text}'"


def _is_name_start(char: str) -> bool:
    return char == "_" or (char.isascii() and char.isalpha())


def _is_name_char(char: str) -> bool:
    return char == "_" or (char.isascii() and char.isalnum())


def _tokenize(text: str) -> list[_Token]:
    """Split condition text into tokens; the last one is always an ``end`` token."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
        elif char in _DIGITS:
            token = _scan_number(text, i)
            tokens.append(token)
            i += len(token.text)
        elif char in "\"'":
            token = _scan_string(text, i)
            tokens.append(token)
            i += len(token.text)
        elif _is_name_start(char):
            j = i + 1
            while j < n and _is_name_char(text[j]):
                j += 1
            tokens.append(_Token("name", text[i:j], text[i:j], i))
            i = j
        elif text[i : i + 2] in _TWO_CHAR_OPS:
            tokens.append(_Token("op", text[i : i + 2], None, i))
            i += 2
        elif char in _ONE_CHAR_OPS:
            tokens.append(_Token("op", char, None, i))
            i += 1
        else:
            wrong = text[i : i + 2] if text[i : i + 2] in _MISTAKES else char
            hint = _MISTAKES.get(wrong)
            raise _Problem(f"unexpected {wrong!r}; {hint}" if hint else f"unexpected character {char!r}", i)
    tokens.append(_Token("end", "", None, n))
    return tokens


def _scan_number(text: str, start: int) -> _Token:
    """A number (``10``, ``10.5``) or a duration (``30m``, ``1.5h``)."""
    j, n = start, len(text)
    while j < n and text[j] in _DIGITS:
        j += 1
    if j + 1 < n and text[j] == "." and text[j + 1] in _DIGITS:
        j += 1
        while j < n and text[j] in _DIGITS:
            j += 1
    digits = text[start:j]
    if j < n and _is_name_char(text[j]):
        k = j
        while k < n and _is_name_char(text[k]):
            k += 1
        unit = text[j:k]
        if unit not in _DURATION_UNITS:
            raise _Problem(
                f"invalid number {text[start:k]!r}; expected a number such as 10 or 10.5, "
                "or a duration such as 30m, 24h, 7d or 2w",
                start,
            )
        micros = Decimal(digits) * _DURATION_UNITS[unit] * 1_000_000
        try:
            duration = timedelta(microseconds=int(micros))
        except OverflowError:
            raise _Problem(f"duration {text[start:k]} is out of range", start) from None
        return _Token("duration", text[start:k], duration, start)
    return _Token("number", digits, Decimal(digits), start)


def _scan_string(text: str, start: int) -> _Token:
    quote, j, n = text[start], start + 1, len(text)
    chars: list[str] = []
    while j < n:
        char = text[j]
        if char == quote:
            return _Token("string", text[start : j + 1], "".join(chars), start)
        if char != "\\":
            chars.append(char)
            j += 1
            continue
        escape = text[j + 1 : j + 2]
        if escape in _ESCAPES:
            chars.append(_ESCAPES[escape])
            j += 2
        elif escape == "u" and _is_hex4(text[j + 2 : j + 6]):
            chars.append(chr(int(text[j + 2 : j + 6], 16)))
            j += 6
        elif escape == "":
            break  # a backslash at the very end: the string is unterminated
        else:
            raise _Problem(
                f"invalid escape '\\{escape}' in string; expected one of "
                "\\\\ \\\" \\' \\n \\t \\r or \\u followed by 4 hex digits",
                j,
            )
    raise _Problem(f"unterminated string; expected a closing {quote}", start)


def _is_hex4(text: str) -> bool:
    return len(text) == 4 and all(c in "0123456789abcdefABCDEF" for c in text)


# Syntax tree -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lit:
    start: int
    value: Any
    type: str
    depth: int = 1


@dataclass(frozen=True, slots=True)
class _List:
    start: int
    items: tuple[_Lit, ...]
    depth: int = 2


@dataclass(frozen=True, slots=True)
class _Path:
    start: int
    root: str  # "user" | "event"
    attrs: tuple[str, ...]
    depth: int = 1

    @property
    def dotted(self) -> str:
        return ".".join((self.root, *self.attrs))


@dataclass(frozen=True, slots=True)
class _Index:
    start: int
    target: _Path | _Index
    key: str
    bracket: int  # position of '['
    depth: int

    @property
    def dotted(self) -> str:
        return self.target.dotted


@dataclass(frozen=True, slots=True)
class _Unary:
    start: int
    op: str  # "-" | "not"
    operand: _Node
    depth: int


@dataclass(frozen=True, slots=True)
class _Binary:
    start: int
    op: str  # arithmetic, comparison, "in", "not in", "contains"
    op_pos: int
    left: _Node
    right: _Node
    depth: int


@dataclass(frozen=True, slots=True)
class _Logic:
    start: int
    op: str  # "and" | "or"
    operands: tuple[_Node, ...]
    depth: int


@dataclass(frozen=True, slots=True)
class _Call:
    start: int
    name: str
    args: tuple[_Node, ...]
    depth: int


_Node = _Lit | _List | _Path | _Index | _Unary | _Binary | _Logic | _Call


def _depth(*children: _Node) -> int:
    return 1 + max(child.depth for child in children)


# Parser ----------------------------------------------------------------------------------------

_VALUE_EXPECTED: Final = "expected a value (a field such as user.country, a literal or a function call)"
_TS_USAGE: Final = 'ts() expects one string such as ts("2025-03-03T09:00:00Z")'


class _Parser:
    """Recursive descent over the token list; one method per precedence level (lowest first)."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.nesting = 0

    # helpers
    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def at_op(self, *ops: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "op" and token.text in ops

    def at_keyword(self, word: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "name" and token.text == word

    def expect_op(self, op: str, context: str) -> _Token:
        if not self.at_op(op):
            token = self.peek()
            raise _Problem(f"expected '{op}' {context}, got {_describe(token)}", token.pos)
        return self.advance()

    def nested(self, pos: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise _Problem(f"the condition nests too deeply (more than {MAX_DEPTH} levels); simplify it", pos)

    def limit(self, node: _Node, pos: int) -> _Node:
        if node.depth > MAX_DEPTH:
            raise _Problem(f"the condition nests too deeply (more than {MAX_DEPTH} levels); simplify it", pos)
        return node

    # grammar
    def parse(self) -> _Node:
        node = self.or_()
        token = self.peek()
        if token.kind != "end":
            hint = "; keywords are lower case" if token.kind == "name" and token.text.lower() in _KEYWORDS else ""
            raise _Problem(
                f"unexpected {_describe(token)} after a complete expression; "
                f"expected an operator, 'and', 'or' or the end of the condition{hint}",
                token.pos,
            )
        return node

    def or_(self) -> _Node:
        return self.logic("or", self.and_)

    def and_(self) -> _Node:
        return self.logic("and", self.not_)

    def logic(self, word: str, operand: Callable[[], _Node]) -> _Node:
        first = operand()
        if not self.at_keyword(word):
            return first
        operands = [first]
        while self.at_keyword(word):
            self.advance()
            operands.append(operand())
        return self.limit(_Logic(first.start, word, tuple(operands), _depth(*operands)), first.start)

    def not_(self) -> _Node:
        if not self.at_keyword("not"):
            return self.comparison()
        token = self.advance()
        self.nested(token.pos)
        operand = self.not_()
        self.nesting -= 1
        return self.limit(_Unary(token.pos, "not", operand, _depth(operand)), token.pos)

    def comparison_op(self) -> str | None:
        token = self.peek()
        if token.kind == "op" and token.text in _COMPARISONS:
            return token.text
        if token.kind == "name" and token.text in ("in", "contains"):
            return token.text
        if self.at_keyword("not") and self.at_keyword("in", ahead=1):
            return "not in"
        return None

    def comparison(self) -> _Node:
        left = self.additive()
        op = self.comparison_op()
        if op is None:
            return left
        op_pos = self.advance().pos
        if op == "not in":
            self.advance()
        right = self.additive()
        node = self.limit(_Binary(left.start, op, op_pos, left, right, _depth(left, right)), op_pos)
        if self.comparison_op() is not None:
            raise _Problem(
                "comparisons cannot be chained; combine them with 'and', for example a < b and b < c",
                self.peek().pos,
            )
        return node

    def additive(self) -> _Node:
        return self.arithmetic(("+", "-"), self.multiplicative)

    def multiplicative(self) -> _Node:
        return self.arithmetic(("*", "/"), self.unary)

    def arithmetic(self, ops: tuple[str, ...], operand: Callable[[], _Node]) -> _Node:
        node = operand()
        while self.at_op(*ops):
            token = self.advance()
            right = operand()
            node = self.limit(_Binary(node.start, token.text, token.pos, node, right, _depth(node, right)), token.pos)
        return node

    def unary(self) -> _Node:
        if not self.at_op("-"):
            return self.primary()
        token = self.advance()
        self.nested(token.pos)
        operand = self.unary()
        self.nesting -= 1
        if isinstance(operand, _Lit) and operand.type in (_NUMBER, _DURATION):
            return _Lit(token.pos, _negate(operand.value), operand.type)
        return self.limit(_Unary(token.pos, "-", operand, _depth(operand)), token.pos)

    def primary(self) -> _Node:
        token = self.peek()
        if token.kind in ("number", "duration", "string"):
            self.advance()
            type_ = _STRING if token.kind == "string" else token.kind
            return _Lit(token.pos, token.value, type_)
        if token.kind == "op" and token.text == "(":
            self.advance()
            self.nested(token.pos)
            inner = self.or_()
            self.nesting -= 1
            self.expect_op(")", f"to close the '(' at column {token.pos + 1}")
            return inner
        if token.kind == "op" and token.text == "[":
            return self.list_literal()
        if token.kind != "name" or token.text in ("and", "or", "not", "in", "contains"):
            raise _Problem(f"{_VALUE_EXPECTED}, got {_describe(token)}", token.pos)
        if token.text in ("true", "false"):
            self.advance()
            return _Lit(token.pos, token.text == "true", _BOOL)
        if token.text == "ts" and self.at_op("(", ahead=1):
            return self.timestamp_literal()
        if self.at_op("(", ahead=1):
            return self.call()
        if token.text in ("user", "event"):
            return self.path()
        hint = " (keywords are lower case)" if token.text.lower() in _KEYWORDS else ""
        raise _Problem(
            f"unknown name '{token.text}'{hint}; expected a field such as user.country or event.amount, "
            "true, false or a function call",
            token.pos,
        )

    def call(self) -> _Node:
        name = self.advance()
        self.advance()  # '('
        self.nested(name.pos)
        args: list[_Node] = []
        if not self.at_op(")"):
            args.append(self.or_())
            while self.at_op(","):
                self.advance()
                args.append(self.or_())
        self.expect_op(")", f"to close the call to {name.text}()")
        self.nesting -= 1
        return self.limit(_Call(name.pos, name.text, tuple(args), _depth(*args) if args else 1), name.pos)

    def timestamp_literal(self) -> _Lit:
        name = self.advance()
        self.advance()  # '('
        argument = self.peek()
        if argument.kind != "string" or not self.at_op(")", ahead=1):
            raise _Problem(_TS_USAGE, name.pos)
        self.advance()
        self.advance()
        try:
            moment = parse_utc_timestamp(argument.value)
        except (ValueError, OverflowError, ArithmeticError):
            raise _Problem(
                f"invalid timestamp {argument.text}; expected ISO-8601 such as ts(\"2025-03-03T09:00:00Z\")",
                argument.pos,
            ) from None
        return _Lit(name.pos, moment, _TIMESTAMP)

    def path(self) -> _Node:
        root = self.advance()
        if not (self.at_op(".") and self.peek(1).kind == "name"):
            raise _Problem(
                f"expected '.' and a field name after '{root.text}', for example {root.text}.country",
                self.peek().pos,
            )
        attrs: list[str] = []
        while self.at_op(".") and self.peek(1).kind == "name":
            self.advance()
            attrs.append(self.advance().text)
        node: _Path | _Index = _Path(root.pos, root.text, tuple(attrs))
        while self.at_op("["):
            bracket = self.advance()
            key = self.peek()
            if key.kind != "string":
                raise _Problem(f'expected a string key such as ["EUR"] after \'[\', got {_describe(key)}', key.pos)
            self.advance()
            self.expect_op("]", "after the map key")
            node = _Index(root.pos, node, key.value, bracket.pos, node.depth + 1)
            self.limit(node, bracket.pos)
        return node

    def list_literal(self) -> _List:
        bracket = self.advance()
        if self.at_op("]"):
            raise _Problem('empty list; expected at least one element, for example ["CA", "US"]', bracket.pos)
        items = [self.list_item()]
        while self.at_op(","):
            self.advance()
            if self.at_op("]"):
                break  # a trailing comma
            items.append(self.list_item())
        self.expect_op("]", f"to close the list at column {bracket.pos + 1} (or ',' between elements)")
        return _List(bracket.pos, tuple(items))

    def list_item(self) -> _Lit:
        token = self.peek()
        negative = self.at_op("-") and self.peek(1).kind in ("number", "duration")
        if negative or token.kind in ("number", "duration", "string"):
            item = self.unary() if negative else self.primary()
            if not isinstance(item, _Lit):
                raise _Problem("a list element must be a literal (number, duration or string)", token.pos)
            return item
        if token.kind == "name" and token.text in ("true", "false"):
            return typing.cast(_Lit, self.primary())
        if token.kind == "name" and token.text == "ts" and self.at_op("(", ahead=1):
            return self.timestamp_literal()
        raise _Problem(
            "list elements must be literals (numbers, strings, true, false, durations or ts(...)), "
            f"got {_describe(token)}",
            token.pos,
        )


# Type checking ---------------------------------------------------------------------------------

# name -> (number of arguments, accepted argument types, result type); has() is special-cased.
_FUNCTIONS: Final[dict[str, tuple[int, frozenset[str], str]]] = {
    "abs": (1, frozenset({_NUMBER}), _NUMBER),
    "days_since": (1, frozenset({_TIMESTAMP}), _NUMBER),
    "has": (1, frozenset(), _BOOL),
    "hours_since": (1, frozenset({_TIMESTAMP}), _NUMBER),
    "len": (1, frozenset({_STRING, _STRING_SET}), _NUMBER),
    "lower": (1, frozenset({_STRING}), _STRING),
    "minutes_since": (1, frozenset({_TIMESTAMP}), _NUMBER),
    "now": (0, frozenset(), _TIMESTAMP),
    "upper": (1, frozenset({_STRING}), _STRING),
}
_FUNCTION_NAMES: Final = (*_FUNCTIONS, "ts")

# (op, left, right) -> result, for arithmetic; an "any" operand is taken as a number.
_ARITHMETIC: Final[dict[tuple[str, str, str], str]] = {
    ("+", _NUMBER, _NUMBER): _NUMBER,
    ("-", _NUMBER, _NUMBER): _NUMBER,
    ("*", _NUMBER, _NUMBER): _NUMBER,
    ("/", _NUMBER, _NUMBER): _NUMBER,
    ("+", _TIMESTAMP, _DURATION): _TIMESTAMP,
    ("-", _TIMESTAMP, _DURATION): _TIMESTAMP,
    ("-", _TIMESTAMP, _TIMESTAMP): _DURATION,
    ("+", _DURATION, _DURATION): _DURATION,
    ("-", _DURATION, _DURATION): _DURATION,
}
_ARITHMETIC_TYPES: Final = (_NUMBER, _TIMESTAMP, _DURATION)
_VERBS: Final = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}


@dataclass
class _Checked:
    """What type checking learns: the type of every node (by id) and the fields read."""

    types: dict[int, str] = field(default_factory=dict)
    fields: set[str] = field(default_factory=set)


def _infer(node: _Node, schema: Schema, checked: _Checked) -> str:
    """The type of ``node``; raises _Problem on an unknown field or a type mismatch."""
    type_ = _infer_node(node, schema, checked)
    checked.types[id(node)] = type_
    return type_


def _infer_node(node: _Node, schema: Schema, checked: _Checked) -> str:
    match node:
        case _Lit():
            return node.type
        case _List():
            return _infer_list(node)
        case _Path():
            return _infer_path(node, schema, checked)
        case _Index():
            target = _infer(node.target, schema, checked)
            if target == _NUMBER_MAP:
                return _NUMBER
            if target in (_ANY_MAP, _ANY):
                return _ANY
            raise _Problem(
                f"cannot index {node.target.dotted} ({target}); only number_map and any_map fields have keys",
                node.bracket,
            )
        case _Unary(op="not"):
            _require_bool(node.operand, _infer(node.operand, schema, checked), "'not'")
            return _BOOL
        case _Unary():
            negated = _infer(node.operand, schema, checked)
            if negated in (_NUMBER, _DURATION, _ANY):
                return negated
            raise _Problem(f"cannot negate {_describe_type(negated)}; expected a number or a duration", node.start)
        case _Logic():
            for operand in node.operands:
                _require_bool(operand, _infer(operand, schema, checked), f"'{node.op}'")
            return _BOOL
        case _Binary():
            left = _infer(node.left, schema, checked)
            right = _infer(node.right, schema, checked)
            return _infer_binary(node, left, right)
        case _Call():
            return _infer_call(node, schema, checked)
    raise AssertionError(f"unknown node {node!r}")  # pragma: no cover


def _infer_list(node: _List) -> str:
    element = node.items[0].type
    for item in node.items[1:]:
        if item.type != element:
            raise _Problem(
                f"list mixes {element} and {item.type}; expected all elements to have the same type", item.start
            )
    return _list_type(element)


def _infer_path(node: _Path, schema: Schema, checked: _Checked) -> str:
    dotted = node.dotted
    type_ = schema.get(dotted)
    if type_ is None:
        close = _closest_field(dotted, schema)
        hint = f"did you mean {close}?" if close else "see `smartico-stream rules fields` for the known fields"
        raise _Problem(f"unknown field {dotted}; {hint}", node.start)
    checked.fields.add(dotted)
    return FieldType(type_).value


def _closest_field(dotted: str, schema: Schema) -> str | None:
    """The known field whose name (after ``user.``/``event.``) is most like the unknown one's, if any
    is close; a field under the same root wins a tie."""
    root, _, name = dotted.partition(".")
    best, best_score = None, (0.6, False)
    for known in schema:
        known_root, _, known_name = known.partition(".")
        score = (difflib.SequenceMatcher(None, name, known_name).ratio(), known_root == root)
        if score >= best_score:
            best, best_score = known, score
    return best


def _require_bool(node: _Node, type_: str, where: str) -> None:
    if type_ not in (_BOOL, _ANY):
        raise _Problem(
            f"expected a true/false operand for {where}, got {_describe_type(type_)}; "
            "compare it with something, for example user.deposit_count > 0",
            node.start,
        )


def _infer_binary(node: _Binary, left: str, right: str) -> str:
    op = node.op
    if op in _COMPARISONS:
        _check_comparison(node, left, right)
        return _BOOL
    if op in ("in", "not in"):
        _check_membership(node, left, right)
        return _BOOL
    if op == "contains":
        if left not in (_STRING, _STRING_SET, _ANY):
            raise _Problem(
                f"'contains' expects a string or string_set on the left, got {_describe_type(left)}", node.left.start
            )
        if right not in (_STRING, _ANY):
            raise _Problem(f"'contains' expects a string on the right, got {_describe_type(right)}", node.right.start)
        return _BOOL
    result = _arithmetic_result(op, left, right)
    if result is None:
        forms = [f"{a} {op} {b}" for (form_op, a, b) in _ARITHMETIC if form_op == op]
        expected = " or ".join([", ".join(forms[:-1]), forms[-1]] if len(forms) > 1 else forms)
        raise _Problem(
            f"cannot {_VERBS[op]} {_describe_type(left)} and {_describe_type(right)} with '{op}'; expected {expected}",
            node.op_pos,
        )
    return result


def _arithmetic_result(op: str, left: str, right: str) -> str | None:
    """The result type of ``left op right``; an any operand may be any type that fits, and when
    that leaves more than one result the result is any too (checked at run time)."""
    lefts = _ARITHMETIC_TYPES if left == _ANY else (left,)
    rights = _ARITHMETIC_TYPES if right == _ANY else (right,)
    results = {_ARITHMETIC[(op, a, b)] for a in lefts for b in rights if (op, a, b) in _ARITHMETIC}
    if not results:
        return None
    return results.pop() if len(results) == 1 else _ANY


def _check_comparison(node: _Binary, left: str, right: str) -> None:
    allowed = _EQUATABLE if node.op in ("==", "!=") else _ORDERABLE
    for side, type_ in ((node.left, left), (node.right, right)):
        if type_ != _ANY and type_ not in allowed:
            hint = {
                _NUMBER_MAP: '; index it, for example user.deposit_total["EUR"]',
                _ANY_MAP: '; index it, for example event.extra["key"]',
                _STRING_SET: "; use 'contains' or 'in'",
                _BOOL: "; only == and != apply to true/false values",
            }.get(type_, "; a list can only follow 'in' or 'not in'" if _element_type(type_) else "")
            raise _Problem(f"'{node.op}' cannot compare {_describe_type(type_)} values{hint}", side.start)
    if _ANY not in (left, right) and left != right:
        raise _Problem(
            f"cannot compare {left} with {right}; expected both sides of '{node.op}' to have the same type",
            node.op_pos,
        )


def _check_membership(node: _Binary, left: str, right: str) -> None:
    element = _element_type(right)
    if right == _STRING_SET:
        element = _STRING
    elif right == _ANY:
        element = _ANY
    elif element is None:
        raise _Problem(
            f"'{node.op}' expects a list such as [\"CA\", \"US\"] or a string_set field on the right, "
            f"got {_describe_type(right)}",
            node.right.start,
        )
    if left not in _EQUATABLE and left != _ANY:
        raise _Problem(f"'{node.op}' cannot look up {_describe_type(left)} values", node.left.start)
    if _ANY not in (left, element) and left != element:
        raise _Problem(
            f"cannot look up {left} in {_describe_type(right)}; expected the left side of '{node.op}' to be "
            f"a {element}",
            node.op_pos,
        )


def _infer_call(node: _Call, schema: Schema, checked: _Checked) -> str:
    spec = _FUNCTIONS.get(node.name)
    if spec is None:
        close = difflib.get_close_matches(node.name, _FUNCTION_NAMES, n=1)
        hint = f"did you mean {close[0]}()?" if close else f"expected one of {', '.join(sorted(_FUNCTION_NAMES))}"
        raise _Problem(f"unknown function {node.name}(); {hint}", node.start)
    arity, accepted, result = spec
    if len(node.args) != arity:
        plural = "" if arity == 1 else "s"
        raise _Problem(f"{node.name}() takes {arity} argument{plural}, got {len(node.args)}", node.start)
    if node.name == "has":
        if not isinstance(node.args[0], _Path | _Index):
            raise _Problem("has() expects a field, for example has(user.country)", node.args[0].start)
        _infer(node.args[0], schema, checked)
        return result
    for arg in node.args:
        type_ = _infer(arg, schema, checked)
        if type_ != _ANY and type_ not in accepted:
            expected = " or ".join(sorted(accepted))
            raise _Problem(f"{node.name}() expects a {expected}, got {_describe_type(type_)}", arg.start)
    return result


# Run-time helpers ------------------------------------------------------------------------------

_Eval = Callable[[Any, Any, Any], Any]  # (user, event, now) -> value; None means missing
_RUNTIME_ERRORS: Final = (TypeError, ValueError, ArithmeticError, AttributeError)
_COLLECTIONS: Final = (set, frozenset, list, tuple)
_MICROS: Final = {"days_since": 86_400_000_000, "hours_since": 3_600_000_000, "minutes_since": 60_000_000}


def _kind(value: Any) -> str:
    """The expression type of a run-time value (for values read from an any_map)."""
    kind = type(value)
    if kind is bool:
        return _BOOL
    if kind is Decimal or kind is int or kind is float:
        return _NUMBER
    if kind is str:
        return _STRING
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | Decimal | float):
        return _NUMBER
    if isinstance(value, str):
        return _STRING
    if isinstance(value, datetime):
        return _TIMESTAMP
    if isinstance(value, timedelta):
        return _DURATION
    if isinstance(value, _COLLECTIONS):
        return "list"
    if isinstance(value, Mapping):
        return "map"
    return "other"


def _normalise_any(value: Any) -> Any:
    """JSON floats become exact Decimals (as written); NaN and infinities become missing."""
    if type(value) is float:
        return Decimal(repr(value)) if math.isfinite(value) else None
    return value


def _contains_any(haystack: Any, needle: Any) -> bool:
    """``contains``/``in`` when a side is only known at run time: substring or same-kind membership."""
    if isinstance(haystack, str):
        return isinstance(needle, str) and needle in haystack
    if isinstance(haystack, _COLLECTIONS):
        kind = _kind(needle)
        return any(_kind(item) == kind and item == needle for item in haystack)
    return False


def _negate(value: Any) -> Any:
    """Exact negation: ``-Decimal`` would round to the context's 28 digits."""
    return value.copy_negate() if type(value) is Decimal else -value


def _divide(a: Any, b: Any) -> Any:
    if type(a) is int:
        a = Decimal(a)  # int / int would be a float
    return a / b


def _to_decimal(value: Any) -> Any:
    return Decimal(repr(value)) if type(value) is float else value


_ARITHMETIC_OPS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}
_COMPARE_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


# Compiling -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Code:
    """A compiled node: its evaluator, and what the compiler may exploit about it."""

    fn: _Eval
    const: bool = False  # the value is known at compile time (``value``)
    value: Any = None
    strict: bool = False  # fn always returns a real bool
    attr: tuple[int, str] | None = None  # a plain field read: (0 user | 1 event, attribute name)


def _constant(value: Any) -> _Code:
    return _Code(lambda u, e, n: value, const=True, value=value, strict=type(value) is bool)


def _compile(node: _Node, checked: _Checked) -> _Code:
    """Compile a type-checked node into closures, folding constant sub-expressions."""
    match node:
        case _Lit():
            return _constant(node.value)
        case _List():
            return _constant(frozenset(item.value for item in node.items))
        case _Path():
            return _compile_path(node)
        case _Index():
            return _compile_index(node, checked)
        case _Unary(op="not"):
            operand = _predicate(_compile(node.operand, checked))
            fn = operand.fn
            return _fold(_Code(lambda u, e, n: not fn(u, e, n), strict=True), operand)
        case _Unary():
            operand = _compile(node.operand, checked)
            guarded = _guard(operand, checked.types[id(node.operand)], _NUMBER, _DURATION)
            return _fold(_Code(_apply1(_negate, guarded.fn)), operand)
        case _Logic():
            return _compile_logic(node, checked)
        case _Binary():
            return _compile_binary(node, checked)
        case _Call():
            return _compile_call(node, checked)
    raise AssertionError(f"unknown node {node!r}")  # pragma: no cover


def _fold(code: _Code, *children: _Code) -> _Code:
    """Evaluate a node whose operands are all constants once, now, instead of on every call."""
    if children and all(child.const for child in children):
        value = code.fn(None, None, None)
        return _Code(lambda u, e, n: value, const=True, value=value, strict=code.strict)
    return code


def _compile_path(node: _Path) -> _Code:
    root = 0 if node.root == "user" else 1
    if len(node.attrs) == 1:
        name = node.attrs[0]
        if root == 0:
            return _Code(lambda u, e, n: getattr(u, name, None), attr=(0, name))
        return _Code(lambda u, e, n: getattr(e, name, None), attr=(1, name))
    attrs = node.attrs

    def read(u: Any, e: Any, n: Any) -> Any:
        value = u if root == 0 else e
        for name in attrs:
            value = getattr(value, name, None)
        return value

    return _Code(read)


def _compile_index(node: _Index, checked: _Checked) -> _Code:
    target = _compile(node.target, checked).fn
    key = node.key
    normalise = checked.types[id(node)] == _ANY

    def read(u: Any, e: Any, n: Any) -> Any:
        mapping = target(u, e, n)
        if type(mapping) is not dict and not isinstance(mapping, Mapping):
            return None
        value = mapping.get(key)
        return _normalise_any(value) if normalise else value

    return _Code(read)


def _guard(code: _Code, type_: str, *expected: str) -> _Code:
    """An any-typed operand where one of the ``expected`` types is needed: other values become missing."""
    if type_ != _ANY:
        return code
    fn = code.fn

    def guarded(u: Any, e: Any, n: Any) -> Any:
        value = fn(u, e, n)
        return value if _kind(value) in expected else None

    return _Code(guarded)


def _predicate(code: _Code) -> _Code:
    """A value in a true/false position: only a real ``True`` counts as true."""
    if code.strict:
        return code
    fn = code.fn
    return _fold(_Code(lambda u, e, n: fn(u, e, n) is True, strict=True), code)


def _apply1(function: Callable[[Any], Any], arg: _Eval) -> _Eval:
    def apply(u: Any, e: Any, n: Any) -> Any:
        value = arg(u, e, n)
        if value is None:
            return None
        try:
            return function(value)
        except _RUNTIME_ERRORS:
            return None

    return apply


def _compile_logic(node: _Logic, checked: _Checked) -> _Code:
    codes = [_predicate(_compile(operand, checked)) for operand in node.operands]
    fns = tuple(code.fn for code in codes)
    if node.op == "and":
        if len(fns) == 2:
            a, b = fns
            fn: _Eval = lambda u, e, n: a(u, e, n) and b(u, e, n)  # noqa: E731 - unrolled: no loop per call
        elif len(fns) == 3:
            a, b, c = fns
            fn = lambda u, e, n: a(u, e, n) and b(u, e, n) and c(u, e, n)  # noqa: E731 - unrolled: no loop per call
        else:

            def fn(u: Any, e: Any, n: Any) -> bool:
                for predicate in fns:  # noqa: SIM110 - a plain loop is faster than all() over a generator
                    if not predicate(u, e, n):
                        return False
                return True

    elif len(fns) == 2:
        a, b = fns
        fn = lambda u, e, n: a(u, e, n) or b(u, e, n)  # noqa: E731 - unrolled: no loop per call
    elif len(fns) == 3:
        a, b, c = fns
        fn = lambda u, e, n: a(u, e, n) or b(u, e, n) or c(u, e, n)  # noqa: E731 - unrolled: no loop per call
    else:

        def fn(u: Any, e: Any, n: Any) -> bool:
            for predicate in fns:  # noqa: SIM110 - a plain loop is faster than any() over a generator
                if predicate(u, e, n):
                    return True
            return False

    return _fold(_Code(fn, strict=True), *codes)


def _compile_binary(node: _Binary, checked: _Checked) -> _Code:
    left = _compile(node.left, checked)
    right = _compile(node.right, checked)
    left_type, right_type = checked.types[id(node.left)], checked.types[id(node.right)]
    if node.op in _COMPARISONS:
        code = _compile_comparison(node.op, left, right, left_type, right_type)
    elif node.op in ("in", "not in"):
        code = _compile_membership(node.op == "in", left, right, left_type, right_type)
    elif node.op == "contains":
        code = _compile_contains(left, right, left_type, right_type)
    else:
        if node.op == "/" and right.const and right.value == 0:
            raise _Problem("division by zero", node.op_pos)
        checked_op = node.op if _ANY in (left_type, right_type) else None
        code = _Code(_arithmetic(_ARITHMETIC_OPS[node.op], left.fn, right.fn, checked_op))
    return _fold(code, left, right)


def _arithmetic(op: Callable[[Any, Any], Any], left: _Eval, right: _Eval, checked_op: str | None) -> _Eval:
    """``left op right``; missing when either is. With an any operand (``checked_op`` set), the
    run-time kinds must form one of the _ARITHMETIC forms, so that two strings never concatenate."""

    def apply(u: Any, e: Any, n: Any) -> Any:
        a = left(u, e, n)
        if a is None:
            return None
        b = right(u, e, n)
        if b is None:
            return None
        if checked_op is not None and (checked_op, _kind(a), _kind(b)) not in _ARITHMETIC:
            return None
        try:
            return op(a, b)
        except _RUNTIME_ERRORS:
            pass
        try:  # a float from a field typed number: retry exactly
            return op(_to_decimal(a), _to_decimal(b)) if float in (type(a), type(b)) else None
        except _RUNTIME_ERRORS:
            return None

    return apply


def _compile_comparison(op: str, left: _Code, right: _Code, left_type: str, right_type: str) -> _Code:
    compare = _COMPARE_OPS[op]
    if left_type == _ANY or right_type == _ANY:
        allowed = _EQUATABLE if op in ("==", "!=") else _ORDERABLE
        expected = right_type if left_type == _ANY else left_type
        return _Code(_checked_compare(compare, left.fn, right.fn, allowed, expected), strict=True)
    if left.attr is not None and right.const:
        return _Code(_field_test(left.attr, compare, right.value), strict=True)
    return _Code(_compare(compare, left.fn, right.fn), strict=True)


def _field_test(attr: tuple[int, str], compare: Callable[[Any, Any], bool], constant: Any) -> _Eval:
    """The hot case, ``user.x OP constant``: one closure, no nested calls."""
    root, name = attr
    if constant is None:
        return lambda u, e, n: False
    if root == 0:

        def test_user(u: Any, e: Any, n: Any) -> bool:
            value = getattr(u, name, None)
            if value is None:
                return False
            try:
                return compare(value, constant)
            except _RUNTIME_ERRORS:
                return False

        return test_user

    def test_event(u: Any, e: Any, n: Any) -> bool:
        value = getattr(e, name, None)
        if value is None:
            return False
        try:
            return compare(value, constant)
        except _RUNTIME_ERRORS:
            return False

    return test_event


def _compare(compare: Callable[[Any, Any], bool], left: _Eval, right: _Eval) -> _Eval:
    def test(u: Any, e: Any, n: Any) -> bool:
        a = left(u, e, n)
        if a is None:
            return False
        b = right(u, e, n)
        if b is None:
            return False
        try:
            return compare(a, b)
        except _RUNTIME_ERRORS:
            return False

    return test


def _checked_compare(
    compare: Callable[[Any, Any], bool], left: _Eval, right: _Eval, allowed: frozenset[str], expected: str
) -> _Eval:
    """A comparison with an any-typed side: values of different kinds are never equal or ordered."""

    def test(u: Any, e: Any, n: Any) -> bool:
        a = left(u, e, n)
        if a is None:
            return False
        b = right(u, e, n)
        if b is None:
            return False
        kind = _kind(a)
        if kind != _kind(b) or kind not in allowed or (expected != _ANY and kind != expected):
            return False
        try:
            return compare(a, b)
        except _RUNTIME_ERRORS:
            return False

    return test


def _compile_membership(positive: bool, left: _Code, right: _Code, left_type: str, right_type: str) -> _Code:
    element = _element_type(right_type)
    if element is not None and left_type != _ANY and left.attr is not None:
        return _Code(_field_member(left.attr, right.value, positive), strict=True)
    if left_type != _ANY and (element is not None or (right_type == _STRING_SET and left_type == _STRING)):
        test = _contained_in
    elif element is not None:  # an any value in a typed list: only values of the list's kind
        left, test = _guard(left, _ANY, element), _contained_in
    else:
        test = _contains_any
    return _Code(_contains(right.fn, left.fn, test, positive), strict=True)


def _field_member(attr: tuple[int, str], values: frozenset[Any], positive: bool) -> _Eval:
    """The hot case, ``user.x in [constants]``: one closure, a set lookup."""
    root, name = attr
    contains = values.__contains__

    def member(u: Any, e: Any, n: Any) -> bool:
        value = getattr(e if root else u, name, None)
        if value is None:
            return False
        try:
            found = contains(value)
        except _RUNTIME_ERRORS:  # an unhashable value
            return False
        return found if positive else not found

    return member


def _contained_in(haystack: Any, needle: Any) -> bool:
    return needle in haystack


def _compile_contains(left: _Code, right: _Code, left_type: str, right_type: str) -> _Code:
    test = _contains_any if _ANY in (left_type, right_type) else _contained_in
    return _Code(_contains(left.fn, right.fn, test), strict=True)


def _contains(haystack: _Eval, needle: _Eval, test: Callable[[Any, Any], bool], positive: bool = True) -> _Eval:
    """``contains``, ``in`` and ``not in``: false, like every comparison, when either side is missing."""

    def contains(u: Any, e: Any, n: Any) -> bool:
        h = haystack(u, e, n)
        if h is None:
            return False
        x = needle(u, e, n)
        if x is None:
            return False
        try:
            found = test(h, x) is True
        except _RUNTIME_ERRORS:
            return False
        return found if positive else not found

    return contains


def _compile_call(node: _Call, checked: _Checked) -> _Code:
    name = node.name
    if name == "now":
        return _Code(lambda u, e, n: n)
    arg = _compile(node.args[0], checked)
    arg_type = checked.types[id(node.args[0])]
    if name == "has":
        fn = arg.fn
        return _Code(lambda u, e, n: fn(u, e, n) is not None, strict=True)
    if name in _MICROS:
        return _Code(_since(_guard(arg, arg_type, _TIMESTAMP).fn, Decimal(_MICROS[name])))
    function: Callable[[Any], Any]
    if name in ("lower", "upper"):
        arg = _guard(arg, arg_type, _STRING)
        function = str.lower if name == "lower" else str.upper
    elif name == "len":
        function = _length
    else:  # abs
        arg = _guard(arg, arg_type, _NUMBER)
        function = abs
    return _fold(_Code(_apply1(function, arg.fn)), arg)


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, str | set | frozenset | list | tuple) else None


def _since(arg: _Eval, unit: Decimal) -> _Eval:
    """Time from a timestamp to ``now`` in a unit, as a (fractional) Decimal."""

    def since(u: Any, e: Any, n: Any) -> Any:
        moment = arg(u, e, n)
        if moment is None:
            return None
        try:
            delta = n - moment
        except _RUNTIME_ERRORS:
            return None
        if type(delta) is not timedelta:
            return None
        return Decimal((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) / unit

    return since


# Public API ------------------------------------------------------------------------------------


def _always(user: object, event: object | None, now: datetime) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition. Call it with the user state, the event (or None) and the event time.

    Calling never raises: missing values and values of unexpected types make comparisons false.
    ``evaluate`` is the underlying closure, for callers that want to skip one call layer.
    """

    text: str
    fields: frozenset[str]
    evaluate: Callable[[Any, Any, Any], bool] = field(repr=False, compare=False)

    def __call__(self, user: object, event: object | None, now: datetime) -> bool:
        return self.evaluate(user, event, now)


ALWAYS: Final = Condition(text="", fields=frozenset(), evaluate=_always)
"""The condition of an empty or absent expression: always true."""

_WHITESPACE: Final = str.maketrans({"\t": " ", "\n": " ", "\r": " ", "\v": " ", "\f": " "})


def compile_condition(text: str, schema: Schema) -> Condition:
    """Parse, type-check and compile ``text`` against ``schema`` (once, at rule load).

    An empty or blank text compiles to :data:`ALWAYS`. Raises :class:`ConditionError` — and nothing
    else — for text that is not a valid condition.
    """
    if not text.strip():
        return ALWAYS
    try:
        tree = _Parser(_tokenize(text)).parse()
        checked = _Checked()
        type_ = _infer(tree, schema, checked)
        if type_ not in (_BOOL, _ANY):
            raise _Problem(
                f"a condition must be true or false, got {_describe_type(type_)}; "
                "compare it with something, for example user.deposit_count > 0",
                tree.start,
            )
        code = _predicate(_compile(tree, checked))
    except _Problem as problem:
        raise ConditionError(problem.message, text.translate(_WHITESPACE), problem.pos + 1) from None
    return Condition(text=text, fields=frozenset(checked.fields), evaluate=code.fn)


# Schemas from models ---------------------------------------------------------------------------

_NUMBER_CLASSES: Final = (Decimal, int, float)
_SKIPPED_EVENT_FIELDS: Final = frozenset({"source", "aggregates"})


def _field_type(annotation: Any) -> FieldType | None:
    """The FieldType of a resolved annotation, or None when conditions cannot read it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _field_type(args[0])
    if origin is typing.Union or origin is types.UnionType:
        found = {_field_type(arg) for arg in args if arg is not type(None)}
        return found.pop() if len(found) == 1 else None
    if origin is typing.Literal:
        kinds = {_field_type(type(arg)) for arg in args}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (dict, Mapping):
        numbers = len(args) == 2 and _field_type(args[1]) == FieldType.NUMBER
        return FieldType.NUMBER_MAP if numbers else FieldType.ANY_MAP
    if origin in (set, frozenset, list, tuple):
        strings = bool(args) and all(_field_type(arg) == FieldType.STRING for arg in args if arg is not ...)
        return FieldType.STRING_SET if strings else None
    if annotation in (dict, Mapping):
        return FieldType.ANY_MAP
    if not isinstance(annotation, type):
        return None
    if issubclass(annotation, bool):
        return FieldType.BOOL
    if issubclass(annotation, str):  # str, StrEnum
        return FieldType.STRING
    if issubclass(annotation, _NUMBER_CLASSES):
        return FieldType.NUMBER
    if issubclass(annotation, datetime):
        return FieldType.TIMESTAMP
    return None


def model_schema(
    model: type[pydantic.BaseModel], root: str, skip: frozenset[str] = frozenset()
) -> dict[str, FieldType]:
    """``"<root>.<field>"`` -> FieldType for each field of a pydantic model, from its annotations.

    Raises TypeError for a field whose type conditions cannot read (add it to ``skip`` if intended).
    """
    schema: dict[str, FieldType] = {}
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        type_ = _field_type(info.annotation)
        if type_ is None:
            raise TypeError(
                f"{model.__name__}.{name} has type {info.annotation!r}, which conditions cannot read; "
                "expected a number, string, bool, timestamp, set of strings or map"
            )
        schema[f"{root}.{name}"] = type_
    return schema


def event_schema(model: type[pydantic.BaseModel]) -> dict[str, FieldType]:
    """``"event.<field>"`` -> FieldType for each field of a canonical event model.

    Decimal/int/float -> NUMBER; str, StrEnum, Literal strings and Identifier -> STRING; bool -> BOOL;
    datetime -> TIMESTAMP; dict (``extra``) -> ANY_MAP; ``Optional[X]`` -> X. ``source`` and
    ``aggregates`` are skipped.
    """
    return model_schema(model, "event", skip=_SKIPPED_EVENT_FIELDS)
