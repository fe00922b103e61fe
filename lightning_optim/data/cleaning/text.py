"""Text cleaning: lower-casing, URL/HTML/e-mail stripping, punctuation removal, whitespace collapsing and
stop-word removal, each switchable, Unicode-aware.

Every rule is a plain function (``strip_urls(text)``, ``remove_punctuation(text)``, ...) and
:class:`TextCleaner` chains the enabled ones in a fixed, documented order. Text is first brought to
Unicode NFC form so that an accented letter written as letter + combining accent becomes one character,
which Python's Unicode ``\\w`` (letters, digits and underscore of every script) then matches: ``café``,
``naïve``, ``Straße`` and ``北京`` are words; ``，`` and ``。`` are punctuation.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable

#: A built-in English stop-word list (function words: articles, pronouns, auxiliaries, prepositions,
#: conjunctions and contractions' parts), lower case.
ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are aren as at be because been before being below
    between both but by can cannot could couldn d did didn do does doesn doing don down during each few for
    from further had hadn has hasn have haven having he her here hers herself him himself his how i if in into
    is isn it its itself just ll m ma me more most mustn my myself needn no nor not now o of off on once only
    or other our ours ourselves out over own re s same shan she should shouldn so some such t than that the
    their theirs them themselves then there these they this those through to too under until up ve very was
    wasn we were weren what when where which while who whom why will with won would wouldn y you your yours
    yourself yourselves
    """.split()
)

_URL_RE = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_HTML_TAG_RE = re.compile(
    r"<!--.*?-->|<(?:script|style)\b.*?</(?:script|style)\s*>|</?[A-Za-z][^<>]*>", re.S | re.I
)
_WHITESPACE_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"\w+")
#: CJK ideographs, kana and hangul syllables: scripts written without spaces between words
_CJK_RE = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f]"
)


def normalize_unicode(text: str) -> str:
    """NFC-normalize ``text`` (a letter plus a combining accent becomes one precomposed character)."""
    return unicodedata.normalize("NFC", text)


def lowercase(text: str) -> str:
    """Lower-case with Unicode rules (``"ÉCOLE"`` -> ``"école"``)."""
    return text.lower()


def strip_html(text: str) -> str:
    """Remove HTML tags, comments and ``<script>``/``<style>`` blocks, then unescape entities (``&amp;``)."""
    return html.unescape(_HTML_TAG_RE.sub(" ", text))


def strip_urls(text: str) -> str:
    """Remove ``http(s)://``, ``ftp://`` and ``www.`` addresses."""
    return _URL_RE.sub(" ", text)


def strip_emails(text: str) -> str:
    """Remove e-mail addresses (Unicode local parts and domains included)."""
    return _EMAIL_RE.sub(" ", text)


def _is_punctuation(char: str) -> bool:
    # Unicode categories P* (punctuation, including CJK "，。「」" and "_") and S* (symbols: $ + < © emoji)
    return unicodedata.category(char)[0] in "PS"


def remove_punctuation(text: str) -> str:
    """Replace every Unicode punctuation or symbol character (categories ``P*``, ``S*``) by a space.

    Letters and digits of every script and combining marks stay, so ``"naïve, 北京。"`` becomes
    ``"naïve  北京 "``. The underscore (category ``Pc``) is punctuation here although ``\\w`` matches it.
    """
    return "".join(" " if _is_punctuation(c) else c for c in text)


def collapse_whitespace(text: str) -> str:
    """Collapse runs of Unicode whitespace (tabs, newlines, ideographic space) to one space; strip ends."""
    return _WHITESPACE_RE.sub(" ", text).strip()


def tokenize(text: str, split_cjk: bool = True) -> list[str]:
    """Split text into word tokens with Python's Unicode ``\\w+``.

    Args:
        text: the (cleaned) text.
        split_cjk: make every CJK ideograph, kana or hangul syllable its own token (those scripts do not
            separate words by spaces, so ``\\w+`` would otherwise return whole sentences).
    """
    if split_cjk:
        text = _CJK_RE.sub(lambda m: f" {m.group(0)} ", text)
    return _WORD_RE.findall(text)


def remove_stopwords(text: str, stopwords: Iterable[str] = ENGLISH_STOPWORDS) -> str:
    """Drop whitespace-separated words whose lower-case form (punctuation around it ignored) is a stop word."""
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else frozenset(stopwords)
    kept = []
    for word in text.split():
        core = "".join(c for c in word if not _is_punctuation(c)).lower()
        if core and core in stop:
            continue
        kept.append(word)
    return " ".join(kept)


class TextCleaner:
    """A configurable chain of text cleaning rules; call it on a string.

    Rules run in this order: Unicode NFC, HTML, URLs, e-mails, lower-casing, punctuation, stop words,
    whitespace. Each is switchable.

    Args:
        lowercase: lower-case the text.
        strip_html: remove HTML tags and unescape entities.
        strip_urls: remove web addresses.
        strip_emails: remove e-mail addresses.
        remove_punctuation: replace Unicode punctuation and symbols by spaces.
        collapse_whitespace: collapse whitespace runs and strip the ends.
        remove_stopwords: drop stop words.
        stopwords: ``"english"`` for the built-in English list, or ``"none"`` to start from an empty list.
        extra_stopwords: words added to the list (compared in lower case).
        split_cjk: tokens of :meth:`tokenize` split CJK text into single characters.

    Raises:
        ValueError: for ``stopwords`` outside ``("english", "none")``.

    Example::

        cleaner = TextCleaner(remove_stopwords=True, extra_stopwords=["movie"])
        cleaner("<b>The</b> movie was GREAT!! see https://x.io")  # -> "great see"
    """

    STOPWORD_LISTS: dict[str, frozenset[str]] = {"english": ENGLISH_STOPWORDS, "none": frozenset()}

    def __init__(
        self,
        lowercase: bool = True,
        strip_html: bool = True,
        strip_urls: bool = True,
        strip_emails: bool = True,
        remove_punctuation: bool = True,
        collapse_whitespace: bool = True,
        remove_stopwords: bool = False,
        stopwords: str = "english",
        extra_stopwords: list[str] | None = None,
        split_cjk: bool = True,
    ) -> None:
        if stopwords not in self.STOPWORD_LISTS:
            raise ValueError(
                f"Unknown `stopwords` list {stopwords!r}; allowed: {sorted(self.STOPWORD_LISTS)}."
            )
        self.lowercase = lowercase
        self.strip_html = strip_html
        self.strip_urls = strip_urls
        self.strip_emails = strip_emails
        self.remove_punctuation = remove_punctuation
        self.collapse_whitespace = collapse_whitespace
        self.remove_stopwords = remove_stopwords
        self.stopwords = stopwords
        self.extra_stopwords = list(extra_stopwords or [])
        self.split_cjk = split_cjk
        self.stopword_set = self.STOPWORD_LISTS[stopwords] | {
            normalize_unicode(w).lower() for w in self.extra_stopwords
        }

    @classmethod
    def from_options(cls, options: dict | None) -> TextCleaner:
        """Build from a dict of keyword arguments (as written in YAML); unknown keys raise.

        Raises:
            ValueError: for an option that :class:`TextCleaner` does not have (the message lists them).
        """
        options = dict(options or {})
        allowed = [
            "lowercase",
            "strip_html",
            "strip_urls",
            "strip_emails",
            "remove_punctuation",
            "collapse_whitespace",
            "remove_stopwords",
            "stopwords",
            "extra_stopwords",
            "split_cjk",
        ]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"Unknown `cleaning` option(s) {unknown}; allowed: {allowed}.")
        return cls(**options)

    def __call__(self, text: str) -> str:
        text = normalize_unicode(text)
        if self.strip_html:
            text = strip_html(text)
        if self.strip_urls:
            text = strip_urls(text)
        if self.strip_emails:
            text = strip_emails(text)
        if self.lowercase:
            text = lowercase(text)
        if self.remove_punctuation:
            text = remove_punctuation(text)
        if self.remove_stopwords:
            text = remove_stopwords(text, self.stopword_set)
        if self.collapse_whitespace:
            text = collapse_whitespace(text)
        return text

    def tokenize(self, text: str) -> list[str]:
        """Clean ``text`` and split it into ``\\w+`` tokens (CJK characters one by one when ``split_cjk``)."""
        tokens = tokenize(self(text), split_cjk=self.split_cjk)
        if self.remove_stopwords:
            tokens = [t for t in tokens if t.lower() not in self.stopword_set]
        return tokens

    def __repr__(self) -> str:
        flags = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "stopword_set")
        return f"{type(self).__name__}({flags})"
