"""Routing engine: which agencies must act on a question, and why.

Pure: the only I/O is loading the packaged catalog (``data/routing_catalog.json``) once.
How it works (see docs/routing.md):

1. *Normalisation*: lower case, diacritics removed (NFKD), apostrophes dropped, every other
   non-alphanumeric character is a separator (``ov-studentenkaart`` -> ``ov studentenkaart``).
2. *Compound splitting* against the catalog vocabulary: a word is split into the largest
   number of parts (each >= 3 letters) whose stems are catalog atoms, so
   ``kinderopvangtoeslagschuld`` -> ``kinderopvang toeslag schuld``. Catalog phrases go
   through the same function, so compound and separate spellings meet.
3. *Light stemming* (Dutch and English): one plural/verb suffix, undoubled final consonant,
   final ``d``/``t`` after a consonant, ``z``->``s``/``v``->``f``, collapsed double vowels.
4. *Matching*: greedy longest phrase match over the atom sequence; stopwords in the text may
   be skipped between phrase atoms. A name of an agency right after a negation
   ("niet de Belastingdienst") does not count.
5. *Scoring*: each distinct phrase adds its weight (category weight, or its own); repeats add
   a little. Names of agencies weigh most.
6. *Selection*: agencies whose score is a meaningful fraction of the top score (or above an
   absolute threshold) are chosen; lead = strongest. Three or more agencies, a maatwerkloket
   signal ("ik kom er niet meer uit") or ``vulnerable`` make maatwerkloket the lead.
   Nothing matched: maatwerkloket, unclassified.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loket_schemas.events import AgencyAssignment, AgencyRole
from loket_schemas.vocabulary import AgencyCode

__all__ = [
    "CatalogError",
    "RoutingCatalog",
    "RoutingDecision",
    "RoutingEngine",
    "classify",
    "default_engine",
    "load_catalog",
    "normalise",
    "stem",
    "tokenize",
]

MAATWERKLOKET = AgencyCode.MAATWERKLOKET
UNCLASSIFIED_REASON = "unclassified"


# --------------------------------------------------------------------------- catalog model


class CatalogTerm(BaseModel):
    """A catalog phrase with its own weight (overrides the category weight)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phrase: str = Field(min_length=1)
    weight: float = Field(gt=0.0, le=20.0)


Entry = str | CatalogTerm


class BilingualTerms(BaseModel):
    """Phrases of one category in Dutch and English."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nl: list[Entry] = Field(default_factory=list)
    en: list[Entry] = Field(default_factory=list)

    def entries(self) -> list[Entry]:
        return [*self.nl, *self.en]


class CategoryWeights(BaseModel):
    """Default weight per category."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    names: float = Field(gt=0.0)
    regelingen: float = Field(gt=0.0)
    topics: float = Field(gt=0.0)
    life_events: float = Field(gt=0.0)


class CatalogAgency(BaseModel):
    """What one agency is about: its names, regelingen, topics and life events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: AgencyCode
    description: str = Field(min_length=1)
    names: list[Entry] = Field(min_length=1)
    regelingen: BilingualTerms
    topics: BilingualTerms
    life_events: BilingualTerms


class LanguageMarkers(BaseModel):
    """Frequent function words that tell a Dutch text from an English one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nl: list[str] = Field(default_factory=list)
    en: list[str] = Field(default_factory=list)


class ContextRules(BaseModel):
    """Words that change how much a match says about *competence* (see docs/routing.md).

    - ``say_verbs``: an agency name that is the speaker of such a verb ("het UWV zegt"), or that
      stands in the reported clause after it, up to the end of the sentence ("een vriend zegt
      dat ik bij de gemeente moet zijn"), is a mention, not a request: it keeps only a small
      weight. Subject-matter phrases in that clause keep their weight.
    - ``refer_verbs``: the same for the speaker only ("de Belastingdienst stuurt mij door");
      the agency referred to keeps its weight. An entry of several words is a separable verb:
      the other words must follow within a few words ("stuurt ... door").
    - ``reporting_prefixes``: a name right after "volgens" / "according to" is a mention.
    - ``negation_markers``: a negation followed by such a word ("het gaat niet om X", "not
      about X") negates any phrase, not only agency names.
    - ``language``: in a text that is clearly English (or Dutch), phrases listed only for the
      other language weigh less (Dutch "file" is a traffic jam, English "file" a tax return).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    say_verbs: list[str] = Field(default_factory=list)
    refer_verbs: list[str] = Field(default_factory=list)
    reporting_prefixes: list[str] = Field(default_factory=list)
    negation_markers: list[str] = Field(default_factory=list)
    language: LanguageMarkers = Field(default_factory=LanguageMarkers)


class RoutingCatalog(BaseModel):
    """The routing catalog file (validated at load; a bad file fails loudly)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1]
    description: str = ""
    category_weights: CategoryWeights
    stopwords: list[str]
    negations: list[str]
    context: ContextRules = Field(default_factory=ContextRules)
    agencies: list[CatalogAgency]

    @model_validator(mode="after")
    def _check(self) -> RoutingCatalog:
        codes = [agency.code for agency in self.agencies]
        duplicates = sorted({c.value for c in codes if codes.count(c) > 1})
        if duplicates:
            raise ValueError(f"agencies listed more than once: {duplicates}")
        missing = sorted(c.value for c in AgencyCode if c not in codes)
        if missing:
            raise ValueError(f"agencies missing from the catalog: {missing}")
        stop = {w.lower() for w in self.stopwords}
        for agency in self.agencies:
            for entry in _all_entries(agency):
                phrase = entry if isinstance(entry, str) else entry.phrase
                tokens = tokenize(phrase)
                if not tokens:
                    raise ValueError(f"{agency.code.value}: phrase {phrase!r} has no words")
                if len(tokens) < 3 and all(t in stop for t in tokens):
                    # Short stopword-only phrases would match filler words everywhere.
                    raise ValueError(f"{agency.code.value}: phrase {phrase!r} is only stopwords")
        return self


def _all_entries(agency: CatalogAgency) -> list[Entry]:
    return [
        *agency.names,
        *agency.regelingen.entries(),
        *agency.topics.entries(),
        *agency.life_events.entries(),
    ]


class CatalogError(RuntimeError):
    """The routing catalog file is missing or invalid."""


def load_catalog(path: Path | None = None) -> RoutingCatalog:
    """Load and validate a catalog (default: the one packaged with loket_router)."""
    try:
        if path is None:
            raw = (
                resources.files("loket_router")
                .joinpath("data", "routing_catalog.json")
                .read_text(encoding="utf-8")
            )
            where = "loket_router/data/routing_catalog.json"
        else:
            raw = path.read_text(encoding="utf-8")
            where = str(path)
    except OSError as exc:
        raise CatalogError(f"cannot read routing catalog: {exc}") from exc
    try:
        return RoutingCatalog.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise CatalogError(f"invalid routing catalog {where}: {exc}") from exc


# --------------------------------------------------------------------------- text processing

_SENTENCE_END = re.compile(r"[.!?;]+(?=\s|$)|\n")
_APOSTROPHES = re.compile(r"['’‘`´]")
_TOKEN = re.compile(r"[a-z0-9&]+")
_VOWELS = frozenset("aeiouy")
_SUFFIXES = ("ingen", "ing", "ende", "end", "en", "es", "ed", "s", "e")
_MIN_STEM = 4
_MIN_PART = 3
_MIN_FUZZY = 6


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def _one_edit(a: str, b: str) -> bool:
    """True if a and b differ by one insertion, deletion, substitution or transposition."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    return a[i + 1 :] == b[i + 1 :] or (
        i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
    )


def _stripped(text: str) -> str:
    """Lower case, without diacritics (NFKD, combining marks dropped) and apostrophes."""
    if text.isascii():
        # NFKD leaves ASCII as it is and ASCII has no combining marks (the fast path)
        stripped = text.lower()
        if "'" in stripped or "`" in stripped:
            stripped = _APOSTROPHES.sub("", stripped)
        return stripped
    decomposed = unicodedata.normalize("NFKD", text)
    if not decomposed.isascii():
        # drop every combining mark (all of them are non-ASCII), each distinct one once
        for ch in set(decomposed):
            if unicodedata.combining(ch):
                decomposed = decomposed.replace(ch, "")
    return _APOSTROPHES.sub("", decomposed.lower())


def normalise(text: str) -> str:
    """Lower case, without diacritics and apostrophes, punctuation as single spaces."""
    return " ".join(_TOKEN.findall(_stripped(text)))


def tokenize(text: str) -> list[str]:
    """Normalised words of a text (``normalise(text).split()``)."""
    return _TOKEN.findall(_stripped(text))


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Light Dutch/English stemmer: plural and verb endings, spelling alternations."""
    if len(word) < _MIN_STEM or any(ch.isdigit() for ch in word):
        return word
    w = word
    if w.endswith("ies") and len(w) > 5:
        w = w[:-3] + "y"
    else:
        for suffix in _SUFFIXES:
            if w.endswith(suffix) and len(w) - len(suffix) >= _MIN_STEM:
                w = w[: -len(suffix)]
                break
    if len(w) > _MIN_STEM and w[-1] == w[-2] and w[-1] not in _VOWELS:
        w = w[:-1]
    if len(w) > _MIN_STEM and w[-1] in "dt" and w[-2] not in _VOWELS:
        w = w[:-1]
    if w.endswith("z"):
        w = w[:-1] + "s"
    elif w.endswith("v"):
        w = w[:-1] + "f"
    for vowel in "aeou":
        w = w.replace(vowel + vowel, vowel)
    return w


# --------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class RoutingDecision:
    """The outcome of routing one question."""

    lead: AgencyCode
    assignments: tuple[AgencyAssignment, ...]
    reasons: dict[str, list[str]]
    unclassified: bool

    @property
    def agencies(self) -> tuple[AgencyCode, ...]:
        """All chosen agencies, lead first."""
        return tuple(a.agency for a in self.assignments)


@dataclass(frozen=True)
class _Phrase:
    agency: AgencyCode
    atoms: tuple[str, ...]
    label: str
    weight: float
    named: bool
    lang: str | None = None  # "nl" or "en" when listed for one language only
    #: the reason texts of a match: plain (or "(named)" for a name), and "(mentioned)"
    reason: str = field(init=False, repr=False, compare=False)
    reason_mentioned: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        suffix = " (named)" if self.named else ""
        code = self.agency.value
        object.__setattr__(self, "reason", f"{self.label}{suffix} -> {code}")
        object.__setattr__(self, "reason_mentioned", f"{self.label} (mentioned) -> {code}")


@dataclass
class _Score:
    total: float = 0.0
    reasons: list[str] = field(default_factory=list)
    seen: dict[tuple[str, ...], int] = field(default_factory=dict)
    first: int = -1  # atom position of the first match


#: (length, phrases in bucket order, {second atom: ((bucket position, phrase), ...)})
_Group = tuple[int, tuple[_Phrase, ...], dict[str, tuple[tuple[int, _Phrase], ...]]]


def _position(item: tuple[int, _Phrase]) -> int:
    return item[0]


@dataclass(frozen=True)
class _Verb:
    head: str
    particles: tuple[str, ...]


@dataclass(frozen=True)
class Tuning:
    """Selection thresholds (tuned on the labelled set, see docs/routing.md)."""

    min_top: float = 1.5  # below this nothing counts as matched
    ratio: float = 0.4  # a further agency needs this fraction of the top score...
    min_include: float = 2.5  # ...and at least this score
    absolute: float = 4.0  # or this score regardless of the top
    repeat_factor: float = 0.3  # a repeated phrase adds this fraction of its weight
    max_repeats: int = 2
    multi_agency: int = 3  # this many agencies -> maatwerkloket leads
    max_agencies: int = 5  # cap on non-maatwerkloket agencies
    confidence_scale: float = 5.0
    mentioned_weight: float = 1.5  # an agency name that is only mentioned (reported speech)
    other_language: float = 0.5  # factor for a phrase of the other language in a clear text
    language_margin: int = 2  # marker words needed (and factor over the other language)
    lead_margin: float = 0.2  # agencies within this fraction of the top: first mention leads


class RoutingEngine:
    """Routes questions over a validated catalog."""

    def __init__(self, catalog: RoutingCatalog, tuning: Tuning | None = None) -> None:
        self.catalog = catalog
        self.tuning = tuning or Tuning()
        self.stopwords = frozenset(normalise(" ".join(catalog.stopwords)).split())
        self.negations = frozenset(normalise(" ".join(catalog.negations)).split())
        context = catalog.context
        self.say_verbs = self._verbs(context.say_verbs)
        self.refer_verbs = self._verbs(context.refer_verbs)
        self.reporting_prefixes = frozenset(tokenize(" ".join(context.reporting_prefixes)))
        self.negation_markers = frozenset(tokenize(" ".join(context.negation_markers)))
        self.language_markers = {
            "nl": frozenset(tokenize(" ".join(context.language.nl))),
            "en": frozenset(tokenize(" ".join(context.language.en))),
        }
        # Words kept whole (never split or typo-corrected): they steer, they are not topics.
        self.function_words = (
            self.stopwords
            | self.negations
            | self.negation_markers
            | self.reporting_prefixes
            | {v.head for v in (*self.say_verbs, *self.refer_verbs)}
        )
        raw: list[tuple[AgencyCode, str, float, bool, str | None]] = []
        weights = catalog.category_weights
        for agency in catalog.agencies:
            groups: list[tuple[Iterable[Entry], float, bool, str | None]] = [
                (agency.names, weights.names, True, None),
            ]
            for terms, default in (
                (agency.regelingen, weights.regelingen),
                (agency.topics, weights.topics),
                (agency.life_events, weights.life_events),
            ):
                groups.append((terms.nl, default, False, "nl"))
                groups.append((terms.en, default, False, "en"))
            for entries, default, named, lang in groups:
                for entry in entries:
                    if isinstance(entry, str):
                        raw.append((agency.code, entry, default, named, lang))
                    else:
                        raw.append((agency.code, entry.phrase, entry.weight, named, lang))
        # Vocabulary of atoms: stems of every catalog word except stopwords and negations.
        self.vocabulary = frozenset(
            stem(token)
            for _, phrase, _, _, _ in raw
            for token in tokenize(phrase)
            if token not in self.function_words
        )
        # A catalog word for each atom, to split a typo-corrected atom like the catalog does.
        self._surface: dict[str, str] = {}
        for _, phrase, _, _, _ in raw:
            for token in tokenize(phrase):
                self._surface.setdefault(stem(token), token)
        # Three-letter compound parts are only accepted when they are a phrase of their own
        # (abbreviations such as btw, aow, woz), so "permit" is not "per" + "mit".
        self.short_atoms = frozenset(
            words[0]
            for _, phrase, _, _, _ in raw
            if len(words := [stem(t) for t in tokenize(phrase)]) == 1 and len(words[0]) == 3
        )
        self._fuzzy: dict[str, set[str]] = {}
        for atom in self.vocabulary:
            if len(atom) >= _MIN_FUZZY:
                for variant in _deletions(atom):
                    self._fuzzy.setdefault(variant, set()).add(atom)
        self._split_cache: dict[str, tuple[str, ...]] = {}
        #: normalised word -> its atoms (function words stay whole), see _atoms_and_sentences
        self._word_atoms: dict[str, tuple[str, ...]] = {}
        best: dict[tuple[AgencyCode, tuple[str, ...]], _Phrase] = {}
        for code, phrase, weight, named, lang in raw:
            atoms = tuple(self.atoms(phrase))
            key = (code, atoms)
            current = best.get(key)
            if current is not None and current.lang != lang:
                lang = None  # listed for both languages
            if current is None or weight > current.weight:
                best[key] = _Phrase(code, atoms, phrase, weight, named, lang)
            elif lang != current.lang:
                best[key] = _Phrase(
                    code, current.atoms, current.label, current.weight, current.named, lang
                )
        by_agency: dict[AgencyCode, list[_Phrase]] = {}
        for phrase_obj in best.values():
            by_agency.setdefault(phrase_obj.agency, []).append(phrase_obj)
        for phrases in by_agency.values():
            for i, longer in enumerate(phrases):
                inner = [
                    p.weight
                    for p in phrases
                    if len(p.atoms) < len(longer.atoms) and _contains(longer.atoms, p.atoms)
                ]
                if inner and max(inner) > longer.weight:
                    phrases[i] = _Phrase(
                        longer.agency,
                        longer.atoms,
                        longer.label,
                        max(inner),
                        longer.named,
                        longer.lang,
                    )
        # False friends: a phrase listed for one language only, all of whose words also occur
        # in the other language's phrases of another agency (Dutch "file" = traffic jam for
        # rijkswaterstaat, English "file my taxes" for the belastingdienst). In a text that is
        # clearly in the other language such a phrase weighs less.
        lang_atoms: dict[tuple[str, AgencyCode], set[str]] = {}
        for code, phrase, _, named, lang in raw:
            if lang is not None and not named:
                lang_atoms.setdefault((lang, code), set()).update(self.atoms(phrase))

        def _false_friend(p: _Phrase) -> bool:
            other = "en" if p.lang == "nl" else "nl"
            return any(
                all(a in atoms for a in p.atoms)
                for (lang, code), atoms in lang_atoms.items()
                if lang == other and code is not p.agency
            )

        self.false_friends = frozenset(
            (p.agency, p.atoms)
            for phrases in by_agency.values()
            for p in phrases
            if p.lang is not None and _false_friend(p)
        )
        self.index: dict[str, list[_Phrase]] = {}
        for phrase_obj in (p for phrases in by_agency.values() for p in phrases):
            self.index.setdefault(phrase_obj.atoms[0], []).append(phrase_obj)
        for bucket in self.index.values():
            bucket.sort(key=lambda p: -len(p.atoms))
        # The matcher's view of the index: per first atom, the phrases grouped by length,
        # longest first; in a group of longer phrases, by their second atom, each with its
        # position in the bucket (see _match_groups).
        self._groups: dict[str, tuple[_Group, ...]] = {}
        for first, bucket in self.index.items():
            by_length: dict[int, list[tuple[int, _Phrase]]] = {}
            for position, phrase_obj in enumerate(bucket):
                by_length.setdefault(len(phrase_obj.atoms), []).append((position, phrase_obj))
            phrase_groups: list[_Group] = []
            for length, members in sorted(by_length.items(), reverse=True):
                by_second: dict[str, list[tuple[int, _Phrase]]] = {}
                if length > 1:
                    for position, phrase_obj in members:
                        by_second.setdefault(phrase_obj.atoms[1], []).append((position, phrase_obj))
                phrase_groups.append(
                    (
                        length,
                        tuple(p for _, p in members),
                        {atom: tuple(items) for atom, items in by_second.items()},
                    )
                )
            self._groups[first] = tuple(phrase_groups)
        # Reporting verbs by head word: the particle lists of the verbs with that head.
        self._say_heads = _heads(self.say_verbs)
        self._speaker_heads = _heads((*self.say_verbs, *self.refer_verbs))

    @staticmethod
    def _verbs(entries: Iterable[str]) -> tuple[_Verb, ...]:
        verbs = []
        for entry in entries:
            words = tokenize(entry)
            if words:
                verbs.append(_Verb(words[0], tuple(words[1:])))
        return tuple(verbs)

    # ----------------------------------------------------------------- text -> atoms

    def split_compound(self, word: str) -> tuple[str, ...]:
        """Stemmed atoms of one normalised word, split against the catalog vocabulary."""
        cached = self._split_cache.get(word)
        if cached is not None:
            return cached
        result = self._split(word)
        if len(self._split_cache) < 200_000:
            self._split_cache[word] = result
        return result

    def _split(self, word: str, *, fuzzy: bool = True) -> tuple[str, ...]:
        whole = (stem(word),)
        n = len(word)
        if n < 2 * _MIN_PART or word in self.stopwords or any(ch.isdigit() for ch in word):
            return whole
        # best[i] = the split of word[:i] with the most parts (None: not splittable).
        best: list[tuple[str, ...] | None] = [None] * (n + 1)
        best[0] = ()
        for end in range(_MIN_PART, n + 1):
            candidate: tuple[str, ...] | None = None
            for start in range(0, end - _MIN_PART + 1):
                prefix = best[start]
                if prefix is None:
                    continue
                part = stem(word[start:end])
                if part not in self.vocabulary or (
                    end - start == _MIN_PART and part not in self.short_atoms
                ):
                    continue
                option = (*prefix, part)
                if candidate is None or len(option) > len(candidate):
                    candidate = option
            best[end] = candidate
        split = best[n]
        if split is not None and len(split) >= 2:
            return split
        if fuzzy and whole[0] not in self.vocabulary and len(whole[0]) >= _MIN_FUZZY:
            corrected = self._correct(whole[0])
            if corrected is not None:
                # A typo of a catalog word: use that word (split like the catalog does).
                return self._split(self._surface[corrected], fuzzy=False)
        return whole

    def _correct(self, atom: str) -> str | None:
        """The catalog atom one typo away from ``atom`` (same first letter), if unambiguous."""
        candidates: set[str] = set()
        for variant in (atom, *_deletions(atom)):
            candidates |= self._fuzzy.get(variant, set())
        candidates = {c for c in candidates if c[0] == atom[0] and _one_edit(atom, c)}
        if len(candidates) == 1:
            return next(iter(candidates))
        return None

    def atoms(self, text: str) -> list[str]:
        """The atom sequence of a text: normalised, compound-split, stemmed."""
        return self._atoms_and_sentences(text)[0]

    def _atoms_and_sentences(self, text: str) -> tuple[list[str], list[int]]:
        """Atoms of a text and, per atom, the number of its sentence."""
        out: list[str] = []
        sentence: list[int] = []
        word_atoms = self._word_atoms
        for number, part in enumerate(_SENTENCE_END.split(text)):
            for token in tokenize(part):
                parts = word_atoms.get(token)
                if parts is None:
                    if token in self.function_words:
                        parts = (token,)
                    else:
                        parts = self.split_compound(token)
                    if len(word_atoms) < 200_000:
                        word_atoms[token] = parts
                if len(parts) == 1:
                    out.append(parts[0])
                    sentence.append(number)
                else:
                    out.extend(parts)
                    sentence.extend([number] * len(parts))
        return out, sentence

    # ----------------------------------------------------------------- matching

    def _match_groups(
        self, atoms: Sequence[str], i: int, groups: tuple[_Group, ...]
    ) -> tuple[list[_Phrase], int]:
        """Longest phrases starting at atoms[i] (``groups``: ``self._groups[atoms[i]]``).

        Returns every phrase of the longest length that matches, in index order, and the
        end of the first of them; ``([], i + 1)`` when none matches. A phrase matches when
        its atoms follow in order; stopwords of the text may be skipped between them (not
        before the first), at most two per phrase.
        """
        first_length, first_phrases, _ = groups[0]
        if first_length == 1:
            # the first atom is the index key: every one-atom phrase matches here
            return list(first_phrases), i + 1
        n = len(atoms)
        stopwords = self.stopwords
        # The atoms a phrase's second atom can match: the next one, or the one after one or
        # two stopwords (at most two skips in a phrase).
        reach: list[str] = []
        if i + 1 < n:
            reach.append(atoms[i + 1])
            if atoms[i + 1] in stopwords and i + 2 < n:
                if atoms[i + 2] not in reach:
                    reach.append(atoms[i + 2])
                if atoms[i + 2] in stopwords and i + 3 < n and atoms[i + 3] not in reach:
                    reach.append(atoms[i + 3])
        for length, phrases, by_second in groups:
            if length == 1:
                return list(phrases), i + 1
            candidates: list[tuple[int, _Phrase]] = []
            for atom in reach:
                hit = by_second.get(atom)
                if hit is not None:
                    candidates.extend(hit)
            if not candidates:
                continue
            if len(candidates) > 1:
                candidates.sort(key=_position)  # bucket order
            found: list[_Phrase] | None = None
            best_end = i + 1
            for _, phrase in candidates:
                # the first atom matches (index key); the rest may skip <= 2 stopwords
                want = phrase.atoms
                j = i + 1
                skips = 0
                for k in range(1, length):
                    atom = want[k]
                    while j < n and atoms[j] != atom:
                        if skips >= 2 or atoms[j] not in stopwords:
                            break
                        skips += 1
                        j += 1
                    if j >= n or atoms[j] != atom:
                        break
                    j += 1
                else:
                    if found is None:
                        found, best_end = [phrase], j
                    else:
                        found.append(phrase)
            if found is not None:
                return found, best_end
        return [], i + 1

    def _negated(self, atoms: Sequence[str], i: int, *, named: bool) -> bool:
        """A negation before atoms[i]: names always, other phrases only with a marker.

        "niet de Belastingdienst" negates the name; "het gaat niet om mijn belasting" negates
        the topic. "geen inkomen" or "geen zorgverzekering" is a need, not a negation.
        """
        j = i - 1
        marked = False
        while j >= 0 and (atoms[j] in self.stopwords or atoms[j] in self.negation_markers):
            marked = marked or atoms[j] in self.negation_markers
            j -= 1
        return j >= 0 and atoms[j] in self.negations and (named or marked)

    def _skip_back(self, atoms: Sequence[str], i: int) -> int:
        j = i - 1
        while j >= 0 and atoms[j] in self.stopwords:
            j -= 1
        return j

    @staticmethod
    def _verb_here(
        atoms: Sequence[str], j: int, heads: dict[str, tuple[tuple[str, ...], ...]]
    ) -> bool:
        """Whether atoms[j] is the head of one of the verbs in ``heads`` (``_heads``) whose
        particles all follow within the next four atoms."""
        particle_lists = heads.get(atoms[j])
        if particle_lists is None:
            return False
        for particles in particle_lists:
            if not particles:
                return True
            window = atoms[j + 1 : j + 5]
            if all(particle in window for particle in particles):
                return True
        return False

    def _reported(self, atoms: Sequence[str], sentence: Sequence[int]) -> list[bool]:
        """Per atom: inside a reported clause ("... zegt dat <clause>", to the sentence end)."""
        n = len(atoms)
        flags = [False] * n
        heads = self._say_heads
        for j, atom in enumerate(atoms):
            if atom in heads and self._verb_here(atoms, j, heads):
                k = j + 1
                while k < n and sentence[k] == sentence[j]:
                    flags[k] = True
                    k += 1
        return flags

    def _mentioned(
        self,
        atoms: Sequence[str],
        sentence: Sequence[int],
        i: int,
        end: int,
        reported: Sequence[bool],
    ) -> bool:
        """An agency name at atoms[i:end] that is only mentioned, not asked for."""
        if reported[i]:
            return True
        before = self._skip_back(atoms, i)
        if before >= 0 and atoms[before] in self.reporting_prefixes:
            return True
        # The speaker: a reporting verb within the next few words of the same sentence
        # ("de Belastingdienst stuurt mij door", "UWV heeft gezegd").
        for j in range(end, min(end + 3, len(atoms))):
            if sentence[j] != sentence[i]:
                break
            if self._verb_here(atoms, j, self._speaker_heads):
                return True
        return False

    def language(self, atoms: Sequence[str]) -> str | None:
        """The language ("nl"/"en") when its function words clearly dominate, else None."""
        counts = {
            lang: sum(map(markers.__contains__, atoms))
            for lang, markers in self.language_markers.items()
        }
        margin = self.tuning.language_margin
        for lang, other in (("nl", "en"), ("en", "nl")):
            if counts[lang] >= margin and counts[lang] >= margin * counts[other]:
                return lang
        return None

    def scores(self, text: str) -> dict[AgencyCode, _Score]:
        """Score every agency for a text (with reasons)."""
        atoms, sentence = self._atoms_and_sentences(text)
        reported = self._reported(atoms, sentence)
        text_lang = self.language(atoms)
        scores: dict[AgencyCode, _Score] = {}
        tuning = self.tuning
        groups_of = self._groups.get
        n = len(atoms)
        i = 0
        while i < n:
            groups = groups_of(atoms[i])
            if groups is None:  # no phrase starts with this atom
                i += 1
                continue
            found, end = self._match_groups(atoms, i, groups)
            for phrase in found:
                if self._negated(atoms, i, named=phrase.named):
                    continue
                weight = phrase.weight
                reason = phrase.reason
                if phrase.named and self._mentioned(atoms, sentence, i, end, reported):
                    weight = min(weight, tuning.mentioned_weight)
                    reason = phrase.reason_mentioned
                elif (
                    text_lang is not None
                    and phrase.lang not in (None, text_lang)
                    and (phrase.agency, phrase.atoms) in self.false_friends
                ):
                    weight *= tuning.other_language
                score = scores.get(phrase.agency)
                if score is None:
                    score = scores[phrase.agency] = _Score()
                if score.first < 0:
                    score.first = i
                seen = score.seen.get(phrase.atoms, 0)
                if seen == 0:
                    score.total += weight
                    score.reasons.append(reason)
                elif seen <= tuning.max_repeats:
                    score.total += weight * tuning.repeat_factor
                score.seen[phrase.atoms] = seen + 1
            i = end if found else i + 1
        return scores

    # ----------------------------------------------------------------- decision

    def _confidence(self, score: float) -> float:
        return round(1.0 - math.exp(-score / self.tuning.confidence_scale), 3)

    def classify(self, text: str, *, vulnerable: bool = False) -> RoutingDecision:
        """Route one question."""
        tuning = self.tuning
        scores = self.scores(text)
        ranked = sorted(scores.items(), key=_rank)
        if not ranked or ranked[0][1].total < tuning.min_top:
            return _unclassified()
        top = ranked[0][1].total
        if tuning.lead_margin > 0:
            # Close scores: the agency the person brought up first leads (people tend to
            # open with their main problem).
            close = [item for item in ranked if item[1].total >= (1 - tuning.lead_margin) * top]
            first = min(close, key=lambda item: item[1].first)
            ranked.remove(first)
            ranked.insert(0, first)
        chosen = [
            (code, s)
            for code, s in ranked
            if (s.total >= tuning.ratio * top and s.total >= tuning.min_include)
            or s.total >= tuning.absolute
            or s is ranked[0][1]
        ]
        mw_signal = next((s for code, s in chosen if code is MAATWERKLOKET), None)
        others = [(code, s) for code, s in chosen if code is not MAATWERKLOKET]
        others = others[: tuning.max_agencies]
        reasons: dict[str, list[str]] = {}
        mw_reasons: list[str] = []
        if mw_signal is not None:
            mw_reasons.extend(mw_signal.reasons)
        if len(others) >= tuning.multi_agency:
            mw_reasons.append(f"{len(others)} agencies needed -> maatwerkloket")
        if vulnerable:
            mw_reasons.append("vulnerable -> maatwerkloket")
        assignments: list[AgencyAssignment] = []
        if mw_reasons:
            confidence = (
                1.0
                if vulnerable or len(others) >= tuning.multi_agency
                else self._confidence(mw_signal.total if mw_signal else 0.0)
            )
            assignments.append(
                _assignment(MAATWERKLOKET, AgencyRole.LEAD, list(mw_reasons), confidence)
            )
            reasons[MAATWERKLOKET.value] = mw_reasons
        for code, s in others:
            role = AgencyRole.LEAD if not assignments else AgencyRole.SUPPORTING
            assignments.append(_assignment(code, role, list(s.reasons), self._confidence(s.total)))
            reasons[_CODE_VALUE[code]] = list(s.reasons)
        return RoutingDecision(
            lead=assignments[0].agency,
            assignments=tuple(assignments),
            reasons=reasons,
            unclassified=False,
        )


_CODE_VALUE: dict[AgencyCode, str] = {code: code.value for code in AgencyCode}


def _rank(item: tuple[AgencyCode, _Score]) -> tuple[float, str]:
    """Sort key of a scored agency: highest score first, then by code."""
    return (-item[1].total, _CODE_VALUE[item[0]])


def _assignment(
    agency: AgencyCode, role: AgencyRole, reasons: list[str], confidence: float
) -> AgencyAssignment:
    """``AgencyAssignment(...)`` without validation: the engine's values are valid by
    construction (catalog codes, a role, reason texts, a confidence in [0, 1]); the same
    instance attributes as a validated model with every field given."""
    model = AgencyAssignment.__new__(AgencyAssignment)
    values = {"agency": agency, "role": role, "reasons": reasons, "confidence": confidence}
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


def _heads(verbs: Iterable[_Verb]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Verbs by head word: per head, the particle lists of its verbs (in catalog order)."""
    out: dict[str, list[tuple[str, ...]]] = {}
    for verb in verbs:
        out.setdefault(verb.head, []).append(verb.particles)
    return {head: tuple(particles) for head, particles in out.items()}


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def _unclassified() -> RoutingDecision:
    return RoutingDecision(
        lead=MAATWERKLOKET,
        assignments=(
            AgencyAssignment(
                agency=MAATWERKLOKET,
                role=AgencyRole.LEAD,
                reasons=[UNCLASSIFIED_REASON],
                confidence=0.0,
            ),
        ),
        reasons={MAATWERKLOKET.value: [UNCLASSIFIED_REASON]},
        unclassified=True,
    )


@lru_cache(maxsize=1)
def default_engine() -> RoutingEngine:
    """The engine over the packaged catalog (loaded once)."""
    return RoutingEngine(load_catalog())


def classify(text: str, *, vulnerable: bool = False) -> RoutingDecision:
    """Route a question: the agencies that must act, lead first, with explanations."""
    return default_engine().classify(text, vulnerable=vulnerable)
