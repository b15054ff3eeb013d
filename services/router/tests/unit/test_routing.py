"""Unit tests of the routing engine (loket_router.routing) and its CLI (loket_router.classify)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loket_router.classify import evaluate, run_stream
from loket_router.routing import (
    CatalogError,
    RoutingEngine,
    classify,
    default_engine,
    load_catalog,
    normalise,
    stem,
)
from loket_schemas.events import AgencyRole
from loket_schemas.vocabulary import AgencyCode


def agencies(text: str, *, vulnerable: bool = False) -> list[str]:
    return [a.agency.value for a in classify(text, vulnerable=vulnerable).assignments]


# --------------------------------------------------------------------------- normalisation


def test_normalise_case_accents_punctuation() -> None:
    assert normalise("Ik wil ÉÉN Ov-Studentenkaart!!") == "ik wil een ov studentenkaart"
    assert normalise("auto's  zzp'er   café") == "autos zzper cafe"
    assert normalise("naïeve coördinatie; re-integratie?") == "naieve coordinatie re integratie"


def test_accents_and_case_do_not_change_routing() -> None:
    assert agencies("Mijn KINDERBIJSLAG is niet betaald") == ["svb"]
    assert agencies("Geïmmigreerd: verblijfsvergunning verlengen") == ["ind"]


# --------------------------------------------------------------------------- stemming


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("boete", "boetes"),
        ("bekeuring", "bekeuringen"),
        ("betaalt", "betalen"),
        ("verhuisd", "verhuizen"),
        ("uitkering", "uitkeringen"),
        ("allowance", "allowances"),
        ("penalty", "penalties"),
        ("permit", "permits"),
        ("student", "studenten"),
    ],
)
def test_light_stemming_conflates_inflections(a: str, b: str) -> None:
    assert stem(a) == stem(b)


def test_stemming_leaves_short_words_and_abbreviations() -> None:
    for word in ("uwv", "aow", "ww", "a12", "kvk"):
        assert stem(word) == word


def test_stemmed_forms_route_alike() -> None:
    assert agencies("Ik heb twee bekeuringen gekregen") == ["cjib"]
    assert agencies("ik ben verhuisd, waar geef ik mijn nieuwe adres door") == ["gemeente"]


# --------------------------------------------------------------------------- compound splitting


def test_compound_splitting_against_catalog_vocabulary() -> None:
    engine = default_engine()
    assert engine.split_compound("kinderopvangtoeslag") == ("kinderopvang", "toeslag")
    assert engine.split_compound("huurtoeslagen")[-1] == stem("toeslag")
    assert engine.split_compound("zorgtoeslagschuld") == (
        stem("zorg"),
        stem("toeslag"),
        stem("schuld"),
    )
    # Not a compound of catalog words: left whole.
    assert engine.split_compound("fietsbel") == (stem("fietsbel"),)


def test_three_letter_parts_only_for_abbreviations() -> None:
    engine = default_engine()
    assert engine.split_compound("aowuitkering") == ("aow", stem("uitkering"))
    assert "mit" not in engine.split_compound("permit")


def test_unknown_compound_routes_via_its_parts() -> None:
    # Neither word is in the catalog as such.
    assert agencies("Ik heb een huurtoeslagschuld van 3000 euro")[0] == "toeslagen"
    assert agencies("Vraag over mijn kinderbijslagbetaling") == ["svb"]


def test_compound_and_separate_spelling_match_the_same_phrase() -> None:
    assert agencies("kinderopvang toeslag aanvragen") == agencies("kinderopvangtoeslag aanvragen")


def test_typo_of_a_catalog_word_is_tolerated() -> None:
    assert agencies("kan ik mn zorgtoeslg aanpassen") == ["toeslagen"]
    assert agencies("brief van de belastingdiest") == ["belastingdienst"]


# --------------------------------------------------------------------------- scoring


def test_reasons_explain_the_choice() -> None:
    decision = classify("Hoe los ik mijn studieschuld af?")
    assert decision.lead is AgencyCode.DUO
    assert "studieschuld -> duo" in decision.reasons["duo"]
    assert decision.assignments[0].reasons == decision.reasons["duo"]
    assert 0.0 < decision.assignments[0].confidence <= 1.0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Ik heb een vraag voor de belasting", "belastingdienst"),
        ("Vraag voor het UWV", "uwv"),
        ("de SVB belde mij", "svb"),
        ("brief van DUO", "duo"),
        ("het CJIB stuurde een brief", "cjib"),
        ("het CAK stuurde een brief", "cak"),
        ("ik heb een brief van de IND", "ind"),
        ("de RDW stuurde een brief", "rdw"),
        ("een brief van Justis", "justis"),
        ("RVO heeft mij gemaild", "rvo"),
        ("een brief van de Kamer van Koophandel", "kvk"),
        ("KVK stuurde een brief", "kvk"),
        ("het wijkteam belde", "gemeente"),
        ("een brief van het waterschap", "waterschap"),
        ("Rijkswaterstaat stuurde een brief", "rijkswaterstaat"),
        ("het Juridisch Loket", "juridisch-loket"),
    ],
)
def test_named_agency_alone_is_enough(text: str, code: str) -> None:
    assert agencies(text) == [code]


def test_named_agency_outweighs_a_topic_word() -> None:
    # "huur" on its own hints at rent allowance; the named agency decides.
    decision = classify("Het Juridisch Loket over mijn huur")
    assert decision.lead is AgencyCode.JURIDISCH_LOKET
    assert any("(named)" in r for r in decision.reasons["juridisch-loket"])


def test_negated_agency_name_does_not_count() -> None:
    decision = classify("het gaat niet om de belastingdienst maar om mijn huurtoeslag")
    assert [a.agency.value for a in decision.assignments] == ["toeslagen"]


# --------------------------------------------------------------------------- context


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # the speaker of "zegt" / "stuurt door" is a referrer, not the competent agency
        ("UWV zegt dat ik bijstand moet aanvragen", ["gemeente"]),
        ("De Belastingdienst stuurt mij door, mijn WW-aanvraag is afgewezen", ["uwv"]),
        # a name inside the reported clause is hearsay ("een vriend zegt dat ...")
        ("Een vriend zegt dat ik bij de gemeente moet zijn voor mijn zorgtoeslag", ["toeslagen"]),
        ("volgens de gemeente moet ik kinderbijslag ergens anders aanvragen", ["svb"]),
        ("The municipality told me to ask about my state pension elsewhere", ["svb"]),
    ],
)
def test_mentioned_agency_is_not_the_competent_one(text: str, want: list[str]) -> None:
    decision = classify(text)
    assert [a.agency.value for a in decision.assignments] == want


def test_mentioned_agency_still_routes_when_it_is_the_only_signal() -> None:
    decision = classify("Het CJIB zegt dat ik nog moet betalen")
    assert decision.lead is AgencyCode.CJIB
    assert any("(mentioned)" in r for r in decision.reasons["cjib"])


def test_contrastive_negation_negates_a_topic() -> None:
    assert agencies("Het gaat niet om mijn belasting maar om mijn huurtoeslag") == ["toeslagen"]
    assert agencies("It is not about my taxes but about my child benefit") == ["svb"]


def test_geen_is_a_need_not_a_negation() -> None:
    # "geen zorgverzekering" / "geen inkomen" describe the problem.
    assert agencies("Ik heb geen zorgverzekering en krijg een brief van het CAK") == ["cak"]
    assert "gemeente" in agencies("ik heb geen inkomen meer, kan ik bijstand krijgen")


def test_false_friend_weighs_less_in_the_other_language() -> None:
    # English "file" is a tax return; Dutch "file" is a traffic jam.
    assert agencies("Can I still file my Dutch tax return for last year?") == ["belastingdienst"]
    assert agencies("Elke ochtend staat er file op de A12") == ["rijkswaterstaat"]
    engine = default_engine()
    assert engine.language(engine.atoms("How do I apply for the benefit?")) == "en"
    assert engine.language(engine.atoms("Hoe vraag ik dat aan bij de gemeente?")) == "nl"


def test_close_scores_first_mentioned_agency_leads() -> None:
    # People tend to open with their main problem: on a (near) tie the first one leads.
    first = classify("Mijn WW-uitkering stopt en mijn kinderbijslag is ook niet betaald")
    assert first.lead is AgencyCode.UWV
    assert set(first.agencies) == {AgencyCode.UWV, AgencyCode.SVB}
    second = classify("Mijn kinderbijslag is niet betaald en mijn WW-uitkering stopt ook")
    assert second.lead is AgencyCode.SVB


def test_function_words_are_not_typo_corrected() -> None:
    # "vanwege" is one edit from the stem of "vaarweg"; it is a stopword, not a typo.
    assert "rijkswaterstaat" not in agencies("mijn VOG is geweigerd vanwege een veroordeling")


def test_catalog_without_context_rules_still_loads(tmp_path: Path) -> None:
    raw = json.loads(
        (Path(__file__).parents[2] / "src/loket_router/data/routing_catalog.json").read_text()
    )
    del raw["context"]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(raw))
    engine = RoutingEngine(load_catalog(path))
    assert engine.classify("Mijn zorgtoeslag is gestopt").lead is AgencyCode.TOESLAGEN


# --------------------------------------------------------------------------- selection


def test_two_agencies_when_both_are_needed() -> None:
    decision = classify(
        "Mijn man is overleden: hoe zit het met de nabestaandenuitkering en het "
        "overschrijven van zijn auto op mijn naam?"
    )
    assert set(decision.agencies) == {AgencyCode.SVB, AgencyCode.RDW}
    assert decision.assignments[0].role is AgencyRole.LEAD
    assert decision.assignments[1].role is AgencyRole.SUPPORTING
    assert decision.lead is decision.assignments[0].agency


def test_weak_context_word_does_not_add_an_agency() -> None:
    # "auto" is context here, the question is about the tax.
    assert agencies("Hoe hoog is de motorrijtuigenbelasting voor mijn auto?") == ["belastingdienst"]


def test_three_agencies_make_maatwerkloket_lead() -> None:
    decision = classify(
        "Ik heb een WW-uitkering aangevraagd, mijn huurtoeslag moet worden aangepast en "
        "ik heb een studieschuld die ik niet kan aflossen"
    )
    assert decision.lead is AgencyCode.MAATWERKLOKET
    assert decision.assignments[0].role is AgencyRole.LEAD
    assert {AgencyCode.UWV, AgencyCode.TOESLAGEN, AgencyCode.DUO} <= set(decision.agencies)
    assert all(a.role is AgencyRole.SUPPORTING for a in decision.assignments[1:])
    assert any("agencies needed" in r for r in decision.reasons["maatwerkloket"])


def test_vulnerable_makes_maatwerkloket_lead() -> None:
    decision = classify("Ik moet mijn huurtoeslag terugbetalen", vulnerable=True)
    assert decision.lead is AgencyCode.MAATWERKLOKET
    assert [a.agency for a in decision.assignments] == [
        AgencyCode.MAATWERKLOKET,
        AgencyCode.TOESLAGEN,
    ]
    assert decision.assignments[1].role is AgencyRole.SUPPORTING
    assert "vulnerable -> maatwerkloket" in decision.reasons["maatwerkloket"]
    assert decision.unclassified is False


def test_stuck_citizen_goes_to_maatwerkloket() -> None:
    decision = classify("Iedereen stuurt me door, ik kom er niet meer uit")
    assert decision.lead is AgencyCode.MAATWERKLOKET
    assert decision.unclassified is False


def test_nothing_matched_is_unclassified_never_dropped() -> None:
    for text in ("Goedemorgen!", "", "   ", "qwerty asdf"):
        decision = classify(text)
        assert decision.lead is AgencyCode.MAATWERKLOKET
        assert decision.reasons == {"maatwerkloket": ["unclassified"]}
        assert decision.unclassified is True
        assert len(decision.assignments) == 1
        assert decision.assignments[0].role is AgencyRole.LEAD


def test_english_questions_route() -> None:
    assert agencies("How do I apply for unemployment benefits?") == ["uwv"]
    assert agencies("I need a certificate of good conduct") == ["justis"]
    assert agencies("my residence permit expires next month") == ["ind"]


def test_long_text_is_fast_enough() -> None:
    text = "Ik heb een vraag over mijn huurtoeslag en de gemeente. " * 400
    decision = classify(text)
    assert decision.lead in (AgencyCode.TOESLAGEN, AgencyCode.GEMEENTE)


# --------------------------------------------------------------------------- catalog


def test_packaged_catalog_covers_every_agency() -> None:
    catalog = load_catalog()
    assert {a.code for a in catalog.agencies} == set(AgencyCode)


def test_bad_catalog_fails_loudly(tmp_path: Path) -> None:
    good = json.loads(
        (Path(__file__).parents[2] / "src/loket_router/data/routing_catalog.json").read_text()
    )
    missing = dict(good, agencies=good["agencies"][1:])
    path = tmp_path / "missing.json"
    path.write_text(json.dumps(missing))
    with pytest.raises(CatalogError, match="missing"):
        load_catalog(path)
    bad_weight = json.loads(json.dumps(good))
    bad_weight["agencies"][0]["names"].append({"phrase": "x", "weight": -1})
    path.write_text(json.dumps(bad_weight))
    with pytest.raises(CatalogError):
        load_catalog(path)
    path.write_text("{not json")
    with pytest.raises(CatalogError):
        load_catalog(path)
    with pytest.raises(CatalogError):
        load_catalog(tmp_path / "absent.json")


def test_engine_over_a_custom_catalog(tmp_path: Path) -> None:
    catalog = load_catalog()
    engine = RoutingEngine(catalog)
    assert engine.classify("kenteken").lead is AgencyCode.RDW


# --------------------------------------------------------------------------- CLI


def run_cli(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loket_router.classify", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_round_trip() -> None:
    lines = [
        {"id": "a1", "text": "Hoe vraag ik kinderbijslag aan?"},
        {"id": 2, "text": "Ik ben werkloos en heb schulden", "vulnerable": True},
        {"id": "a3", "text": "Goedemorgen"},
    ]
    result = run_cli("".join(json.dumps(line) + "\n" for line in lines))
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in out] == ["a1", 2, "a3"]
    assert out[0] == {
        "id": "a1",
        "lead": "svb",
        "agencies": ["svb"],
        "reasons": {"svb": ["kinderbijslag -> svb"]},
    }
    assert out[1]["lead"] == "maatwerkloket"
    assert out[1]["agencies"][0] == "maatwerkloket"
    assert "uwv" in out[1]["agencies"]
    assert out[2]["agencies"] == ["maatwerkloket"]
    assert out[2]["reasons"] == {"maatwerkloket": ["unclassified"]}


def test_cli_bad_lines_are_reported_and_skipped() -> None:
    stdin = "\n".join(
        [
            '{"id": "ok1", "text": "mijn kenteken"}',
            "this is not json",
            '{"text": "no id"}',
            '{"id": "x", "text": 42}',
            '{"id": "y", "text": "boete", "vulnerable": "ja"}',
            "[1, 2]",
            '{"id": "ok2", "text": "mijn VOG"}',
        ]
    )
    result = run_cli(stdin)
    assert result.returncode == 1
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["ok1", "ok2"]
    for number in (2, 3, 4, 5, 6):
        assert f"line {number}:" in result.stderr
    assert "line 1:" not in result.stderr and "line 7:" not in result.stderr


def test_run_stream_in_process() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_stream(['{"id": 1, "text": "zorgtoeslag"}\n', "\n", "{oops\n"], out, err)
    assert code == 1
    assert json.loads(out.getvalue())["lead"] == "toeslagen"
    assert "line 3: invalid JSON" in err.getvalue()


def test_cli_evaluate(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    rows: list[dict[str, object]] = [
        {"_comment": "synthetic"},
        {"id": "1", "text": "kinderbijslag", "lead": "svb", "agencies": ["svb"]},
        {"id": "2", "text": "huurtoeslag", "lead": "toeslagen", "agencies": ["toeslagen"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("", "--evaluate", str(path), "--split", "all")
    assert result.returncode == 0, result.stderr
    assert "lead_accuracy=1.000" in result.stdout
    figures = evaluate(rows[1:])
    assert (figures.lead_accuracy, figures.precision, figures.recall) == (1.0, 1.0, 1.0)
