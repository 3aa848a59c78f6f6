"""EPICS access security: an ACF file's UAG, HAG, ASG and RULE, with EPICS base's meaning.

Syntax (EPICS Application Developer's Guide, "Access Security")::

    UAG(ops) {op, alice}
    HAG(control) {ctl01, localhost}
    ASG(DEFAULT) {
        RULE(1, READ)
        RULE(1, WRITE, TRAPWRITE) { UAG(ops) HAG(control) }
    }

Meaning, as asLib computes it:
- every PV belongs to an access security group (ASG); a group the file does not define is
  DEFAULT; a file without DEFAULT gets an empty DEFAULT (no access at all);
- a rule of level N applies to PVs of security level ASL <= N (ndflow's PVs are ASL0, as a
  record's VAL field, unless declared otherwise);
- a rule applies to a client when every clause it has matches: its user is in one of the
  rule's UAGs, its host in one of its HAGs (host names compare case-insensitively; with
  `client_ip`, as EPICS' asCheckClientIP, HAG names are resolved to addresses and compared with
  the client's address); INP/CALC clauses are not supported and make the rule never apply (a
  rule that cannot be evaluated grants nothing);
- the client gets the most any applying rule grants: NONE < READ < WRITE (WRITE includes READ).

The policy is a pure function of (group, level, user, host); transports ask it. Reloading
builds a new policy and swaps it in one assignment, so a check sees the old or the new one.
"""

from __future__ import annotations

import enum
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path


class Access(enum.IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2


class ACFError(ValueError):
    """A file that does not parse: the message names the file, the line and what was expected."""


@dataclass(frozen=True)
class Rule:
    level: int
    access: Access
    trapwrite: bool = False
    uags: tuple[str, ...] = ()
    hags: tuple[str, ...] = ()
    unsupported: str = ""  # an INP/CALC clause: the rule never applies


@dataclass
class Policy:
    uags: dict[str, frozenset[str]] = field(default_factory=dict)
    hags: dict[str, frozenset[str]] = field(default_factory=dict)
    groups: dict[str, list[Rule]] = field(default_factory=dict)
    client_ip: bool = False  # compare addresses (HAG names resolved), not reported host names
    source: str = "<no file>"
    _addresses: dict[str, frozenset[str]] = field(default_factory=dict)

    def access(self, group: str, user: str, host: str, level: int = 0,
               address: bool = False) -> Access:
        """What `user` on `host` may do with a PV of `group` and security level `level`.
        `host` is the name the client reported, or (`address`, or with client_ip) its address,
        matched against the HAG names resolved."""
        rules = self.groups.get(group)
        if rules is None:
            rules = self.groups.get("DEFAULT", [])
        best = Access.NONE
        for rule in rules:
            if rule.access <= best or rule.level < level or rule.unsupported:
                continue
            if rule.uags and not any(user in self.uags.get(u, ()) for u in rule.uags):
                continue
            if rule.hags and not any(self._host_in(h, host, address) for h in rule.hags):
                continue
            best = rule.access
        return best

    def _host_in(self, hag: str, host: str, address: bool = False) -> bool:
        if self.client_ip or address:
            if hag not in self._addresses:
                self._addresses[hag] = frozenset(a for name in self.hags.get(hag, ())
                                                 for a in _addresses_of(name))
            return host in self._addresses[hag]
        return host.lower() in self.hags.get(hag, ())

    def trapwrite(self, group: str, user: str, host: str, level: int = 0) -> bool:
        """Whether the rule granting WRITE asks for writes to be logged (TRAPWRITE)."""
        rules = self.groups.get(group, self.groups.get("DEFAULT", []))
        return any(r.trapwrite and r.access is Access.WRITE and r.level >= level
                   and not r.unsupported
                   and (not r.uags or any(user in self.uags.get(u, ()) for u in r.uags))
                   and (not r.hags or any(self._host_in(h, host) for h in r.hags))
                   for r in rules)


#: the policy of an IOC with no access security file: everyone may read and write
OPEN = Policy(groups={"DEFAULT": [Rule(1, Access.WRITE)]}, source="<none: open>")


def _addresses_of(name: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return set()


# --- parsing ---------------------------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z0-9_\-+:.\[\]<>;/$]+)|(.))',
                    re.S)


def _tokens(text: str) -> list[tuple[str, int]]:
    """(token, line) of every word, quoted string and bracket; comments dropped."""
    out: list[tuple[str, int]] = []
    for m in _TOKEN.finditer(text):
        comment, quoted, word, other = m.groups()
        token = quoted[1:-1] if quoted else word or other
        if comment or token is None or token.isspace():
            continue
        out.append((token, text.count("\n", 0, m.start()) + 1 + m.group(0).count("\n", 0, len(m.group(0)) - len(m.group(0).lstrip()))))
    return out


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = _tokens(text)
        self.i = 0

    def error(self, message: str) -> ACFError:
        # the line of the token read last: what the error is about
        line = self.tokens[min(max(self.i - 1, 0), len(self.tokens) - 1)][1] if self.tokens else 1
        return ACFError(f"{self.source} line {line}: {message}")

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise self.error(f"unexpected end of file (expected {expected or 'more'})")
        token = self.tokens[self.i][0]
        if expected is not None and token != expected:
            raise self.error(f"expected {expected!r}, found {token!r}")
        self.i += 1
        return token

    def word(self, what: str) -> str:
        """The next token, whatever it is (`what` says what was expected, for errors)."""
        if self.i >= len(self.tokens):
            raise self.error(f"unexpected end of file (expected {what})")
        self.i += 1
        return self.tokens[self.i - 1][0]

    def names(self) -> list[str]:
        """`{a, b, c}` or `(a, b)` contents up to the closing bracket."""
        opening = self.word("'(' or '{'")
        if opening not in ("{", "("):
            raise self.error(f"expected '(' or '{{', found {opening!r}")
        closing = {"{": "}", "(": ")"}[opening]
        names: list[str] = []
        while self.peek() != closing:
            token = self.word(repr(closing))
            if token != ",":
                names.append(token)
        self.take(closing)
        return names

    def parse(self, client_ip: bool) -> Policy:
        policy = Policy(client_ip=client_ip, source=self.source)
        while self.peek() is not None:
            keyword = self.word("UAG, HAG or ASG")
            if keyword in ("UAG", "HAG"):
                self.take("(")
                name = self.word("a group name")
                self.take(")")
                members = self.names() if self.peek() == "{" else []
                if keyword == "UAG":
                    policy.uags[name] = frozenset(members)
                else:
                    policy.hags[name] = frozenset(m.lower() for m in members)
            elif keyword == "ASG":
                self.take("(")
                name = self.word("a group name")
                self.take(")")
                policy.groups[name] = self.rules(policy) if self.peek() == "{" else []
            else:
                raise self.error(f"expected UAG, HAG or ASG, found {keyword!r}")
        policy.groups.setdefault("DEFAULT", [])
        return policy

    def rules(self, policy: Policy) -> list[Rule]:
        self.take("{")
        rules: list[Rule] = []
        while self.peek() != "}":
            keyword = self.word("RULE or '}'")
            if re.fullmatch(r"INP[A-L]", keyword):
                self.names()  # an input link for CALC: not supported, rules using CALC fail
                continue
            if keyword != "RULE":
                raise self.error(f"expected RULE, found {keyword!r}")
            args = self.names()
            if len(args) not in (2, 3) or not args[0].isdigit() or \
                    args[1] not in ("NONE", "READ", "WRITE", "RPC"):
                raise self.error("RULE takes (level, NONE|READ|WRITE[, TRAPWRITE|NOTRAPWRITE])")
            trap = len(args) == 3 and args[2] == "TRAPWRITE"
            if len(args) == 3 and args[2] not in ("TRAPWRITE", "NOTRAPWRITE"):
                raise self.error(f"expected TRAPWRITE or NOTRAPWRITE, found {args[2]!r}")
            access = Access.WRITE if args[1] == "RPC" else Access[args[1]]
            uags: list[str] = []
            hags: list[str] = []
            unsupported = ""
            if self.peek() == "{":
                self.take("{")
                while self.peek() != "}":
                    clause = self.word("UAG, HAG, CALC or '}'")
                    if clause in ("UAG", "HAG"):
                        names = self.names()
                        known = policy.uags if clause == "UAG" else policy.hags
                        for name in names:
                            if name not in known:
                                raise self.error(f"{clause}({name}) is not defined above")
                        (uags if clause == "UAG" else hags).extend(names)
                    elif clause == "CALC":
                        unsupported = f"CALC({', '.join(self.names())})"
                    else:
                        raise self.error(f"expected UAG, HAG or CALC, found {clause!r}")
                self.take("}")
            rules.append(Rule(int(args[0]), access, trap, tuple(uags), tuple(hags), unsupported))
        self.take("}")
        return rules


def parse(text: str, source: str = "<acf>", client_ip: bool = False) -> Policy:
    return _Parser(text, source).parse(client_ip)


def load(path: Path, client_ip: bool = False) -> Policy:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ACFError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ACFError(f"{path}: not a text file") from None
    return parse(text, str(path), client_ip)



class AccessSecurity:
    """The IOC's access rules, as every transport asks them, and their reload (a PV)."""

    def __init__(self, path: Path | None = None, client_ip: bool = False) -> None:
        self.path = path
        self.client_ip = client_ip
        self.policy = load(path, client_ip) if path is not None else OPEN
        #: called after a reload, so transports can tell connected clients their new rights
        self.listeners: list = []

    def access(self, group: str, user: str, host: str, level: int = 0,
               address: bool = False) -> Access:
        return self.policy.access(group, user, host, level, address)

    def reload(self) -> str:
        """Read the file again; a file that no longer parses leaves the rules in force."""
        if self.path is None:
            return "no access security file: every client may read and write"
        self.policy = load(self.path, self.client_ip)  # ACFError: the caller shows it
        for listener in list(self.listeners):
            listener()
        return f"{self.path.name}: {len(self.policy.groups)} groups loaded"
