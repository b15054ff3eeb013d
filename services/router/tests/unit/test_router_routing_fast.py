"""The routing engine's fast paths give exactly what the straightforward code gives.

The engine precomputes (phrases grouped by length and second atom, verbs by head word,
reason texts per phrase, atoms per word) and has an ASCII fast path in ``normalise``. The
reference functions below are the plain versions those replaced; random inputs built from
the catalog's own words must get identical results.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Sequence

from loket_router.routing import (
    _APOSTROPHES,
    _TOKEN,
    RoutingEngine,
    _assignment,
    _Phrase,
    default_engine,
    normalise,
    tokenize,
)
from loket_schemas.events import AgencyAssignment, AgencyRole
from loket_schemas.vocabulary import AgencyCode


def reference_normalise(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    stripped = _APOSTROPHES.sub("", stripped)
    return " ".join(_TOKEN.findall(stripped))


def reference_phrase_end(
    engine: RoutingEngine, atoms: Sequence[str], i: int, want: tuple[str, ...]
) -> int | None:
    j = i
    skips = 0
    for k, atom in enumerate(want):
        while j < len(atoms) and atoms[j] != atom:
            if k == 0 or atoms[j] not in engine.stopwords or skips >= 2:
                return None
            skips += 1
            j += 1
        if j >= len(atoms):
            return None
        j += 1
    return j


def reference_match_at(
    engine: RoutingEngine, atoms: Sequence[str], i: int
) -> tuple[list[_Phrase], int]:
    bucket = engine.index.get(atoms[i])
    if not bucket:
        return [], i + 1
    best_len = 0
    best_end = i + 1
    found: list[_Phrase] = []
    for phrase in bucket:
        if len(phrase.atoms) < best_len:
            break
        end = reference_phrase_end(engine, atoms, i, phrase.atoms)
        if end is None:
            continue
        if len(phrase.atoms) > best_len:
            best_len, best_end, found = len(phrase.atoms), end, [phrase]
        else:
            found.append(phrase)
    return found, best_end


def reference_reported(
    engine: RoutingEngine, atoms: Sequence[str], sentence: Sequence[int]
) -> list[bool]:
    def verb_at(j: int) -> bool:
        return any(
            atoms[j] == verb.head
            and all(particle in atoms[j + 1 : j + 5] for particle in verb.particles)
            for verb in engine.say_verbs
        )

    flags = [False] * len(atoms)
    for j in range(len(atoms)):
        if verb_at(j):
            k = j + 1
            while k < len(atoms) and sentence[k] == sentence[j]:
                flags[k] = True
                k += 1
    return flags


def test_normalise_equals_the_plain_version() -> None:
    rng = random.Random(11)
    alphabet = "aAbeEzZ019 &-.,'`’‘´!?;\n\téëÉïöüçñßæøåİıΣσς½ﬁ①\u0301\u0308\u200b"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert normalise(text) == reference_normalise(text), text
        assert tokenize(text) == reference_normalise(text).split(), text


def _atom_sequences(engine: RoutingEngine, count: int) -> list[list[str]]:
    rng = random.Random(5)
    phrase_atoms = [p.atoms for bucket in engine.index.values() for p in bucket]
    stop = sorted(engine.stopwords)
    say = [v.head for v in engine.say_verbs] + [p for v in engine.say_verbs for p in v.particles]
    out = []
    for _ in range(count):
        atoms: list[str] = []
        while len(atoms) < rng.randrange(1, 30):
            pick = rng.random()
            if pick < 0.4:
                phrase = rng.choice(phrase_atoms)
                for atom in phrase:  # a phrase, perhaps with stopwords in between
                    atoms.append(atom)
                    while rng.random() < 0.25:
                        atoms.append(rng.choice(stop))
            elif pick < 0.7:
                atoms.append(rng.choice(stop))
            elif pick < 0.8:
                atoms.append(rng.choice(say))
            else:
                atoms.append(rng.choice(rng.choice(phrase_atoms)))
        out.append(atoms)
    return out


def test_matcher_equals_the_plain_longest_match() -> None:
    engine = default_engine()
    for atoms in _atom_sequences(engine, 2000):
        for i in range(len(atoms)):
            want = reference_match_at(engine, atoms, i)
            groups = engine._groups.get(atoms[i])
            got = engine._match_groups(atoms, i, groups) if groups else ([], i + 1)
            assert got == want, (atoms, i)


def test_reported_clauses_equal_the_plain_version() -> None:
    engine = default_engine()
    rng = random.Random(3)
    for atoms in _atom_sequences(engine, 1000):
        sentence = sorted(rng.randrange(3) for _ in atoms)
        assert engine._reported(atoms, sentence) == reference_reported(engine, atoms, sentence)


def test_unvalidated_assignment_equals_a_validated_one() -> None:
    fast = _assignment(AgencyCode.DUO, AgencyRole.LEAD, ["studieschuld -> duo"], 0.551)
    slow = AgencyAssignment(
        agency=AgencyCode.DUO,
        role=AgencyRole.LEAD,
        reasons=["studieschuld -> duo"],
        confidence=0.551,
    )
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump_json() == slow.model_dump_json()
    assert AgencyAssignment.model_validate(fast.model_dump()) == fast


def test_phrase_reasons_are_the_reason_texts() -> None:
    named = _Phrase(AgencyCode.UWV, ("uwv",), "UWV", 6.0, True)
    topic = _Phrase(AgencyCode.UWV, ("ww",), "ww-uitkering", 3.0, False, "nl")
    assert named.reason == "UWV (named) -> uwv"
    assert named.reason_mentioned == "UWV (mentioned) -> uwv"
    assert topic.reason == "ww-uitkering -> uwv"
    assert named == _Phrase(AgencyCode.UWV, ("uwv",), "UWV", 6.0, True)
