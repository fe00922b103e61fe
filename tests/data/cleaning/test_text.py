"""Every text cleaning rule, alone and chained, on ASCII, accented, Chinese and mixed text."""

from __future__ import annotations

import re
import unicodedata

import pytest

from lightning_optim.data.cleaning.text import (
    ENGLISH_STOPWORDS,
    TextCleaner,
    collapse_whitespace,
    lowercase,
    normalize_unicode,
    remove_punctuation,
    remove_stopwords,
    strip_emails,
    strip_html,
    strip_urls,
    tokenize,
)


@pytest.mark.parametrize(
    ("rule", "text", "expected"),
    [
        (lowercase, "HeLLo ÉCOLE ΣΟΦΙΑ", "hello école σοφια"),
        (strip_html, "<p class='x'>Hi <b>there</b></p>&amp; you", " Hi  there  & you"),
        (strip_html, "a<script>alert(1)</script>b<!-- c -->d", "a b d"),
        (strip_urls, "see https://example.com/a?b=1 and www.x.org/p now", "see   and   now"),
        (strip_urls, "ftp://files.net/x.zip", " "),
        (strip_emails, "write to jane.doe+tag@mail.example.com today", "write to   today"),
        (strip_emails, "josé@correo.es", " "),
        (remove_punctuation, "Hello, world! (ok) 50% $5", "Hello  world   ok  50   5"),
        (remove_punctuation, "我爱北京，天安门。「好」", "我爱北京 天安门  好 "),
        (remove_punctuation, "naïve café — déjà-vu", "naïve café   déjà vu"),
        (remove_punctuation, "snake_case", "snake case"),
        (collapse_whitespace, "  a \t b\n\n c\u3000d  ", "a b c d"),
        (remove_stopwords, "The cat is on the mat", "cat mat"),
        (remove_stopwords, "Is THIS it?", ""),
    ],
)
def test_each_rule(rule, text, expected):
    assert rule(text) == expected


def test_every_rule_leaves_clean_text_unchanged():
    clean = "résumé 北京 data42"
    for rule in (lowercase, strip_html, strip_urls, strip_emails, remove_punctuation, collapse_whitespace):
        assert rule(clean) == clean


def test_nfc_makes_combining_accents_word_characters():
    decomposed = "cafe\u0301"  # e + COMBINING ACUTE ACCENT
    assert re.findall(r"\w+", decomposed) == ["cafe"]  # \w does not match the combining mark alone
    assert normalize_unicode(decomposed) == "café"
    assert tokenize(normalize_unicode(decomposed)) == ["café"]
    assert TextCleaner().tokenize(decomposed) == ["café"]


@pytest.mark.parametrize("char", ["é", "ß", "ø", "ж", "ع", "中", "ア", "한", "٣", "_", "5"])
def test_w_semantics_unicode_word_characters(char):
    # Python's \w on str is Unicode: letters and digits of every script and the underscore
    assert re.fullmatch(r"\w", char)
    assert unicodedata.category(char)[0] in "LNP"


@pytest.mark.parametrize("char", [",", "。", "，", "!", "¿", "«", "-", "€", "©"])
def test_w_semantics_punctuation_is_not_word(char):
    assert not re.fullmatch(r"\w", char)
    assert remove_punctuation(char) == " "


def test_tokenize_splits_cjk_into_characters_and_keeps_accents():
    assert tokenize("我爱北京 naïve Straße") == ["我", "爱", "北", "京", "naïve", "Straße"]
    assert tokenize("我爱北京", split_cjk=False) == ["我爱北京"]
    assert tokenize("日本語テキスト") == list("日本語テキスト")


def test_cleaner_chain_default_order():
    cleaner = TextCleaner()
    text = "<div>Visit https://shop.example.com NOW!!!</div> Mail: Bob@Example.COM  Café, 北京。"
    assert cleaner(text) == "visit now mail café 北京"


def test_cleaner_switches_each_rule_off():
    text = "<b>Hi</b> X@y.com http://u.rl  The END."
    assert TextCleaner(lowercase=False)(text) == "Hi The END"
    assert TextCleaner(strip_html=False, remove_punctuation=False)(text).startswith("<b>hi</b>")
    assert "x@y.com" in TextCleaner(strip_emails=False, remove_punctuation=False)(text)
    assert "http://u.rl" in TextCleaner(strip_urls=False, remove_punctuation=False)(text)
    assert TextCleaner(remove_punctuation=False)(text) == "hi the end."
    assert TextCleaner(collapse_whitespace=False)(text) != TextCleaner()(text)
    assert TextCleaner(remove_stopwords=True)(text) == "hi end"


def test_stopwords_builtin_plus_user_lists():
    assert {"the", "and", "is", "of"} <= ENGLISH_STOPWORDS
    cleaner = TextCleaner(remove_stopwords=True, extra_stopwords=["Movie", "北"])
    assert cleaner("The movie was GREAT") == "great"
    assert cleaner.tokenize("The movie 北京") == ["京"]
    only_user = TextCleaner(remove_stopwords=True, stopwords="none", extra_stopwords=["movie"])
    assert only_user("The movie was great") == "the was great"


def test_cleaner_errors_name_option_and_allowed_values():
    with pytest.raises(ValueError, match=r"`stopwords`.*allowed: \['english', 'none'\]"):
        TextCleaner(stopwords="french")
    with pytest.raises(ValueError, match=r"`cleaning` option\(s\) \['lowercas'\].*allowed"):
        TextCleaner.from_options({"lowercas": True})
