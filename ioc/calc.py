"""EPICS calc expressions (the CALC field of a calc record), compiled to a safe evaluator.

Operators write these expressions into PVs (CircularBuff's TriggerCalc, Veto's VetoCalc), so the
text is never handed to Python's eval(), exec() or compile(): a small tokeniser and a
recursive-descent parser build a tree of closures over a fixed table of operators and
functions, with the precedences and semantics of EPICS base's postfix.c / calcPerform.c
(C casts to epicsInt32 for bit operators, NaN from domain errors, `SQR` as a square root,
`ATAN2(x, y)`). Variables are the letters A..L, read from the mapping given to the evaluator
(absent ones are 0). Not supported, and refused with the position: `:=` assignments, several
expressions separated by `;`, VAL and RNDM, string functions.

Pure: standard library and numpy only, no knowledge of plugins or transports.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["CalcError", "compile_calc", "attribute_number", "VARIABLES"]

Env = Mapping[str, float]
Node = Callable[[Env], float]

VARIABLES = "ABCDEFGHIJKL"
MAX_DEPTH = 40  # EPICS's translation stack holds 80 elements; deeper nesting is refused
#: operators in one expression: evaluation recurses once per operator in a chain, so this bounds
#: the evaluator's stack (a 256-character calc holds at most 128; EPICS's own postfix buffer is
#: a few hundred bytes)
MAX_OPERATORS = 200


class CalcError(ValueError):
    """An expression that cannot be parsed; `position` is the 1-based character."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(f"{reason} at character {position}")
        self.reason = reason
        self.position = position


@dataclass(frozen=True)
class Token:
    kind: str  # "num", "name", "op", "end"
    text: str
    pos: int  # 0-based
    value: float = 0.0


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>>>>|\*\*|&&|\|\||==|!=|<=|>=|<<|>>|:=|[-+*/%^<>=#!~&|?:(),;])
""", re.VERBOSE)


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise CalcError(f"unexpected {text[pos]!r}", pos + 1)
        kind = match.lastgroup
        if kind == "num":
            literal = match.group()
            value = float(int(literal, 16)) if literal[:2] in ("0x", "0X") else float(literal)
            tokens.append(Token("num", literal, pos, value))
        elif kind == "name":
            tokens.append(Token("name", match.group().upper(), pos))
        elif kind == "op":
            tokens.append(Token("op", match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _int32(x: float) -> int:
    """A double as the C code's (epicsInt32) cast sees it (non-finite values give 0)."""
    if not math.isfinite(x):
        return 0
    return ((int(x) + 2**31) % 2**32) - 2**31


def _truth(x: float) -> bool:
    return x != 0.0  # C: NaN is true


def _c_mod(a: float, b: float) -> float:
    ia, ib = _int32(a), _int32(b)
    if ib == 0:
        return math.nan
    return float(int(math.fmod(ia, ib)))


def _nint(x: float) -> float:
    if not math.isfinite(x):
        return x
    return float(math.floor(x + 0.5) if x >= 0 else math.ceil(x - 0.5))


def _nan_or(values: tuple[float, ...], pick: Callable[..., float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else pick(values)


_F = np.float64


def _quiet(fn: Callable[..., Any]) -> Callable[..., float]:
    """numpy's C semantics (NaN, infinities from domain errors) without its warnings: only
    around the operations that can warn, so a plain comparison costs no np.errstate."""
    def call(*args: float) -> float:
        with np.errstate(all="ignore"):
            return float(fn(*(_F(a) for a in args)))
    return call


_SQRT, _EXP, _LN, _LOG10 = _quiet(np.sqrt), _quiet(np.exp), _quiet(np.log), _quiet(np.log10)
_SIN, _COS, _TAN = _quiet(np.sin), _quiet(np.cos), _quiet(np.tan)
_ASIN, _ACOS, _ATAN = _quiet(np.arcsin), _quiet(np.arccos), _quiet(np.arctan)
_SINH, _COSH, _TANH = _quiet(np.sinh), _quiet(np.cosh), _quiet(np.tanh)
_CEIL, _FLOOR = _quiet(np.ceil), _quiet(np.floor)
_ATAN2, _FMOD, _POWER, _DIVIDE = (_quiet(np.arctan2), _quiet(np.fmod), _quiet(np.power),
                                  _quiet(np.divide))


def _divide(a: float, b: float) -> float:
    """a / b with IEEE results for a zero divisor (Python raises), as C gives them."""
    if b == 0.0:
        return _DIVIDE(a, b)
    return a / b


# name -> (argument count or None for one-or-more, function of the argument tuple)
FUNCTIONS: dict[str, tuple[int | None, Callable[[tuple[float, ...]], float]]] = {
    "ABS": (1, lambda a: abs(a[0])),
    "SQRT": (1, lambda a: _SQRT(a[0])),
    "SQR": (1, lambda a: _SQRT(a[0])),  # EPICS: SQR is also the square root
    "EXP": (1, lambda a: _EXP(a[0])),
    "LN": (1, lambda a: _LN(a[0])),
    "LOGE": (1, lambda a: _LN(a[0])),
    "LOG": (1, lambda a: _LOG10(a[0])),
    "SIN": (1, lambda a: _SIN(a[0])),
    "COS": (1, lambda a: _COS(a[0])),
    "TAN": (1, lambda a: _TAN(a[0])),
    "ASIN": (1, lambda a: _ASIN(a[0])),
    "ACOS": (1, lambda a: _ACOS(a[0])),
    "ATAN": (1, lambda a: _ATAN(a[0])),
    "SINH": (1, lambda a: _SINH(a[0])),
    "COSH": (1, lambda a: _COSH(a[0])),
    "TANH": (1, lambda a: _TANH(a[0])),
    "CEIL": (1, lambda a: _CEIL(a[0])),
    "FLOOR": (1, lambda a: _FLOOR(a[0])),
    "NINT": (1, lambda a: _nint(a[0])),
    "ISINF": (1, lambda a: float(math.isinf(a[0]))),
    "NOT": (1, lambda a: float(~_int32(a[0]))),  # bitwise, as EPICS's NOT
    "ATAN2": (2, lambda a: _ATAN2(a[1], a[0])),  # EPICS: ATAN2(x, y)
    "FMOD": (2, lambda a: _FMOD(a[0], a[1])),
    "MAX": (None, lambda a: _nan_or(a, max)),
    "MIN": (None, lambda a: _nan_or(a, min)),
    "FINITE": (None, lambda a: float(all(math.isfinite(v) for v in a))),
    "ISNAN": (None, lambda a: float(any(math.isnan(v) for v in a))),
}
CONSTANTS = {"PI": math.pi, "D2R": math.pi / 180, "R2D": 180 / math.pi, "INF": math.inf,
             "NAN": math.nan}


def _binary(op: str) -> Callable[[float, float], float]:
    table: dict[str, Callable[[float, float], float]] = {
        # Python floats: + - * give IEEE infinities and NaN, as C, and never raise
        "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
        "/": _divide, "^": _POWER, "**": _POWER, "%": _c_mod,
        "<": lambda a, b: float(a < b), "<=": lambda a, b: float(a <= b),
        ">": lambda a, b: float(a > b), ">=": lambda a, b: float(a >= b),
        "=": lambda a, b: float(a == b), "==": lambda a, b: float(a == b),
        "#": lambda a, b: float(a != b), "!=": lambda a, b: float(a != b),
        "&&": lambda a, b: float(_truth(a) and _truth(b)),
        "||": lambda a, b: float(_truth(a) or _truth(b)),
        "&": lambda a, b: float(_int32(a) & _int32(b)),
        "AND": lambda a, b: float(_int32(a) & _int32(b)),
        "|": lambda a, b: float(_int32(a) | _int32(b)),
        "OR": lambda a, b: float(_int32(a) | _int32(b)),
        "XOR": lambda a, b: float(_int32(a) ^ _int32(b)),
        "<<": lambda a, b: float(_int32(_int32(a) << (_int32(b) & 31))),
        ">>": lambda a, b: float(_int32(a) >> (_int32(b) & 31)),
        ">>>": lambda a, b: float((_int32(a) & 0xFFFFFFFF) >> (_int32(b) & 31)),
    }
    return table[op]


# Binary operator levels, loosest first, as postfix.c's priorities (1: | || OR XOR; 2: & && AND
# shifts; 3: comparisons; 4: + -; 5: * / %; 6: ^ **). Equal priorities associate to the left.
LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"|", "||", "OR", "XOR"}),
    frozenset({"&", "&&", "AND", "<<", ">>", ">>>"}),
    frozenset({"<", "<=", ">", ">=", "=", "==", "#", "!="}),
    frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}),
    frozenset({"^", "**"}),
)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0
        self.operators = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, reason: str, token: Token | None = None) -> CalcError:
        token = token or self.tok
        return CalcError(reason, token.pos + 1)

    def expect(self, text: str) -> None:
        if self.tok.text != text:
            raise self.fail(f"expected {text!r}, found {self._describe(self.tok)}")
        self.take()

    @staticmethod
    def _describe(token: Token) -> str:
        return "end of expression" if token.kind == "end" else repr(token.text)

    def _is_binary(self, level: int) -> bool:
        token = self.tok
        return token.kind in ("op", "name") and token.text in LEVELS[level]

    def parse(self) -> Node:
        node = self.conditional()
        token = self.tok
        if token.kind != "end":
            if token.text in (":=", ";"):
                raise self.fail(f"{token.text!r} (assignment / several expressions) is not "
                                f"supported")
            raise self.fail(f"unexpected {self._describe(token)}")
        return node

    def conditional(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail("expression nested too deeply")
        test = self.binary(0)
        if self.tok.text == "?":
            self.take()
            yes = self.conditional()
            self.expect(":")
            no = self.conditional()
            node: Node = lambda env: yes(env) if _truth(test(env)) else no(env)  # noqa: E731
        else:
            node = test
        self.depth -= 1
        return node

    def binary(self, level: int) -> Node:
        if level == len(LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self._is_binary(level):
            self.operators += 1
            if self.operators > MAX_OPERATORS:
                raise self.fail(f"expression too long (more than {MAX_OPERATORS} operators)")
            op = _binary(self.take().text)
            right = self.binary(level + 1)
            left = (lambda f, l, r: lambda env: f(l(env), r(env)))(op, left, right)
        return left

    def unary(self) -> Node:
        token = self.tok
        if token.kind == "op" and token.text in ("-", "!", "~"):
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.fail("expression nested too deeply")
            operand = self.unary()
            self.depth -= 1
            if token.text == "-":
                return lambda env: -operand(env)
            if token.text == "!":
                return lambda env: float(not _truth(operand(env)))
            return lambda env: float(~_int32(operand(env)))
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "num":
            value = token.value
            return lambda env: value
        if token.kind == "name":
            name = token.text
            if len(name) == 1 and name in VARIABLES:
                return lambda env: float(env.get(name, 0.0))
            if name in CONSTANTS:
                value = CONSTANTS[name]
                return lambda env: value
            if name in FUNCTIONS:
                return self.call(name, token)
            shown = name if len(name) <= 20 else name[:17] + "..."
            raise self.fail(f"unknown name {shown!r}", token)
        if token.text == "(":
            node = self.conditional()
            self.expect(")")
            return node
        raise self.fail(f"unexpected {self._describe(token)}", token)

    def call(self, name: str, token: Token) -> Node:
        arity, fn = FUNCTIONS[name]
        if self.tok.text != "(":
            if arity != 1:
                raise self.fail(f"{name} needs its arguments in parentheses")
            operand = self.unary()  # EPICS allows `ABS A`
            return lambda env: fn((operand(env),))
        self.take()
        args = [self.conditional()]
        while self.tok.text == ",":
            self.take()
            args.append(self.conditional())
        self.expect(")")
        if arity is not None and len(args) != arity:
            raise CalcError(f"{name} takes {arity} argument{'s' if arity > 1 else ''}, "
                            f"got {len(args)}", token.pos + 1)
        return lambda env: fn(tuple(a(env) for a in args))


def compile_calc(text: str) -> Node:
    """An evaluator for an EPICS calc expression; raises CalcError with the position of the
    problem. The evaluator maps {"A": value, ...} to a float and never raises: domain errors give
    NaN or infinities as in C."""
    if not text.strip():
        raise CalcError("empty expression", 1)
    node = _Parser(text).parse()

    def evaluate(env: Env) -> float:
        return float(node(env))
    return evaluate


def attribute_number(attributes: Mapping[str, Any], name: str) -> float:
    """The value of the NDAttribute `name` as a double (ADCore's NDAttribute::getValue): NaN
    when `name` is empty, the attribute is absent or its value is not numeric."""
    attribute = attributes.get(name) if name else None
    if attribute is None:
        return math.nan
    value = attribute.value
    if isinstance(value, float):  # float, np.float64: the usual case (Stats' results), fast
        return float(value)
    value = attribute.number()
    return math.nan if value is None else value
