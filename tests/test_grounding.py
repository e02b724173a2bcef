"""The grounding check, its number reader and language detector, and the extractive fallback.

Pure and fast: passages are built as ``Hit`` objects directly from Markdown files (the dev set in
bench/devset, and the example handbook as a sanity check); no model, no vector store.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.extractive import Extractive, extractive_answer
from agent.grounding import accepts, check, degenerate, doomed, language, sentences
from agent.hanzi import _SIMP, _TRAD
from agent.numbers import Quantity, fold, quantities, without_quantities
from bench.devset_check import DEVSET, evaluate, load_corpus, load_questions, retrieve
from knowledge.vectorstore import Hit
from tests.conftest import EXAMPLES

SICK_Q = "How many days of sick leave do I get?"


def hit(n: int, heading: str, text: str, title: str = "Leave policy", source: str = "leave-policy.md") -> Hit:
    return Hit(f"c{n}", 1.0, "hr", source, title, f"{title} > {heading}", text, ("*",))


SICK = hit(
    1,
    "Sick leave",
    "Up to 10 days of paid sick leave per year. From the third consecutive day, a doctor's note is "
    "required. Report sick leave to your manager before 10:00 on the first day.",
)
ANNUAL = hit(
    2,
    "Annual leave",
    "Full-time employees receive 20 days of paid annual leave per calendar year. Unused days, up to 5, "
    "carry over to the next year and expire on March 31.",
)
PARENTAL = hit(
    3,
    "Parental leave",
    "Parents receive 16 weeks of paid parental leave, to be taken within 12 months of the birth or adoption.",
)
LEAVE = [SICK, ANNUAL, PARENTAL]
MARRIAGE = hit(
    4, "婚假", "員工結婚可請婚假八天，須於結婚登記日前後三個月內請畢。", "員工請假規定", "請假規定.md"
)
SICK_ZH = hit(5, "病假", "員工因病需要休養時，每年可請三十天病假，其中半薪。", "員工請假規定", "請假規定.md")
ZH = [MARRIAGE, SICK_ZH]


# --- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 days", [(10, "day")]),
        ("ten days", [(10, "day")]),
        ("十天", [(10, "day")]),
        ("二十天", [(20, "day")]),
        ("20 working days", [(20, "day")]),
        ("1,000 EUR", [(1000, "eur")]),
        ("1000", [(1000, None)]),
        ("八天", [(8, "day")]),
        ("8 天", [(8, "day")]),
        ("兩週", [(2, "week")]),
        ("两周", [(2, "week")]),
        ("一百二十", [(120, None)]),
        ("一百零五", [(105, None)]),
        ("三千元", [(3000, "yuan")]),
        ("兩萬五千", [(25000, None)]),
        ("5萬元", [(50000, "yuan")]),
        ("新台幣二千五百元", [(2500, "yuan")]),
        ("NT$2,500", [(2500, "yuan")]),
        ("the third consecutive day", [(3, "day")]),
        ("第三次", [(3, None)]),
        ("三個月", [(3, "month")]),
        ("1.5 hours", [(1.5, "hour")]),
        ("0.30 EUR per kilometre", [(0.3, "eur")]),
        ("10%", [(10, "percent")]),
        ("10 percent", [(10, "percent")]),
        ("百分之十", [(10, "percent")]),
        ("２０％", [(20, "percent")]),
        ("twenty-five", [(25, None)]),
        ("one hundred and twenty", [(120, None)]),
        ("within one hour", [(1, "hour")]),
        ("二〇二四年", [(2024, "year")]),
        ("每日五十至八十美元", [(50, None), (80, "usd")]),
        ("3rd", [(3, None)]),
    ],
)
def test_quantities_read_digits_words_and_chinese_numerals(
    text: str, expected: list[tuple[float, str | None]]
) -> None:
    assert [(q.value, q.unit) for q in quantities(text)] == expected


@pytest.mark.parametrize(
    "text",
    [
        "one of the rules",
        "First, submit the form",
        "一般而言",
        "統一規定",
        "萬一遺失",
        "千萬不要",
        "十分重要",
    ],
)
def test_words_that_are_numbers_only_sometimes_are_not_read_as_numbers(text: str) -> None:
    assert quantities(text) == []


def test_clock_times_match_in_any_notation() -> None:
    (nine_thirty,) = quantities("09:30")
    assert nine_thirty.unit == "clock"
    assert nine_thirty.matches(quantities("9:30 am")[0])
    assert quantities("6 pm")[0].matches(quantities("18:00")[0])
    assert quantities("下午六點")[0].matches(quantities("6 pm")[0])
    assert not quantities("10:00")[0].matches(quantities("9:30")[0])


def test_a_unit_must_agree_when_both_sides_have_one() -> None:
    weeks, days, bare = Quantity(16, "week", 0, 0), Quantity(16, "day", 0, 0), Quantity(16, None, 0, 0)
    assert not days.matches(weeks)
    assert bare.matches(weeks) and days.matches(bare)
    assert not quantities("ten days")[0].matches(quantities("二十天")[0])
    assert quantities("二十天")[0].matches(quantities("20 days")[0])
    assert quantities("1,000")[0].matches(quantities("1000")[0])
    assert quantities("八天")[0].matches(quantities("8 days")[0])


def test_without_quantities_blanks_numbers_and_their_units() -> None:
    assert without_quantities("婚假八天，須於三個月內請畢").split() == ["婚假", ",須於", "內請畢"]
    assert " ".join(without_quantities("Up to 10 days of paid leave").split()) == "Up to of paid leave"


# Model output is arbitrary text: the check runs on every answer and must never fail on one.
_TEXT = st.text(
    alphabet=st.sampled_from(
        "0123456789 .,:;!?[]\n十百千萬兩一二三點天週年月%$€answerdaysick假請幾「」《》*-"
    )
)


@settings(max_examples=300, deadline=None)
@given(_TEXT | st.text(max_size=300))
def test_the_check_reads_any_text(text: str) -> None:
    verdict = check(text, SICK_Q, LEAVE)
    assert verdict.passed == (not verdict.reasons)
    assert set(verdict.supporting) <= {1, 2, 3}
    assert all(0 <= q.start < q.end <= len(fold(text)) for q in quantities(text))
    assert degenerate(text, final=False) is None or degenerate(text) is not None


# --- sentences and language -----------------------------------------------------------------


def test_sentences_keep_markers_decimals_and_cjk_stops() -> None:
    found = sentences("You get 1.5 days [1]. Then more. [2]\n- 婚假八天[1]。病假三十天。\n")
    assert [s.markers for s in found] == [(1,), (2,), (1,), ()]
    assert found[0].core == "You get 1.5 days ."
    assert found[2].text == "婚假八天[1]。"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("婚假可以請幾天？", "zh-Hant"),
        ("婚假可以请几天？", "zh-Hans"),
        ("婚假多少天", "zh"),  # no character tells the scripts apart
        ("How many days of sick leave do I get?", "en"),
        ("VPN 怎麼設定？", "zh-Hant"),
        ("How many days of 特休假 do I get?", "en"),
        ("有給休暇は何日ですか", "ja"),
        ("", ""),
    ],
)
def test_language_detection(text: str, expected: str) -> None:
    assert language(text) == expected


def test_either_script_answers_a_question_that_shows_none() -> None:
    assert accepts("zh", "zh-Hans") and accepts("zh", "zh-Hant") and accepts("zh-Hant", "zh")
    assert not accepts("zh-Hant", "zh-Hans") and not accepts("zh-Hans", "zh-Hant")
    assert not accepts("zh-Hant", "en") and not accepts("en", "zh")


def test_script_table_pairs_distinct_characters() -> None:
    assert len(_TRAD) == len(_SIMP) >= 150
    assert not set(_TRAD) & set(_SIMP)
    assert len(set(_TRAD)) == len(_TRAD) and len(set(_SIMP)) == len(_SIMP)
    assert not set("假薪天") & (set(_TRAD) | set(_SIMP))  # the same in both scripts


# --- degenerate output ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("The answer is: [1]\nThe answer is: [2]\nThe answer is: [3]", "degenerate: repeated lines"),
        ("The answer is: 16.", "degenerate: template answer"),
        ("答案是：16。", "degenerate: template answer"),
        ("Sick leave is paid. Sick leave is paid. It is.", "degenerate: repeated sentences"),
        ("leave " * 14, "degenerate: loop"),
        ("請假請假請假請假請假請假請假", "degenerate: loop"),
        ("You get 10 days.\n[1]", "degenerate: marker-only line"),
        ("The numbered sources are quoted company documents.", "prompt echo"),
        ('Sources:\n[1] Leave policy: "Up to 10 days"', "prompt echo"),
        ("[Source 1] says ten days.", "prompt echo"),
    ],
)
def test_degenerate_output_is_named(text: str, reason: str) -> None:
    assert degenerate(text) == reason


def test_degenerate_reads_a_streaming_prefix() -> None:
    # An unfinished last line is no verdict yet; a loop is, as soon as it shows.
    assert degenerate("The answer is: 1", final=False) is None
    assert degenerate("The answer is: [1]\nThe answer is: [2]\nThe ans", final=False) is not None
    assert degenerate("Up to 10 days of paid sick leave per year [1]. From the", final=False) is None
    assert degenerate("days days days days days days days days days days days days", final=False) is not None


def test_a_good_answer_is_not_degenerate() -> None:
    assert (
        degenerate("You get 10 days of paid sick leave per year [1].\nFrom the third day, bring a note [1].")
        is None
    )


def test_an_echo_of_the_configured_system_prompt_is_rejected() -> None:
    prompt = "You answer questions for Acme employees politely and always in full sentences."
    answer = "You answer questions for Acme employees politely and always in full sentences."
    assert degenerate(answer, prompt=prompt) == "prompt echo"
    assert "prompt echo" in check(answer, SICK_Q, LEAVE, prompt=prompt).reasons


# --- the check ------------------------------------------------------------------------------


def test_a_correct_cited_answer_passes_unchanged() -> None:
    answer = (
        "You get 10 days of paid sick leave per year [1]. From the third day you need a doctor's note [1]."
    )
    verdict = check(answer, SICK_Q, LEAVE)
    assert verdict.passed, verdict.reasons
    assert verdict.supporting == [1]


def test_the_issue_answer_16_is_rejected_though_16_is_in_a_passage() -> None:
    verdict = check("The answer is: 16.", SICK_Q, LEAVE)
    assert not verdict.passed
    assert "degenerate: template answer" in verdict.reasons
    assert "unsupported number: 16" in verdict.reasons  # 16 is parental leave, not what was asked


ANNUAL_Q = "How many days of annual leave do I get?"


@pytest.mark.parametrize(
    ("question", "answer", "reason"),
    [
        (SICK_Q, "You get 16 days of sick leave.", "unsupported number: 16 day"),  # 16 weeks is parental
        (SICK_Q, "Sick leave is 16 days per year [1].", "unsupported number: 16 day"),  # [1] says 10
        (SICK_Q, "Sick leave is 10 days per year [3].", "marker [3] does not support its sentence"),
        (SICK_Q, "16.", "unsupported number: 16"),  # a bare number is judged by the question
        (ANNUAL_Q, "10 days.", "unsupported number: 10 day"),  # the issue's "10" for annual leave
        (ANNUAL_Q, "Annual leave is 25 days per year [2].", "unsupported number: 25 day"),
    ],
)
def test_wrong_numbers_are_rejected(question: str, answer: str, reason: str) -> None:
    verdict = check(answer, question, LEAVE)
    assert not verdict.passed and reason in verdict.reasons, verdict.reasons


def test_sick_leave_answer_passes_cited_and_uncited() -> None:
    assert check("Sick leave is 10 days per year [1].", SICK_Q, LEAVE).supporting == [1]
    assert check("Sick leave is 10 days per year.", SICK_Q, LEAVE).passed
    assert check("10 days [1].", SICK_Q, LEAVE).passed  # terse, but it is what was asked
    assert check("Yes. You get 10 days of paid sick leave per year [1].", SICK_Q, LEAVE).passed


def test_marker_reasons() -> None:
    wrong = check("Sick leave is 10 days per year [3].", SICK_Q, LEAVE)
    assert "marker [3] does not support its sentence" in wrong.reasons
    missing = check("Sick leave is 10 days of paid leave per year [7].", SICK_Q, LEAVE)
    assert "marker [7] names no source" in missing.reasons
    both = check("Annual leave is 20 days [2] and sick leave 10 days [1] per year.", SICK_Q, LEAVE)
    assert both.passed and both.supporting == [2, 1]


def test_the_repeated_template_lines_are_rejected() -> None:
    verdict = check("The answer is: [1]\n" * 11, SICK_Q, LEAVE)
    assert not verdict.passed and "degenerate: repeated lines" in verdict.reasons


def test_empty_and_claimless_answers_are_rejected() -> None:
    assert check("  \n", SICK_Q, LEAVE).reasons == ["empty"]
    assert check("Yes.", SICK_Q, LEAVE).reasons == ["no supported claim"]
    assert check("[1]", SICK_Q, LEAVE).reasons == ["degenerate: marker-only line"]


def test_nothing_is_supported_without_sources() -> None:
    assert not check("10 days.", SICK_Q, []).passed
    assert not check("You get 10 days of paid sick leave per year [1].", SICK_Q, []).passed


def test_prompt_echo_is_rejected() -> None:
    verdict = check("The numbered sources are quoted company documents [1].", SICK_Q, LEAVE)
    assert "prompt echo" in verdict.reasons


def test_language_must_be_the_askers() -> None:
    english = check("Marriage leave is 8 days [1].", "婚假可以請幾天？", ZH)
    assert "wrong language: asked in zh-Hant, answered in en" in english.reasons
    simplified = check("员工结婚可请婚假八天[1]。", "婚假可以請幾天？", ZH)
    assert "wrong language: asked in zh-Hant, answered in zh-Hans" in simplified.reasons
    traditional = check("員工結婚可請婚假八天[1]。", "婚假可以请几天？", ZH)
    assert "wrong language: asked in zh-Hans, answered in zh-Hant" in traditional.reasons
    chinese = check("你每年有十天病假[1]。", SICK_Q, LEAVE)
    assert "wrong language: asked in en, answered in zh" in chinese.reasons


def test_chinese_answers_pass_in_either_script_as_asked() -> None:
    assert check("員工結婚可請婚假八天[1]。", "婚假可以請幾天？", ZH).passed
    assert check("员工结婚可请婚假八天[1]。", "婚假可以请几天？", ZH).passed  # folded to match its passage
    assert check("婚假有八天，須於結婚登記日前後三個月內請畢。", "婚假多少天", ZH).supporting == [1]
    wrong = check("婚假有三十天[1]。", "婚假可以請幾天？", ZH)
    assert "unsupported number: 30 day" in wrong.reasons


def test_quoted_passage_text_keeps_its_own_language() -> None:
    answer = 'According to *員工請假規定* [1]: "員工結婚可請婚假八天，須於結婚登記日前後三個月內請畢。"'
    assert check(answer, "How many days of marriage leave do I get?", ZH).passed
    # The same Chinese, not quoted, is a Chinese answer to an English question.
    assert not check("員工結婚可請婚假八天[1]。", "How many days of marriage leave do I get?", ZH).passed


# --- the extractive answer ------------------------------------------------------------------


def handbook() -> list[Hit]:
    return load_corpus(EXAMPLES)


def test_extractive_answer_quotes_the_passage_with_a_lead_in() -> None:
    found = extractive_answer(SICK_Q, LEAVE, lang="en")
    assert isinstance(found, Extractive)
    assert found.text == 'According to *Leave policy* [1]: "Up to 10 days of paid sick leave per year."'
    assert found.supporting == [1] and found.quotes == [(1, "Up to 10 days of paid sick leave per year.")]
    zh = extractive_answer("婚假可以請幾天？", ZH, lang="zh-Hant")
    assert zh is not None
    assert zh.text == "根據《員工請假規定》[1]：「員工結婚可請婚假八天，須於結婚登記日前後三個月內請畢。」"
    hans = extractive_answer("婚假可以请几天？", ZH, lang="zh-Hans")
    assert hans is not None and hans.text.startswith("根据《員工請假規定》[1]：「")
    # An English asker gets an English lead-in to the Chinese quote, which the check accepts.
    question = "How many days of 婚假 do I get?"
    en = extractive_answer(question, ZH, lang=language(question))
    assert en is not None and en.text.startswith('According to *員工請假規定* [1]: "員工結婚可請婚假八天')
    assert check(en.text, question, ZH).passed


def test_extractive_answer_uses_two_sources_when_the_question_needs_both() -> None:
    found = extractive_answer("How many days of annual leave and sick leave do I get?", LEAVE, lang="en")
    assert found is not None and sorted(found.supporting) == [1, 2]
    assert "20 days" in found.text and "10 days" in found.text and "16" not in found.text
    assert check(found.text, "How many days of annual leave and sick leave do I get?", LEAVE).passed


def test_extractive_answer_is_none_when_nothing_answers() -> None:
    assert extractive_answer("Can I bring my dog to the office?", LEAVE, lang="en") is None
    assert extractive_answer("公司有提供員工宿舍嗎？", ZH, lang="zh-Hant") is None
    assert extractive_answer(SICK_Q, [], lang="en") is None


@pytest.mark.parametrize(
    ("question", "fact"),
    [
        (SICK_Q, "10 days"),
        ("How many days of annual leave do I get?", "20 days"),
        ("婚假可以請幾天？", "婚假八天"),
        ("How long is parental leave?", "16 weeks"),
        ("What is the daily meal limit when travelling?", "60 EUR"),  # "limit" is in no passage
    ],
)
def test_handbook_questions_behave(question: str, fact: str) -> None:
    # A sanity check only: thresholds are tuned on bench/devset, never on the handbook.
    sources = handbook()
    found = extractive_answer(question, sources, lang=language(question))
    assert found is not None and fact in found.text
    assert check(found.text, question, sources).passed


def test_handbook_has_no_remote_work_answer() -> None:
    assert extractive_answer("Can I work from home?", handbook(), lang="en") is None


# --- the dev set ----------------------------------------------------------------------------


def test_devset_is_well_formed() -> None:
    questions = load_questions()
    corpus_text = {p.name: p.read_text(encoding="utf-8") for p in DEVSET.glob("*.md")}
    assert 8 <= len(corpus_text) <= 14
    assert (
        sum(q.lang == "en" for q in questions) >= 20 and sum(q.lang.startswith("zh") for q in questions) >= 20
    )
    assert (
        any(q.lang == "zh-Hans" for q in questions) and sum(q.answer_pattern is None for q in questions) >= 4
    )
    for q in questions:
        assert language(q.question) in (q.lang, "zh"), q.question
        if q.answer_pattern is None:
            continue
        assert q.source in corpus_text and re.search(q.answer_pattern, corpus_text[q.source]), q.question
        for d in q.distractors:  # a distractor is a number the corpus really states
            assert any(d in text for text in corpus_text.values()), d
    rows = (DEVSET / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(json.loads(r)["question"] for r in rows)


def test_dev_set_figures() -> None:
    f = evaluate()
    for group in ("en", "zh"):
        assert f.correct[group] / f.asked[group] >= 0.9, (group, f.misses)
    assert f.not_found == f.unanswerable, f.misses
    assert f.extractive_failing_check == []  # every extractive answer passes the check itself
    assert f.unsupported == 0
    assert f.bad_rejected == f.bad, f.misses
    assert f.misattributed_rejected == f.misattributed, f.misses
    assert f.good_passed / f.good >= 0.95, f.misses
    assert f.off_topic >= 8 and f.off_topic_rejected / f.off_topic >= 0.85, f.misses


def test_dev_retrieval_feeds_distracting_passages() -> None:
    # The passages the extractive answer chooses among include the distractors, as in the issue.
    corpus = load_corpus()
    hits = retrieve("What is the hotel limit per night in London?", corpus)
    assert hits[0].heading.endswith("Hotels") and "180 EUR" in hits[0].text and "250 EUR" in hits[0].text
    found = extractive_answer("What is the hotel limit per night in London?", hits, lang="en")
    assert found is not None and "250" in found.text


# --- relevance, cut-off drafts, and stopping a draft early ---------------------------------


def test_a_true_sentence_beside_the_question_is_rejected() -> None:
    # The annual-leave rule, quoted right, is no answer to a question on marriage leave.
    annual_zh = hit(6, "特休假", "到職滿一年的員工，每年享有十四天特休假。", "員工請假規定", "請假規定.md")
    sources = [annual_zh, MARRIAGE]
    verdict = check("到職滿一年的員工，每年享有十四天特休假[1]。", "婚假可以請幾天？", sources)
    assert not verdict.passed and any(r.startswith("off topic") for r in verdict.reasons)
    assert check("婚假有八天[2]。", "婚假可以請幾天？", sources).passed


def test_the_topic_of_a_follow_up_is_its_thread_question() -> None:
    follow_up = "Within how many months must it be taken?"
    answer = "Parental leave must be taken within 12 months of the birth [3]."
    assert check(answer, follow_up, LEAVE, topic=f"How long is parental leave? {follow_up}").passed


def test_a_draft_cut_off_inside_a_quote_is_rejected() -> None:
    verdict = check('The policy says "Up to 10 days of paid sick leave', SICK_Q, LEAVE)
    assert not verdict.passed and "unfinished: an open quote" in verdict.reasons
    assert degenerate('He said "yes', final=False) is None  # a growing prefix may still close it


def test_a_doomed_draft_is_known_before_it_ends() -> None:
    test = doomed(SICK_Q, LEAVE)
    assert test("Up to 10 days of paid sick leave per year [1]. A doctor") is None
    # A finished sentence with a number no passage states: whatever follows, the draft fails.
    assert test("You get 16 days of sick leave per year. And") == "unsupported number: 16 day"
    # The last sentence may still be growing: nothing is judged before it ends.
    assert test("You get 16") is None
    assert doomed("婚假可以請幾天？", ZH)("You can take eight days of marriage leave. It") is not None


def test_a_heading_that_shares_a_common_word_does_not_name_the_topic() -> None:
    # The passages a search for "paid sick leave" returns on the dev set, which has no sick leave.
    claims = hit(
        1,
        "Reimbursement",
        "Approved claims are paid back within 10 working days, together with the next salary run.",
        "Expense claims",
        "expense-claims.md",
    )
    leaving = hit(
        2,
        "Leaving the company",
        "When you leave the company, return all equipment to the IT desk "
        "within 5 working days of your last day. Equipment that is not returned is charged at its "
        "remaining value.",
        "Laptops and equipment",
        "equipment.md",
    )
    remote = hit(
        3,
        "Remote work",
        "Employees may work from home up to 3 days per week once their probation "
        "period has ended. Team days in the office are Tuesday and Thursday.",
        "Remote work",
        "remote.md",
    )
    submit = hit(
        4,
        "Submitting a claim",
        "Submit each expense claim with its receipts in the expense tool "
        "within 60 days of the purchase. Claims older than 90 days are rejected.",
        "Expense claims",
        "expense-claims.md",
    )
    sources = [claims, leaving, remote, submit]
    assert extractive_answer("How many days of paid sick leave do I get?", sources, lang="en") is None
    found = extractive_answer("How many days do I have to return equipment when I leave?", sources, lang="en")
    assert found is not None and "5 working days" in found.text
