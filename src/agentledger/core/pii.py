"""PII and credentials in request text: find them, or replace each with `[REDACTED:<kind>]`. Pure, stdlib only.

A policy rule blocks or redacts the kinds it names before a request is forwarded; the trace records which
kinds were found and where (`Found`: kind, JSON path, count), never a value. Precision matters more than
recall: an agent's prompt is full of numbers, ids and hashes, and a false positive rewrites (or blocks) a
legitimate request. What each detector matches, and what it deliberately does not:

* `email`: ASCII `local@domain.tld` (local part `[A-Za-z0-9._%+-]`, at most 64 characters; a dotted domain
  ending in a 2-63 letter TLD). Not: quoted or non-ASCII local parts, `user@localhost`, `@mentions`, asset
  names such as `icon@2x.png` (a file extension is not a TLD).
* `phone`: `+` numbers (E.164 and its spaced, dashed, dotted or parenthesized forms) of 8-15 digits; North
  American `(555) 123-4567`, `555-123-4567`, `555.123.4567`, `555 123 4567`, `1-800-555-0199` (one separator
  throughout, area code 2-9); national numbers with a trunk `0` and space or dash groups, `020 7946 0958`,
  `06 12 34 56 78`, `03-1234-5678`, `(020) 7946 0958`: 10-12 digits. Not: bare digit runs, dates (`2024-01-15`,
  `15.01.2024`), times, IP addresses, version strings, card numbers, numbers after `#`, `/`, `=`.
* `payment_card`: 13-19 digits, bare or grouped by one kind of separator (space or dash), Luhn-valid and in a
  known network's IIN range at one of its lengths (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay,
  Maestro, Mir). The IIN check drops most Luhn-valid order numbers.
* `iban`: upper-case country code with its registered length, two check digits and the BBAN, compact or
  with single spaces, mod-97 == 1. Not: lower-case IBANs, unknown countries, a wrong length or check.
* `us_ssn`: `AAA-GG-SSSS` with dashes, area not 000, 666 or 9xx, group not 00, serial not 0000. Not: the
  undashed nine digits (indistinguishable from any other number).
* `secret`: keys with a provider prefix: OpenAI/Anthropic `sk-`, `sk-proj-`, `sk-ant-` (with a digit and a
  letter in the body), AWS access key ids `AKIA`/`ASIA`, GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and
  `github_pat_`, Slack `xoxa-`/`xoxb-`/`xoxp-`/`xoxr-`, Google `AIza`, Stripe `sk_`/`rk_` `live`/`test`,
  JWTs (`eyJ….eyJ….sig`) and `-----BEGIN … PRIVATE KEY-----` blocks (to their END line; when cut, to the
  first blank line; raw or JSON-escaped newlines). Not: UUIDs, hex hashes, base64 blobs or AWS secret keys
  without a prefix, certificates and public keys.

No value is glued to a word or a longer number (`x4111…`, `1.4111…`, `#0123 4567 8901`), and digit groups
separated by single spaces are read as one number: `4111 1111 1111 1111 2222` is not a card, nor its first
16 digits; `+44 20 7946 0958 4111 1111 1111 1111` is neither a phone nor a card (a comma between them and
both are found). Dashed and compact forms are whole by themselves: `555-123-4567 555-987-6543` is two.

Speed (benchmarks/pii_scan.py): Python's `re` skips ahead only to where a pattern's first literal or
character class occurs; a pattern opening with a lookbehind, or a choice of several, is tried at every
character (one combined pattern of all kinds cost ~200 µs per KB). So each family is found its own way,
each pass skipping what cannot hold it: emails from each `@`; keys only when `in` finds a key prefix, by one
pattern whose alternatives open with literals; private keys by `str.find`; IBANs by a pattern opening with a
capital; cards, SSNs and phone numbers (one pattern, a named group each) only where at least nine number
characters start a number. A text without a digit costs the number and IBAN passes nothing. Checks
(Luhn, IIN, mod-97, digit counts) run on candidates only; when a card candidate fails its check, the other
number kinds are tried at the same place. Matches never overlap: the leftmost wins, then the longest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from agentledger.core.bounds import MAX_JSON_DEPTH

EMAIL = "email"
PHONE = "phone"
PAYMENT_CARD = "payment_card"
IBAN = "iban"
US_SSN = "us_ssn"
SECRET = "secret"
KINDS = (SECRET, EMAIL, IBAN, PAYMENT_CARD, US_SSN, PHONE)  # also the order `Found` lists kinds in one field


class Finding(NamedTuple):
    """One value in a string: `text[start:end]` is of `kind`. (A tuple: made per value, it is 3x cheaper.)"""

    kind: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Found:
    """`count` values of `kind` in the body's string at `path` (`messages[2].content`). Never the value."""

    kind: str
    path: str
    count: int


def placeholder(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def check_kinds(kinds: Iterable[str]) -> frozenset[str]:
    """The kinds as a set, or ValueError naming the first unknown one (for a policy rule's validation)."""
    chosen = frozenset(kinds)
    for kind in sorted(chosen):
        if kind not in KINDS:
            raise ValueError(f"unknown PII kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return chosen


# --- the detectors
#
# Python's re cannot skip ahead to a place where one of several patterns could start unless the pattern begins
# with a literal or a character class: a pattern opening with a lookbehind, or a choice of them, is tried at
# every character (a combined pattern of all kinds measured ~200 µs per KB). So each family of kinds opens with
# a character class and checks the character before it with a lookbehind placed after that first character,
# and the number kinds are tried only where a long enough run of number characters begins.

# Keys: every alternative starts with a literal (so the search skips to it), then refuses a longer word before it.
_B = r"(?<![A-Za-z0-9_-]{c})"
_SECRET = rf"""
(?P<secret>
    s{_B.format(c="s")}k-[A-Za-z0-9_-]{{20,}}(?![A-Za-z0-9_-])
  | s{_B.format(c="s")}k_(?:live|test)_[A-Za-z0-9]{{10,247}}(?![A-Za-z0-9_-])
  | r{_B.format(c="r")}k_(?:live|test)_[A-Za-z0-9]{{10,247}}(?![A-Za-z0-9_-])
  | A{_B.format(c="A")}(?:KIA|SIA)[A-Z0-9]{{16}}(?![A-Za-z0-9_-])
  | A{_B.format(c="A")}Iza[A-Za-z0-9_-]{{35}}(?![A-Za-z0-9_-])
  | g{_B.format(c="g")}(?:h[pousr]_[A-Za-z0-9]{{36,255}}|ithub_pat_[A-Za-z0-9_]{{22,255}})(?![A-Za-z0-9_-])
  | x{_B.format(c="x")}ox[abpr]-[A-Za-z0-9-]{{10,250}}(?![A-Za-z0-9_-])
  | e{_B.format(c="e")}yJ[A-Za-z0-9_-]{{5,}}\.eyJ[A-Za-z0-9_-]{{5,}}\.[A-Za-z0-9_-]*(?![A-Za-z0-9_-])
)"""
# Every key above contains one of these. `in` is much faster than any regex search, and a single character's
# `in` (memchr) faster still, so the substrings are grouped under a character each of them holds.
_KEY_HINTS = (
    ("_", ("sk_", "rk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    ("-", ("sk-", "xox")),
    ("A", ("AKIA", "ASIA", "AIza")),
    ("J", ("eyJ",)),
)


def _may_hold_key(text: str) -> bool:
    return any(c in text and any(hint in text for hint in hints) for c, hints in _KEY_HINTS)


def _has_digit(text: str) -> bool:
    return any(d in text for d in "0123456789")  # ten memchr passes: 10x faster than re.search("[0-9]")


# A private key block: BEGIN to END, or when cut (or past 64 KiB), BEGIN and the lines after it up to a blank
# one. Lines may be JSON-escaped (a key inside tool-call arguments). Found by str.find, in one pass.
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----")
_PEM_LINES = re.compile(r"(?:(?:\r?\n|(?:\\r)?\\n)[A-Za-z0-9+/=:, -]+)*")
_PEM_MAX = 1 << 16
_IBAN = r"(?P<iban>[A-Z](?<![A-Za-z0-9][A-Z])[A-Z][0-9]{2}(?:[ ]?[A-Z0-9]){11,32})"
# Numbers are not glued to a word, and a value is the whole number: digits grouped by spaces are read as one
# number, so a space-grouped value must not sit next to another digit group ("4111 1111 1111 1111 2222" is not
# a card, nor its first 16 digits). Dashed and compact forms have no such doubt: "555-123-4567 555-987-6543"
# is two numbers. _S (before) and S_ (after) are that rule; _G and G_ the one against glue.
_G = r"(?<![\w.-])"
_S = r"(?<![0-9][ ])"
G_ = r"(?![\w+(]|[.-][0-9])"
S_ = r"(?![ ][0-9])"
_CARD = rf"""
(?P<payment_card>
    {_G}(?: [0-9]{{13,19}}
          | [0-9]{{1,6}}(?:-[0-9]{{1,7}}){{1,5}}
          | {_S}[0-9]{{1,6}}(?:[ ][0-9]{{1,7}}){{1,5}}{S_} ){G_}
)"""
_SSN = rf"(?P<us_ssn>{_G}(?!000|666|9)[0-9]{{3}}-(?!00)[0-9]{{2}}-(?!0000)[0-9]{{4}}{G_})"
_PHONE = rf"""
(?P<phone>
    (?<![\w+.\#/=@-])
    (?: \+[1-9][0-9]{{0,3}}(?:[ .-]?\([0-9]{{1,4}}\))?(?:[ .-]?[0-9]{{1,6}}){{0,6}}{S_}  # +44 (20) 7946 0958
      | (?:1[ .-]?)?\([2-9][0-9]{{2}}\)[ ]?[0-9]{{3}}[ .-][0-9]{{4}}{S_}               # (555) 123-4567
      | \(0[1-9][0-9]{{0,3}}\)[ ]?[0-9]{{3,4}}[ -]?[0-9]{{3,4}}{S_}                     # (020) 7946 0958
      | (?:1[.-])?[2-9][0-9]{{2}}(?P<_nanp>[.-])[0-9]{{3}}(?P=_nanp)[0-9]{{4}}          # 555-123-4567
      | {_S}(?:1[ ])?[2-9][0-9]{{2}}[ ][0-9]{{3}}[ ][0-9]{{4}}{S_}                       # 555 123 4567
      | 0[1-9][0-9]{{0,3}}(?:-[0-9]{{2,8}})(?:-[0-9]{{2,4}}){{0,3}}                       # 03-1234-5678
      | {_S}0[1-9][0-9]{{0,3}}(?:[ ][0-9]{{2,8}})(?:[ ][0-9]{{2,4}}){{0,3}}{S_} )        # 020 7946 0958
    {G_}
)"""
_NUMBERS = {PAYMENT_CARD: _CARD, US_SSN: _SSN, PHONE: _PHONE}  # tried in this order at one place
_FLAGS = re.VERBOSE | re.ASCII
_DIGIT = re.compile(r"[0-9]")
_SK_LETTER = re.compile(r"[A-Za-z]")
# Where a card, SSN or phone number may start: `+`, `(`, or a digit not glued to a word or a longer number,
# followed by at least 8 more number characters (each has 9 or more). One pass that skips to [0-9+(].
_NUMBER_START = re.compile(r"[0-9+(](?<![\w.-][0-9])(?=[0-9 ().+-]{8})", re.ASCII)

_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,63})(?![A-Za-z0-9-]|\.[A-Za-z0-9])",
    re.ASCII,
)
_NOT_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "pdf", "txt", "js", "css"})


@dataclass(frozen=True, slots=True)
class _Scanner:
    email: bool
    secret: re.Pattern[str] | None
    iban: re.Pattern[str] | None
    numbers: re.Pattern[str] | None  # the chosen number kinds, one named group each, in _NUMBERS order
    alone: tuple[tuple[str, re.Pattern[str]], ...]  # the same, one pattern each, for a retry after a failed check


@lru_cache(maxsize=64)
def _scanner(kinds: frozenset[str]) -> _Scanner:
    numbers = [k for k in _NUMBERS if k in kinds]
    return _Scanner(
        email=EMAIL in kinds,
        secret=re.compile(_SECRET, _FLAGS) if SECRET in kinds else None,
        iban=re.compile(_IBAN, _FLAGS) if IBAN in kinds else None,
        numbers=re.compile("|".join(_NUMBERS[k] for k in numbers), _FLAGS) if numbers else None,
        alone=tuple((k, re.compile(_NUMBERS[k], _FLAGS)) for k in numbers),
    )


def scan_text(text: str, kinds: Iterable[str]) -> list[Finding]:
    """The values of `kinds` in `text`, in order and non-overlapping. ValueError for an unknown kind."""
    return _scan(text, _scanner(check_kinds(kinds)))


def _scan(text: str, scanner: _Scanner) -> list[Finding]:
    families: list[list[Finding]] = []
    if scanner.email and "@" in text:
        families.append(_emails(text))
    if scanner.secret is not None:
        if _may_hold_key(text):
            families.append(_matches(text, scanner.secret))
        if "-----BEGIN" in text:
            families.append(_private_keys(text))
    if (scanner.iban is not None or scanner.numbers is not None) and _has_digit(text):
        if scanner.iban is not None:
            families.append(_matches(text, scanner.iban))
        if scanner.numbers is not None:
            families.append(_numbers(text, scanner.numbers, scanner.alone))
    families = [f for f in families if f]
    if len(families) > 1:
        return _disjoint([f for family in families for f in family])
    return families[0] if families else []


def redact_text(text: str, kinds: Iterable[str]) -> tuple[str, Counter[str]]:
    """`text` with each value of `kinds` replaced by `[REDACTED:<kind>]`, the rest byte-identical, and the
    count of each kind replaced."""
    findings = scan_text(text, kinds)
    return _replace(text, findings), Counter(f.kind for f in findings)


def _replace(text: str, findings: list[Finding]) -> str:
    if not findings:
        return text
    parts: list[str] = []
    at = 0
    for f in findings:
        parts += (text[at : f.start], placeholder(f.kind))
        at = f.end
    parts.append(text[at:])
    return "".join(parts)


def _emails(text: str) -> list[Finding]:
    found: list[Finding] = []
    done = 0  # the end of the last address: the next one's local part starts after it
    at = text.find("@")
    while at != -1:
        start = at
        while start > done and text[start - 1] in _EMAIL_LOCAL and at - start <= 64:
            start -= 1
        while start < at and text[start] == ".":  # a sentence's full stop before the address is not part of it
            start += 1
        name = text[start:at]
        domain = _EMAIL_DOMAIN.match(text, at + 1) if name else None
        if (
            domain is not None
            and len(name) <= 64  # the longest local part; a longer run of its characters is something else
            and not name.endswith(".")
            and ".." not in name
            and domain["tld"].lower() not in _NOT_TLDS
        ):
            found.append(Finding(EMAIL, start, domain.end()))
            done = domain.end()
            at = text.find("@", done)
        else:
            at = text.find("@", at + 1)
    return found


def _private_keys(text: str) -> list[Finding]:
    found: list[Finding] = []
    pos = 0
    end = -2  # the first END line at or after `pos`, -1 when there is none; found once, not per BEGIN
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        if end != -1 and end < begin.end():
            end = text.find("-----END", begin.end())
            while end != -1 and _PEM_END.match(text, end) is None:
                end = text.find("-----END", end + 1)
        if end != -1 and end - begin.end() <= _PEM_MAX:
            stop = _PEM_END.match(text, end)
            assert stop is not None
            pos = stop.end()
        else:
            pos = _PEM_LINES.match(text, begin.end()).end()  # type: ignore[union-attr]  # matches empty at worst
        found.append(Finding(SECRET, begin.start(), pos))
    return found


def _matches(text: str, pattern: re.Pattern[str]) -> list[Finding]:
    """Every checked match of a one-kind pattern, left to right."""
    found: list[Finding] = []
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        kind = m.lastgroup
        assert kind is not None
        end = _valid_end(kind, m)
        if end is None:
            pos = m.start() + 1
        else:
            found.append(Finding(kind, m.start(), end))
            pos = end
    return found


def _numbers(text: str, numbers: re.Pattern[str], alone: tuple[tuple[str, re.Pattern[str]], ...]) -> list[Finding]:
    found: list[Finding] = []
    done = 0  # the end of the last finding: nothing before it is looked at again
    for start in _NUMBER_START.finditer(text):
        at = start.start()
        if at < done or (m := numbers.match(text, at)) is None:
            continue
        kind = m.lastgroup
        assert kind is not None
        end = _valid_end(kind, m)
        if end is None:
            # The first kind to match here failed its check; another may still match at the same place.
            for other, pattern in alone:
                if other != kind and (again := pattern.match(text, at)) is not None:
                    end = _valid_end(other, again)
                    if end is not None:
                        kind = other
                        break
        if end is not None:
            found.append(Finding(kind, at, end))
            done = end
    return found


def _valid_end(kind: str, m: re.Match[str]) -> int | None:
    """Where a candidate of `kind` ends once checked (an IBAN may end before its match), or None."""
    value = m.group(kind)
    if kind == PAYMENT_CARD:
        ok = _card_ok(value)
    elif kind == PHONE:
        ok = _phone_ok(value)
    elif kind == IBAN:
        return _iban_end(value, m.start(kind))
    elif kind == SECRET and value.startswith("sk-"):
        ok = _DIGIT.search(value, 3) is not None and _SK_LETTER.search(value, 3) is not None
    else:
        ok = True
    return m.end(kind) if ok else None


def _disjoint(findings: list[Finding]) -> list[Finding]:
    findings.sort(key=lambda f: (f.start, -f.end))
    kept: list[Finding] = []
    for f in findings:
        if not kept or f.start >= kept[-1].end:
            kept.append(f)
    return kept


# --- checks on candidates


_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")  # 2d, less 9 past 9


def luhn_ok(digits: str) -> bool:
    return sum(map(int, digits[-1::-2] + digits[-2::-2].translate(_LUHN_DOUBLED))) % 10 == 0


# (lowest prefix, highest prefix, lengths): a prefix of n digits compares with the number's first n digits.
_IIN = (
    ("4", "4", (13, 16, 19)),  # Visa
    ("51", "55", (16,)),  # Mastercard
    ("2221", "2720", (16,)),  # Mastercard 2-series
    ("34", "34", (15,)),  # Amex
    ("37", "37", (15,)),
    ("6011", "6011", (16, 17, 18, 19)),  # Discover
    ("644", "649", (16, 17, 18, 19)),
    ("65", "65", (16, 17, 18, 19)),
    ("3528", "3589", (16, 17, 18, 19)),  # JCB
    ("300", "305", (14, 15, 16, 17, 18, 19)),  # Diners
    ("36", "36", (14, 15, 16, 17, 18, 19)),
    ("38", "39", (16, 17, 18, 19)),
    ("62", "62", (16, 17, 18, 19)),  # UnionPay
    ("2200", "2204", (16, 17, 18, 19)),  # Mir
    ("5018", "5018", (13, 14, 15, 16, 17, 18, 19)),  # Maestro
    ("5020", "5020", (13, 14, 15, 16, 17, 18, 19)),
    ("5038", "5038", (13, 14, 15, 16, 17, 18, 19)),
    ("5893", "5893", (13, 14, 15, 16, 17, 18, 19)),
    ("6304", "6304", (13, 14, 15, 16, 17, 18, 19)),
    ("6759", "6759", (13, 14, 15, 16, 17, 18, 19)),
    ("6761", "6763", (13, 14, 15, 16, 17, 18, 19)),
)


_IIN_BY_FIRST = {d: tuple(entry for entry in _IIN if entry[0][0] == d) for d in "0123456789"}


def _card_ok(value: str) -> bool:
    if " " in value and "-" in value:
        return False  # one kind of separator: "4111 1111-1111 1111" is two numbers, or none
    digits = value.replace(" ", "").replace("-", "")
    for lo, hi, lengths in _IIN_BY_FIRST[digits[0]]:
        if lo <= digits[: len(lo)] <= hi and len(digits) in lengths:
            return luhn_ok(digits)
    return False


_PHONE_PUNCTUATION = str.maketrans("", "", " .-()+")


def _phone_ok(value: str) -> bool:
    digits = len(value.translate(_PHONE_PUNCTUATION))
    return 8 <= digits <= 15 if value.startswith("+") else 10 <= digits <= 12


# The SWIFT IBAN registry's countries and lengths.
IBAN_LENGTHS = {
    **dict.fromkeys(("NO",), 15),
    **dict.fromkeys(("BE",), 16),
    **dict.fromkeys(("DK", "FI", "FK", "FO", "GL", "NL", "SD"), 18),
    **dict.fromkeys(("MK", "SI"), 19),
    **dict.fromkeys(("AT", "BA", "EE", "KZ", "LT", "LU", "MN", "XK"), 20),
    **dict.fromkeys(("CH", "HR", "LI", "LV"), 21),
    **dict.fromkeys(("BG", "BH", "CR", "DE", "GB", "GE", "IE", "ME", "RS", "VA"), 22),
    **dict.fromkeys(("AE", "GI", "IL", "IQ", "OM", "SO", "TL"), 23),
    **dict.fromkeys(("AD", "CZ", "ES", "MD", "PK", "RO", "SA", "SE", "SK", "TN", "VG"), 24),
    **dict.fromkeys(("LY", "PT", "ST"), 25),
    **dict.fromkeys(("IS", "TR"), 26),
    **dict.fromkeys(("BI", "DJ", "FR", "GR", "IT", "MC", "MR", "SM"), 27),
    **dict.fromkeys(("AL", "AZ", "BY", "CY", "DO", "GT", "HU", "LB", "NI", "PL", "SV"), 28),
    **dict.fromkeys(("BR", "EG", "PS", "QA", "UA"), 29),
    **dict.fromkeys(("JO", "KW", "MU", "YE"), 30),
    **dict.fromkeys(("MT", "SC"), 31),
    **dict.fromkeys(("LC",), 32),
    **dict.fromkeys(("RU",), 33),
}


_IBAN_DIGITS = str.maketrans({c: str(int(c, 36)) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"})
# An IBAN of n characters written with optional single spaces, by n: where a longer match really ends.
_IBAN_SPAN = {n: re.compile(rf"[A-Z0-9](?:[ ]?[A-Z0-9]){{{n - 1}}}") for n in set(IBAN_LENGTHS.values())}


def iban_ok(compact: str) -> bool:
    """`compact` (no spaces, upper case) has its country's length and mod-97 == 1 (ISO 13616)."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not (compact.isascii() and compact.isalnum()):
        return False
    return int((compact[4:] + compact[:4]).upper().translate(_IBAN_DIGITS)) % 97 == 1


def _iban_end(value: str, start: int) -> int | None:
    # The match may run on into the next upper-case words ("… 3000 EUR"): keep the country's length only.
    length = IBAN_LENGTHS.get(value[:2])
    span = _IBAN_SPAN[length].match(value) if length else None
    if span is None:
        return None
    end = span.end()
    if value[end : end + 1] not in ("", " ") or not iban_ok(span.group().replace(" ", "")):
        return None  # glued to more letters or digits, or a wrong check: not an IBAN
    return start + end


# --- request bodies


def scan_body(body: dict[str, Any], kinds: Iterable[str]) -> list[Found]:
    """Where `kinds` occur in a request body of any format (chat, Messages, Responses, embeddings)."""
    return _Walk(check_kinds(kinds), rewrite=False).body(body)[1]


def redact_body(body: dict[str, Any], kinds: Iterable[str]) -> tuple[dict[str, Any], list[Found]]:
    """A new body with every value of `kinds` in its text fields redacted, and where they were.

    `body` is not mutated; parts without a finding are shared with it (the same body when nothing was found).
    Only the fields that carry user or model text are read (see `_Walk`); model names, roles, ids, images
    and everything else pass through untouched. Each string is scanned once.
    """
    return _Walk(check_kinds(kinds), rewrite=True).body(body)


class _Walk:
    """The text fields of every format's request, walked once; rebuilt only along paths that changed.

    chat: `messages[].content` (a string, or parts of `type: text`), `messages[].tool_calls[].function.arguments`
    (and the legacy `function_call.arguments`). Messages: `system` (a string or text blocks), `messages[].content`
    (a string or blocks: `text`, `tool_result` content as a string or text blocks, `tool_use` input's strings at
    any depth). Responses: `instructions`, `input` (a string or items: `content` as a string or `input_text`/
    `output_text` parts, `function_call` arguments, `function_call_output` output). Embeddings: `input` (a string
    or strings; token arrays are skipped). The shapes do not collide, so one walk serves all four formats.
    """

    __slots__ = ("kinds", "scanner", "rewrite", "found")

    def __init__(self, kinds: frozenset[str], *, rewrite: bool) -> None:
        self.kinds = kinds
        self.scanner = _scanner(kinds)
        self.rewrite = rewrite
        self.found: list[Found] = []

    def body(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[Found]]:
        if not self.kinds:
            return body, []
        new = dict(body)
        for key in ("system", "instructions"):  # the prompt's start: listed first
            if key in body:
                new[key] = self.content(body[key], key)
        messages = body.get("messages")
        if isinstance(messages, list):
            new["messages"] = self.items(messages, "messages", self.message)
        given = body.get("input")
        if isinstance(given, str):
            new["input"] = self.text(given, "input")
        elif isinstance(given, list):
            new["input"] = self.items(given, "input", self.input_item)
        changed = any(new[k] is not body[k] for k in body)
        return (new if changed else body), self.found

    def text(self, value: Any, path: str) -> Any:
        if not isinstance(value, str) or not value:
            return value
        findings = _scan(value, self.scanner)
        if not findings:
            return value
        counts = Counter(f.kind for f in findings)
        self.found += (Found(k, path, counts[k]) for k in KINDS if counts[k])
        return _replace(value, findings) if self.rewrite else value

    def items(self, values: list[Any], path: str, each: Any) -> list[Any]:
        new = [each(v, f"{path}[{i}]") for i, v in enumerate(values)]
        return new if any(a is not b for a, b in zip(new, values, strict=True)) else values

    def fields(self, obj: dict[str, Any], path: str, **walks: Any) -> dict[str, Any]:
        """`obj` with each named field passed through its walk; `obj` itself when none changed."""
        new = None
        for key, walk in walks.items():
            if key in obj:
                value = walk(obj[key], f"{path}.{key}")
                if value is not obj[key]:
                    new = new if new is not None else dict(obj)
                    new[key] = value
        return obj if new is None else new

    def content(self, value: Any, path: str) -> Any:
        """A string, or a list of parts/blocks (chat parts, Messages blocks, Responses content parts)."""
        if isinstance(value, list):
            return self.items(value, path, self.part)
        return self.text(value, path)

    def part(self, part: Any, path: str) -> Any:
        if not isinstance(part, dict):
            return part
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            return self.fields(part, path, text=self.text)
        if kind == "tool_result":
            return self.fields(part, path, content=self.content)
        if kind == "tool_use":
            return self.fields(part, path, input=self.strings)
        return part

    def strings(self, value: Any, path: str, depth: int = 0) -> Any:
        """Every string inside a tool_use input, to MAX_JSON_DEPTH levels (keys are left alone)."""
        if isinstance(value, str):
            return self.text(value, path)
        if depth >= MAX_JSON_DEPTH:
            return value
        if isinstance(value, list):
            return self.items(value, path, lambda v, p: self.strings(v, p, depth + 1))
        if isinstance(value, dict):
            new = {k: self.strings(v, _key_path(path, k), depth + 1) for k, v in value.items()}
            return new if any(new[k] is not value[k] for k in value) else value
        return value

    def message(self, message: Any, path: str) -> Any:
        if not isinstance(message, dict):
            return message
        return self.fields(
            message,
            path,
            content=self.content,
            tool_calls=lambda calls, p: self.items(calls, p, self.tool_call) if isinstance(calls, list) else calls,
            function_call=lambda call, p: self.fields(call, p, arguments=self.text) if isinstance(call, dict) else call,
        )

    def tool_call(self, call: Any, path: str) -> Any:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            return call
        return self.fields(call, path, function=lambda fn, p: self.fields(fn, p, arguments=self.text))

    def input_item(self, item: Any, path: str) -> Any:
        if isinstance(item, str):
            return self.text(item, path)  # embeddings: one of several inputs
        if not isinstance(item, dict):
            return item  # embeddings token arrays
        kind = item.get("type")
        if kind == "function_call":
            return self.fields(item, path, arguments=self.text)
        if kind == "function_call_output":
            return self.fields(item, path, output=self.content)
        if kind in (None, "message"):
            return self.fields(item, path, content=self.content)
        return item


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _key_path(path: str, key: str) -> str:
    if _IDENT.match(key):
        return f"{path}.{key}"
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'{path}["{escaped}"]'
