from knowledge.sparse import document_vector, query_vector, token_index, tokenize


def test_cjk_runs_become_bigrams_and_words_stay_words() -> None:
    assert tokenize("請假規定") == ["請假", "假規", "規定"]
    assert tokenize("The PTO Policy") == ["pto", "policy"]
    assert tokenize("年假14天") == ["年假", "14", "天"]


def test_fullwidth_forms_fold_to_ascii() -> None:
    assert tokenize("ＰＴＯ　２０２６") == ["pto", "2026"]


def test_chinese_question_shares_tokens_with_its_passage() -> None:
    passage = set(query_vector("連續請病假超過三天者，須附醫師診斷證明。").indices)
    question = set(query_vector("請病假要附診斷證明嗎？").indices)
    assert {token_index("病假"), token_index("診斷"), token_index("證明")} <= passage & question


def test_document_weights_saturate_with_term_frequency() -> None:
    once = document_vector("leave")
    many = document_vector("leave leave leave leave")
    assert once.indices == many.indices
    assert many.values[0] > once.values[0]
    assert many.values[0] < 4 * once.values[0]


def test_query_weights_are_one_per_distinct_token() -> None:
    q = query_vector("leave leave policy")
    assert sorted(q.values) == [1.0, 1.0]
    assert q.indices == sorted(q.indices)
