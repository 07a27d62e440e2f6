"""Language codes the model cards use, and sample texts to measure a tokenizer's tokens per character.

Codes are ISO 639-1 (two letters). :data:`LANGUAGES` lists the languages model cards in the catalogue name, and
a few more that users ask for; :func:`check_language` turns anything else into a one-line error with the closest
codes.

:data:`SAMPLES`: the first article of the Universal Declaration of Human Rights in each language, as the UN
Office of the High Commissioner for Human Rights publishes its translations
(https://www.ohchr.org/en/human-rights/universal-declaration/universal-declaration-human-rights/about-universal-declaration-human-rights-translation-project).
One article is a small sample (about 100-200 characters): tokens per character from it compare tokenizers on
the same text; ``plan select --sample-text FILE`` measures on the user's own text instead.
"""

from __future__ import annotations

from profiles.errors import ProfileError, did_you_mean

LANGUAGES: dict[str, str] = {
    "ar": "Arabic", "bn": "Bengali", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi",
    "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "ms": "Malay",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "th": "Thai", "tl": "Tagalog", "tr": "Turkish",
    "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
}
"""ISO 639-1 code -> English name."""

SAMPLES: dict[str, str] = {
    "en": "All human beings are born free and equal in dignity and rights. They are endowed with reason and "
          "conscience and should act towards one another in a spirit of brotherhood.",
    "zh": "人人生而自由,在尊严和权利上一律平等。他们赋有理性和良心,并应以兄弟关系的精神相对待。",
    "de": "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft und Gewissen "
          "begabt und sollen einander im Geist der Brüderlichkeit begegnen.",
    "fr": "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués de raison et de "
          "conscience et doivent agir les uns envers les autres dans un esprit de fraternité.",
    "es": "Todos los seres humanos nacen libres e iguales en dignidad y derechos y, dotados como están de razón y "
          "conciencia, deben comportarse fraternalmente los unos con los otros.",
    "it": "Tutti gli esseri umani nascono liberi ed eguali in dignità e diritti. Essi sono dotati di ragione e di "
          "coscienza e devono agire gli uni verso gli altri in spirito di fratellanza.",
    "pt": "Todos os seres humanos nascem livres e iguais em dignidade e em direitos. Dotados de razão e de "
          "consciência, devem agir uns para com os outros em espírito de fraternidade.",
    "ru": "Все люди рождаются свободными и равными в своем достоинстве и правах. Они наделены разумом и совестью "
          "и должны поступать в отношении друг друга в духе братства.",
    "ja": "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。人間は、理性と良心とを"
          "授けられており、互いに同胞の精神をもって行動しなければならない。",
    "ko": "모든 인간은 태어날 때부터 자유로우며 그 존엄과 권리에 있어 동등하다. 인간은 천부적으로 이성과 양심을 "
          "부여받았으며 서로 형제애의 정신으로 행동하여야 한다.",
}
"""UDHR article 1 (OHCHR translations), for tokens per character."""


def check_language(code: str) -> str:
    """The lower-case ISO 639-1 code, or :class:`ProfileError` naming the closest valid codes."""
    c = code.strip().lower()
    if c in LANGUAGES:
        return c
    by_name = {v.lower(): k for k, v in LANGUAGES.items()}
    if c in by_name:
        return by_name[c]
    close = did_you_mean(c, [*LANGUAGES, *by_name])
    hint = f"; did you mean {', '.join(repr(by_name.get(x, x)) for x in close)}?" if close else ""
    raise ProfileError(f"unknown language code {code!r}{hint} (ISO 639-1, e.g. en, zh, de, ja; all: "
                       f"{', '.join(sorted(LANGUAGES))})")
